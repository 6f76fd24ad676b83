"""What one sequence asks for, what it reports, and its state inside the scheduler."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from moakit.models.local.sampling import SamplingParams
from moakit.models.local.scheduler.text import StopTextAssembler


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int  # the prompt's length in tokens, as the tokenizer counts it
    completion_tokens: int  # tokens sampled (an end-of-generation token is not counted)
    prompt_evaluated: int  # prompt tokens this sequence decoded itself (the rest were shared)


@dataclass(frozen=True)
class Failed:
    error: BaseException


SequenceEvent = Delta | Finished | Failed


@dataclass
class SequenceRequest:
    """Submitted to a ``BatchScheduler``. ``emit`` is called on the scheduler thread, in order,
    with zero or more ``Delta`` and then exactly one ``Finished`` or ``Failed`` (none if the
    request was cancelled first). Setting ``cancelled`` ends the sequence at the next step."""

    prompt: Sequence[int]
    max_tokens: int
    sampling: SamplingParams
    emit: Callable[[SequenceEvent], None]
    stop: Sequence[str] = ()
    cancelled: threading.Event = field(default_factory=threading.Event)


class LiveSequence:
    """A live sequence: its id in the context, how much of it is in the KV cache, its sampler."""

    def __init__(self, request: SequenceRequest, seq_id: int, chain: Any, n_ctx: int) -> None:
        self.request = request
        self.seq_id = seq_id
        self.chain = chain
        self.tokens = list(request.prompt)  # then each sampled token, once it is decoded
        self.n_prompt = len(self.tokens)
        # Room in the context bounds the answer, as create_completion does.
        self.max_tokens = max(0, min(request.max_tokens, n_ctx - self.n_prompt))
        self.n_past = 0  # positions [0, n_past) of this sequence are in the KV cache
        self.evaluated = 0  # of those, decoded by this sequence (not copied from another)
        self.generated = 0
        self.next_token: int | None = None  # sampled, not yet decoded
        self.text = StopTextAssembler(request.stop)
        # Waiting for another sequence to finish decoding a prompt prefix we share:
        self.wait_for: LiveSequence | None = None
        self.wait_len = 0

    # The last prompt token, whose logits give the first answer token, is always decoded as a
    # single row (with other sequences' next tokens), never at the end of a prompt chunk: so
    # it goes through the same kernels whether the prompt was decoded here, copied from another
    # sequence or found in a kept stream (see rows.py).
    @property
    def prefill_end(self) -> int:
        return self.n_prompt - 1

    @property
    def prefilling(self) -> bool:
        return self.next_token is None and self.n_past < self.prefill_end

    def single_token(self) -> int | None:
        """The token this sequence decodes alone in the next step, with logits: its sampled next
        token, or its last prompt token once the rest of the prompt is in the KV cache."""
        if self.next_token is not None:
            return self.next_token
        if self.n_past == self.prefill_end:
            return self.tokens[self.prefill_end]
        return None

    def emit(self, event: SequenceEvent) -> None:
        self.request.emit(event)

    def finished(self, reason: str) -> Finished:
        return Finished(
            finish_reason=reason,
            prompt_tokens=self.n_prompt,
            completion_tokens=self.generated,
            prompt_evaluated=self.evaluated,
        )


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
