"""Continuous batching on one llama.cpp context.

One scheduler thread per loaded model file owns its context. Between two decode steps it admits
queued sequences (from any number of concurrent queries). A step decodes one chunk of pending
prompt (up to ``n_batch`` tokens), then the next token of every generating sequence, batched
(up to ``MAX_SAMPLED_ROWS`` per ``llama_decode``), and samples each sequence with its own
sampler chain. How rows are grouped into calls keeps every answer bit-for-bit the answer the same
request gets alone and cold (``rows.py`` says why and how).

Memory: the context has ``n_seq_max`` KV streams of ``n_ctx`` cells each (llama.cpp's
non-unified KV cache), so at most ``n_seq_max × n_ctx`` cells exist, allocated once at load.
A request waits in the queue, in order, until a stream is free; one whose prompt does not fit
``n_ctx`` fails alone, and its answer is cut at ``n_ctx`` (finish reason "length").

Why a stream per sequence rather than one unified cache: a sequence's cells then sit at the same
offsets as when it runs alone, so attention sums in the same order and a batched answer is
bit-for-bit the answer the same request gets alone (with a unified cache, interleaved cells
change the rounding and greedy answers drift apart).

Shared prompt prefix: a new sequence whose prompt starts like a live one's (the members of a layer
see the same conversation and references) does not decode that prefix again. It waits until the
other sequence has decoded it, then ``llama_memory_seq_cp`` copies that stream's KV data (llama.cpp
copies whole streams, at the start of the next decode) and ``llama_memory_seq_rm`` drops what lies
past the shared prefix; only the sequence's own suffix is decoded.

Kept streams: a sequence that ends keeps its KV stream (prompt and answer) until its id is
needed. A later request that starts like it (the next step of a staircase aggregator continuing
its own answer over grown references, a retry, a judge reading the same conversation) takes the
stream over in place, drops what lies past the common prefix, and decodes only the rest. The
oldest kept stream is emptied when a request needs an id and none is free.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from moakit.errors import ModelCallError
from moakit.models.local.sampling import build_chain
from moakit.models.local.scheduler.budget import KeptStream, KVBudget, SchedulerStats
from moakit.models.local.scheduler.rows import (
    MAX_SAMPLED_ROWS,
    ROW_GROUP,
    prompt_chunk,
    reusable_prefix,
)
from moakit.models.local.scheduler.sequence import (
    Delta,
    Failed,
    LiveSequence,
    SequenceRequest,
)

log = logging.getLogger(__name__)

# A copy moves a whole KV stream (tens of MB); below this many tokens decoding is cheaper.
MIN_SHARED_PREFIX = 32


class BatchScheduler:
    def __init__(self, model: Any, ctx: Any, budget: KVBudget, *, name: str = "llama") -> None:
        import llama_cpp

        self._llama: Any = llama_cpp
        self._model = model  # llama_cpp._internals.LlamaModel
        self._ctx = ctx  # llama_cpp._internals.LlamaContext (n_seq_max, kv_unified)
        if budget.n_batch % ROW_GROUP:
            raise ValueError(f"n_batch must be a multiple of {ROW_GROUP}")
        self.budget = budget
        self.stats = SchedulerStats()
        self._batch = llama_cpp.llama_batch_init(budget.n_batch, 0, 1)
        self._piece_buf = ctypes.create_string_buffer(64)
        self._queue: deque[SequenceRequest] = deque()
        self._live: list[LiveSequence] = []
        self._free_ids = list(range(budget.n_seq_max))
        self._kept: deque[KeptStream] = deque()  # oldest first
        self._clear_requests: list[threading.Event] = []  # clear_kept() callers waiting
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-batch", daemon=True)
        self._thread.start()

    # -- called from any thread -------------------------------------------------------------

    def submit(self, request: SequenceRequest) -> None:
        if len(request.prompt) >= self.budget.n_ctx:
            request.emit(
                Failed(
                    ModelCallError(
                        f"prompt of {len(request.prompt)} tokens does not fit the context "
                        f"(n_ctx={self.budget.n_ctx})",
                        kind="other",
                    )
                )
            )
            return
        with self._cond:
            if self._closing:
                raise ModelCallError("the embedded model is shutting down", kind="other")
            self._queue.append(request)
            self._cond.notify()

    def clear_kept(self) -> None:
        """Empty every kept stream, so that the next requests decode their prompts in full (a
        cold start, as in a new process). Returns once done; live sequences are untouched."""
        done = threading.Event()
        with self._cond:
            if self._closing:
                return
            self._clear_requests.append(done)
            self._cond.notify()
        done.wait()

    @property
    def live(self) -> int:
        """Sequences in the context now (not counting the queue)."""
        return len(self._live)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        self._llama.llama_batch_free(self._batch)

    # -- the scheduler thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while (
                    not self._closing
                    and not self._queue
                    and not self._live
                    and not self._clear_requests
                ):
                    self._cond.wait()
                if self._closing:
                    break
                self._clear_kept_streams()
                self._admit()
            try:
                self._step()
            except Exception as exc:  # a bug here must not leave callers waiting forever
                log.exception("embedded model scheduler step failed")
                for seq in list(self._live):
                    self._end(seq, Failed(ModelCallError(f"llama.cpp failed: {exc}")))
        for seq in list(self._live):
            self._end(seq, Failed(ModelCallError("the embedded model is shutting down")))
        for request in self._queue:
            request.emit(Failed(ModelCallError("the embedded model is shutting down")))
        with self._cond:
            for done in self._clear_requests:
                done.set()

    def _clear_kept_streams(self) -> None:
        """Serve ``clear_kept`` calls (lock held, between two decode steps)."""
        if not self._clear_requests:
            return
        while self._kept:
            kept = self._kept.popleft()
            self._llama.llama_memory_seq_rm(self._ctx.memory, kept.seq_id, -1, -1)
            self._free_ids.append(kept.seq_id)
        self._free_ids.sort()
        for done in self._clear_requests:
            done.set()
        self._clear_requests.clear()

    def _admit(self) -> None:
        """Move queued requests into the context while ids and KV cells allow (lock held)."""
        while self._queue and (self._free_ids or self._kept):
            request = self._queue.popleft()
            if request.cancelled.is_set():
                continue
            try:
                chain = build_chain(request.sampling, self._model)
            except Exception as exc:
                request.emit(Failed(exc))
                continue
            kept, kept_len = self._best_kept(request.prompt)
            live, live_len = self._best_live(request.prompt)
            if kept is not None and kept_len >= live_len:
                # Take the kept stream over in place: no copy, only the tail is dropped.
                self._kept.remove(kept)
                self._llama.llama_memory_seq_rm(self._ctx.memory, kept.seq_id, kept_len, -1)
                seq = LiveSequence(request, kept.seq_id, chain, self.budget.n_ctx)
                seq.n_past = kept_len
                self.stats.prompt_tokens_reused += kept_len
            else:
                seq = LiveSequence(request, self._claim_id(), chain, self.budget.n_ctx)
                if live is not None:
                    seq.wait_for, seq.wait_len = live, live_len
                    self._resolve_wait(seq)
            self._live.append(seq)
            self.stats.max_live = max(self.stats.max_live, len(self._live))
            if seq.max_tokens == 0:
                self._end(seq, seq.finished("length"))

    def _best_kept(self, prompt: Sequence[int]) -> tuple[KeptStream | None, int]:
        best, best_len = None, 0
        for kept in self._kept:
            n = reusable_prefix(prompt, kept.tokens, kept.n_prompt, self.budget.n_batch)
            if n > best_len:
                best, best_len = kept, n
        return best, best_len

    def _best_live(
        self, prompt: Sequence[int], exclude: LiveSequence | None = None
    ) -> tuple[LiveSequence | None, int]:
        best, best_len = None, 0
        for other in self._live:
            if other is exclude or (exclude is not None and other.wait_for is exclude):
                continue
            cached = other.tokens[: other.n_prompt]
            n = reusable_prefix(prompt, cached, other.n_prompt, self.budget.n_batch)
            if n > best_len:
                best, best_len = other, n
        if best_len < MIN_SHARED_PREFIX:
            return None, 0
        return best, best_len

    def _claim_id(self) -> int:
        if not self._free_ids:  # _admit only runs with a free id or a kept stream to empty
            oldest = self._kept.popleft()
            self._llama.llama_memory_seq_rm(self._ctx.memory, oldest.seq_id, -1, -1)
            self._free_ids.append(oldest.seq_id)
        return self._free_ids.pop(0)

    def _find_prefix_source(self, seq: LiveSequence) -> None:
        best, best_len = self._best_live(seq.tokens[: seq.n_prompt], exclude=seq)
        if best is not None:
            seq.wait_for, seq.wait_len = best, best_len
            self._resolve_wait(seq)

    def _resolve_wait(self, seq: LiveSequence) -> None:
        source = seq.wait_for
        if source is None or source.n_past < seq.wait_len:
            return
        mem = self._ctx.memory
        # Across streams llama.cpp copies only whole sequences: copy, then cut at the prefix.
        self._llama.llama_memory_seq_cp(mem, source.seq_id, seq.seq_id, -1, -1)
        self._llama.llama_memory_seq_rm(mem, seq.seq_id, seq.wait_len, -1)
        seq.n_past = seq.wait_len
        self.stats.prompt_tokens_shared += seq.wait_len
        seq.wait_for, seq.wait_len = None, 0

    def _step(self) -> None:
        """One step: at most one prompt chunk, alone in its ``llama_decode`` (as a cold run
        decodes it), then one token for every sequence that samples, ``MAX_SAMPLED_ROWS`` a call
        (see ``rows.py``)."""
        for seq in list(self._live):
            if seq.request.cancelled.is_set():
                self._end(seq, None)
        for seq in self._live:
            self._resolve_wait(seq)
        # The oldest prefilling sequence first: one chunk per step keeps the others flowing.
        for seq in self._live:
            if seq.prefilling and seq.wait_for is None:
                take = prompt_chunk(seq.n_past, seq.prefill_end, self.budget.n_batch)
                positions = range(seq.n_past, seq.n_past + take)
                rows = [(seq, seq.tokens[pos], pos, False) for pos in positions]
                if self._decode(rows):
                    seq.n_past += take
                    seq.evaluated += take
                    self.stats.prompt_tokens_evaluated += take
                    for other in self._live:
                        self._resolve_wait(other)
                break
        sampling = [
            (seq, token)
            for seq in self._live
            if seq.wait_for is None and (token := seq.single_token()) is not None
        ]
        for first in range(0, len(sampling), MAX_SAMPLED_ROWS):
            group = sampling[first : first + MAX_SAMPLED_ROWS]
            if not self._decode([(seq, token, seq.n_past, True) for seq, token in group]):
                continue
            for index, (seq, _) in enumerate(group):
                if seq.next_token is not None:
                    seq.tokens.append(seq.next_token)  # what the stream holds, for a later reuse
                else:  # its last prompt token
                    seq.evaluated += 1
                    self.stats.prompt_tokens_evaluated += 1
                seq.n_past += 1
                if seq in self._live:
                    self._sample(seq, index)

    def _decode(self, rows: list[tuple[LiveSequence, int, int, bool]]) -> bool:
        """Decode ``rows`` (sequence, token, position, logits?) in one ``llama_decode``; on
        failure end their sequences (the others keep running; these callers may retry)."""
        batch = self._batch
        batch.n_tokens = 0
        for seq, token, pos, logits in rows:
            self._add(token, pos, seq.seq_id, logits)
        started = time.perf_counter()
        status = self._llama.llama_decode(self._ctx.ctx, batch)
        self.stats.decode_seconds += time.perf_counter() - started
        self.stats.decode_steps += 1
        if status == 0:
            return True
        for seq in {seq for seq, *_ in rows}:
            error = ModelCallError(f"llama_decode failed ({status}): no room in the KV cache")
            self._end(seq, Failed(error))
        return False

    def _add(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        batch = self._batch
        i: int = batch.n_tokens
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq_id
        batch.logits[i] = logits
        batch.n_tokens = i + 1
        return i

    def _sample(self, seq: LiveSequence, index: int) -> None:
        try:
            token: int = self._llama.llama_sampler_sample(seq.chain.sampler, self._ctx.ctx, index)
        except Exception as exc:
            self._end(seq, Failed(ModelCallError(f"sampling failed: {exc}")))
            return
        if self._llama.llama_vocab_is_eog(self._model.vocab, token):
            self._finish(seq, "stop")
            return
        seq.generated += 1
        self.stats.tokens_generated += 1
        text = seq.text.feed(self._piece(token))
        if text:
            seq.emit(Delta(text))
        if seq.text.stopped:
            self._end(seq, seq.finished("stop"))
        elif seq.generated >= seq.max_tokens:
            self._finish(seq, "length")
        else:
            seq.next_token = token

    def _piece(self, token: int) -> bytes:
        # Not LlamaModel.token_to_piece: it returns its whole 32-byte buffer, NULs included.
        size = len(self._piece_buf)
        n = self._llama.llama_token_to_piece(
            self._model.vocab, token, self._piece_buf, size, 0, False
        )
        if n < 0:  # buffer too small: llama.cpp says how much it needs
            self._piece_buf = ctypes.create_string_buffer(-n)
            return self._piece(token)
        return bytes(self._piece_buf.raw[:n])

    def _finish(self, seq: LiveSequence, reason: str) -> None:
        rest = seq.text.flush()
        if rest:
            seq.emit(Delta(rest))
        self._end(seq, seq.finished(reason))

    def _end(self, seq: LiveSequence, event: Any) -> None:
        """Release the sequence's sampler and id, keeping its KV stream for a later request that
        starts the same way; report ``event`` (None: cancelled)."""
        self._live.remove(seq)
        seq.chain.close()
        if isinstance(event, Failed) or seq.wait_for is not None or seq.n_past == 0:
            # A failed decode may have left the stream half-written: empty it.
            self._llama.llama_memory_seq_rm(self._ctx.memory, seq.seq_id, -1, -1)
            self._free_ids.append(seq.seq_id)
        else:
            self._kept.append(KeptStream(seq.seq_id, seq.tokens[: seq.n_past], seq.n_prompt))
        for other in self._live:
            if other.wait_for is seq:  # its prefix will never arrive from this one
                other.wait_for, other.wait_len = None, 0
                self._find_prefix_source(other)
        if event is not None:
            seq.emit(event)
