"""The layered strategy (the paper's): each proposer layer fans out in parallel, waits for its
quorum (cutting stragglers and stopping at the deadline), and hands its answers, through the
reference pipeline, to the next layer; the final aggregator then writes the answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import NoReturn

from moakit.engine.aggregate import aggregate
from moakit.engine.calls import Call, call_with_retries
from moakit.engine.run import Run
from moakit.errors import DeadlineExceeded, LayerFailed
from moakit.events import LayerFinished, LayerStarted, MemberDelta, MemberFinished
from moakit.policies import StragglerPolicy
from moakit.references import Reference, from_outputs
from moakit.result import LayerResult, MemberOutput


class LayeredStrategy:
    name = "layered"

    async def execute(self, run: Run) -> None:
        references: list[Reference] = []
        for position in range(len(run.config.layers)):
            layer = await run_layer(run, position, references)
            references, actions = await run.stack.references.apply_recorded(
                from_outputs(layer.members)
            )
            run.record_defenses(actions, layer=position + 2)
            if run.proposers_deadline_at and time.monotonic() >= run.proposers_deadline_at:
                break  # out of proposer time: aggregate what we have
        await self.finish(run, references)

    async def finish(self, run: Run, references: Sequence[Reference]) -> None:
        """The final step (a subclass may aggregate differently, e.g. dropout-and-vote)."""
        await aggregate(run, references)


async def run_layer(run: Run, position: int, references: Sequence[Reference]) -> LayerResult:
    """Proposer layer ``position`` (0-based in ``config.layers``; its number is position+1)."""
    specs = run.stack.layer_specs[position]
    models = run.stack.layer_models[position]
    needed = run.config.min_successful_for(position)
    layer_no = position + 1
    run.emit(LayerStarted(layer=layer_no, members=[s.label for s in specs], **run.stamp()))
    started = run.now()
    block, actions = run.stack.references.block_recorded(references, run.config.aggregate_prompt)
    run.record_defenses(actions, layer=layer_no)
    calls = [
        Call(spec, model, run.member_request(spec, block), layer_no, i)
        for i, (spec, model) in enumerate(zip(specs, models, strict=True))
    ]
    tasks = {asyncio.create_task(_propose(run, call)): call for call in calls}
    outputs: dict[int, MemberOutput] = {}
    cutoff_at: float | None = None
    pending = set(tasks)
    cut_reason = "cancelled"
    policy = run.config.straggler
    try:
        while pending:
            limits = [t for t in (cutoff_at, run.proposers_deadline_at) if t is not None]
            timeout = max(0.0, min(limits) - time.monotonic()) if limits else None
            done, pending = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                out = task.result()
                outputs[out.index] = out
                run.emit(MemberFinished(output=out, **run.stamp()))
            ok = [o for o in outputs.values() if o.ok]
            if cutoff_at is None and policy and pending and len(ok) >= needed:
                cutoff_at = straggler_cutoff(policy, ok)
            if not done and pending:
                cut_reason = why_cut(run)
                break
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        # Also when the run itself is cancelled: the calls cut here were sent and count.
        now = run.now()
        for task in pending:
            tasks[task].cut(now, cut_reason)
    for task in pending:
        call = tasks[task]
        out = call.output(run.now(), error=cut_reason, cancelled=True)
        outputs[call.index] = out
        run.emit(MemberFinished(output=out, **run.stamp()))
    layer = LayerResult(
        layer=layer_no,
        members=[outputs[i] for i in range(len(calls))],
        latency_s=round(run.now() - started, 6),
        min_successful=needed,
    )
    run.result.layers.append(layer)
    run.emit(LayerFinished(layer=layer, **run.stamp()))
    if layer.answered >= needed:
        return layer
    # Transient if a failed member's last error was (a timeout, a 5xx, a rate limit...).
    retryable = any(
        c.error is not None and c.error.retryable for c in calls if not outputs[c.index].ok
    )
    raise_quorum_missed(run, layer, needed, retryable=retryable)


def straggler_cutoff(policy: StragglerPolicy, answered: Sequence[MemberOutput]) -> float:
    """When the layer stops waiting, once its quorum ``answered``: the later of ``grace_s`` and
    ``grace_factor`` times the slowest answer so far, from now (a monotonic time)."""
    grace = max(
        policy.grace_s or 0.0,
        (policy.grace_factor or 0.0) * max(o.latency_s for o in answered),
    )
    return time.monotonic() + grace


def why_cut(run: Run) -> str:
    """The reason recorded on members still running when a layer stops waiting for them."""
    deadline = run.proposers_deadline_at
    if deadline is not None and time.monotonic() >= deadline:
        return "cancelled: query deadline"
    return "cancelled: straggler cut-off"


def raise_quorum_missed(run: Run, layer: LayerResult, needed: int, *, retryable: bool) -> NoReturn:
    """The layer answered fewer than ``needed``: ``LayerFailed`` listing every member's reason,
    or ``DeadlineExceeded`` when the query's proposer time ran out (shared by the strategies)."""
    failures = [(m.label, m.error or "no answer") for m in layer.members if not m.ok]
    err = LayerFailed(
        layer.layer,
        failures,
        answered=layer.answered,
        needed=needed,
        result=run.result,
        retryable=retryable,
    )
    deadline = run.proposers_deadline_at
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded(f"query deadline exceeded: {err}", result=run.result)
    raise err


async def _propose(run: Run, call: Call) -> MemberOutput:
    def on_text(text: str) -> None:
        run.emit(MemberDelta(layer=call.layer, index=call.index, text=text, **run.stamp()))

    wanted = run.live and run.member_deltas
    completion = await call_with_retries(
        run, call, deadline_at=run.proposers_deadline_at, on_text=on_text if wanted else None
    )
    if completion is None:
        assert call.error is not None
        return call.output(run.now(), error=call.error.describe())
    # The reference implementation strips every generation before reuse.
    return call.output(run.now(), text=completion.text.strip(), completion=completion)
