"""The pieces of the staircase strategy (staircase.py): a layer's growing answers (``Board``
of ``Feed``s) and a writer that answers in steps from them (``Stair``).

A token here is a streamed text delta: what every streaming backend sends (one per token for
OpenAI-compatible servers and llama.cpp, one per word for the test doubles).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from moakit.engine.calls import Call, OnFailure, call_with_retries
from moakit.engine.run import Run
from moakit.errors import ModelCallError
from moakit.models.base import Completion
from moakit.references import Reference, from_outputs
from moakit.result import DefenseAction, MemberOutput, StairStep


@dataclass
class Feed:
    """One member's answer as it grows, read by the writers of the layer above."""

    call: Call
    parts: list[str] = field(default_factory=list)  # streamed deltas so far
    done: bool = False  # answered in full
    dropped: bool = False  # failed or cut: no reference from now on (also for later steps)
    output: MemberOutput | None = None


class Board:
    """A layer's feeds and the wake-up of whoever waits on them. ``settled``: every member
    answered or was cut and the layer's quorum held, so its answers are final."""

    def __init__(self, feeds: list[Feed], layer: int) -> None:
        self.feeds = feeds
        self.layer = layer
        self.settled = False
        self.halt = asyncio.Event()  # stop the layer now: the answer is complete, or failed
        self.halt_reason = "cancelled"
        self._changed = asyncio.Event()

    def changed(self) -> None:
        self._changed.set()

    async def wait_for(self, ready: Callable[[], bool]) -> None:
        # No await between the check and clear(): a change cannot slip in between. Every
        # waiter blocked in wait() is woken by set(), whoever clears it next.
        while not ready():
            self._changed.clear()
            await self._changed.wait()


@dataclass(frozen=True)
class View:
    """What one step of a writer sees of the layer below."""

    block: str | None  # the references block
    references: tuple[Reference, ...]  # what the block shows (after the stack's transforms)
    seen: dict[str, int]  # characters seen per member label
    last: bool  # the layer below is settled: these are its final answers
    # What the stack's defenses did to this view's references (recorded once the step ran).
    actions: tuple[DefenseAction, ...] = ()


class Stair:
    """Writes one answer in steps (an aggregator's, or a member's above layer 1): each step
    waits for more of the layer below (per ``schedule``), then continues the answer so far
    (``ChatRequest.prefill``) by at most ``chunk_tokens``; the step after the layer below
    settled writes without that cap, to the end. ``parts`` is the answer, delta by delta."""

    def __init__(self, run: Run, source: Board, *, final: bool) -> None:
        self.run = run
        self.source = source
        self.final = final  # the final aggregator: gets the caller's sampling overrides
        self.chunk = run.config.staircase.chunk_tokens
        self.greedy = run.config.staircase.schedule == "greedy"
        self.parts: list[str] = []
        self.steps: list[StairStep] = []
        self.first_ttft: float | None = None
        self._seen_total = -1

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def _arrived(self, feed: Feed) -> int:
        """Deltas of ``feed`` a step may see: all of a finished answer, else its whole chunks."""
        n = len(feed.parts)
        return n if feed.done else n - n % self.chunk

    def _ready(self) -> bool:
        source = self.source
        if source.settled:
            return True
        live = [f for f in source.feeds if not f.dropped]
        if all(f.done for f in live):
            return False  # nothing more can come before it settles (or fails): wait for that
        if self.greedy and self.steps:
            # Anything new since the last step.
            return sum(self._arrived(f) for f in live) > self._seen_total
        # Step k waits until every answering member has k chunks (or finished): the first
        # step starts as soon as each has its first chunk.
        need = self.chunk * (len(self.steps) + 1)
        return all(f.done or len(f.parts) >= need for f in live)

    async def next_view(self) -> View:
        await self.source.wait_for(self._ready)
        run = self.run
        if self.source.settled:
            outputs = [f.output for f in self.source.feeds if f.output is not None]
            refs, actions = await run.lineup.references.apply_recorded(from_outputs(outputs))
            seen = {r.label: len(r.text) for r in refs}
            last = True
        else:
            refs, seen = [], {}
            live = [f for f in self.source.feeds if not f.dropped]
            self._seen_total = sum(self._arrived(f) for f in live)
            for feed in live:
                text = "".join(feed.parts[: self._arrived(feed)])
                seen[feed.call.spec.label] = len(text)
                spec = feed.call.spec
                refs.append(
                    Reference(
                        text=text.strip(),
                        label=spec.label,
                        model=spec.model,
                        layer=feed.call.layer,
                        index=feed.call.index,
                    )
                )
            refs, actions = await run.lineup.references.apply_recorded(refs)
            last = False
        block, formatted = run.lineup.references.block_recorded(refs, run.config.aggregate_prompt)
        return View(
            block=block,
            references=tuple(refs),
            seen=seen,
            last=last,
            actions=(*actions, *formatted),
        )

    def room(self, call: Call) -> int | None:
        """Tokens the answer may still have (its max_tokens less what is written), or None."""
        limit = self.run.member_request(call.spec, None, final=self.final).max_tokens
        return None if limit is None else limit - len(self.parts)

    async def step(
        self,
        call: Call,
        view: View,
        *,
        deadline_at: float | None,
        on_text: Callable[[str], None] | None,
        final_after_text: bool,
        on_failure: OnFailure | None = None,
    ) -> Completion | None:
        """One step: continue the answer from ``view``. On success the new deltas are in
        ``parts``; a failed attempt's deltas are removed again unless ``final_after_text``
        (they were shown: the caller must treat the failure as final)."""
        run = self.run
        base = run.member_request(call.spec, view.block, final=self.final)
        room = self.room(call)
        cap = None if view.last else self.chunk
        if room is not None:
            cap = room if cap is None else min(cap, room)
        call.request = dataclasses.replace(base, prefill=self.text or None, max_tokens=cap)
        call.references = view.references
        mark = len(self.parts)

        def grow(text: str) -> None:
            self.parts.append(text)
            if on_text is not None:
                on_text(text)

        def failed(c: Call, error: ModelCallError, retrying: bool) -> None:
            if not final_after_text:
                del self.parts[mark:]
            if on_failure is not None:
                on_failure(c, error, retrying)

        completion = await call_with_retries(
            run,
            call,
            deadline_at=deadline_at,
            on_text=grow,
            final_after_text=final_after_text,
            on_failure=failed,
            # A continuation may have nothing to add; a first step must say something.
            allow_empty=mark > 0,
        )
        if completion is None:
            return None
        if self.first_ttft is None and call.attempts:
            self.first_ttft = call.attempts[-1].ttft_s
        self.steps.append(
            StairStep(
                refs_chars_seen=view.seen,
                text_chars=len(self.text),
                final=view.last,
                defenses=list(dict.fromkeys(a.defense for a in view.actions)),
            )
        )
        # Each step sees new reference text, so each step's defense actions are its own.
        run.record_defenses(view.actions, layer=call.layer, step=len(self.steps))
        return completion

    def finished(self, call: Call, view: View, completion: Completion) -> bool:
        """The answer is complete: the last step, the model stopped on its own, or the
        answer's max_tokens is spent."""
        room = self.room(call)
        return view.last or completion.finish_reason != "length" or (room is not None and room <= 0)

    def output(self, call: Call, completion: Completion) -> MemberOutput:
        now = self.run.now()
        text = self.text
        out = call.output(
            now,
            text=text if self.final else text.strip(),
            completion=dataclasses.replace(completion, text=text),
        )
        out.ttft_s = self.first_ttft
        out.steps = list(self.steps)
        return out
