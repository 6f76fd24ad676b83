"""Token pieces → text, per sequence: incremental UTF-8 and stop strings.

A token may end in the middle of a multi-byte character, and a stop string may span tokens, so
text is released only once it can no longer turn out to be the beginning of a stop string.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class StopTextAssembler:
    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = [s for s in stop if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that is now safe to emit ("" if none).
        After a stop string is seen, ``stopped`` is true and the text before it is returned."""
        buffered = self._held + self._decoder.decode(piece)
        cut = min((i for s in self._stop if (i := buffered.find(s)) != -1), default=-1)
        if cut != -1:
            self._held = ""
            self.stopped = True
            return buffered[:cut]
        keep = self._longest_stop_prefix_suffix(buffered)
        self._held = buffered[len(buffered) - keep :] if keep else ""
        return buffered[: len(buffered) - keep]

    def flush(self) -> str:
        """The text still held back, at the end of a sequence that did not stop on a string."""
        rest = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return rest

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        best = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
