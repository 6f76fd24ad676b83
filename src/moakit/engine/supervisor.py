"""The one layer supervisor, shared by every strategy: waits for a layer's member tasks, cuts
stragglers once the quorum answered (``straggler`` policy), stops at the proposers' deadline or
when told to halt, records every member (the cut ones too), and checks the quorum.

A strategy starts the member tasks (how a member answers is its business: one call, or a
staircase writer's steps) and hands them here with their ``Call``s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn, cast

from moakit.engine.calls import Call
from moakit.engine.run import Run
from moakit.errors import DeadlineExceeded, LayerFailed
from moakit.events import LayerFinished, MemberFinished
from moakit.policies import StragglerPolicy
from moakit.result import LayerResult, MemberOutput

# Told about each member's output as it settles (answered, failed or cut), before its
# MemberFinished is emitted.
OnSettled = Callable[[Call, MemberOutput], None]


async def supervise_layer(
    run: Run,
    position: int,
    members: Mapping[asyncio.Task[MemberOutput], Call],
    *,
    on_settled: OnSettled | None = None,
    halt: asyncio.Event | None = None,
    halt_reason: Callable[[], str] = lambda: "cancelled",
    partial: bool = False,
    needed: int | None = None,
) -> LayerResult:
    """Layer ``position`` (0-based in ``config.layers``) once every member settled or was cut.
    ``halt``: set by the strategy to stop waiting (the answer is complete, or failed); the
    members still running are cut with ``halt_reason()`` and the quorum is not checked.
    Raises ``LayerFailed`` (or ``DeadlineExceeded``) when the quorum is missed.
    ``partial``: these are some of the layer's members (a cascade's first ones): their
    outputs come back unrecorded, for ``finish_layer`` once the layer is complete.
    ``needed``: the quorum, when not the layer's configured one (a budget started fewer)."""
    if needed is None:
        needed = run.config.min_successful_for(position)
    started = run.now()
    policy = run.config.straggler
    outputs: dict[int, MemberOutput] = {}
    pending = set(members)
    halted: asyncio.Future[Any] | None = (
        asyncio.ensure_future(halt.wait()) if halt is not None else None
    )
    cutoff_at: float | None = None
    cut_reason = "cancelled"

    def settle(call: Call, out: MemberOutput) -> None:
        if on_settled is not None:
            on_settled(call, out)
        outputs[call.index] = out
        if run.live:
            run.emit(MemberFinished(output=out, **run.stamp()))

    try:
        while pending:
            limits = [t for t in (cutoff_at, run.proposers_deadline_at) if t is not None]
            timeout = max(0.0, min(limits) - time.monotonic()) if limits else None
            waiting: set[Any] = pending if halted is None else {*pending, halted}
            done, _ = await asyncio.wait(
                waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for finished in done:
                if finished is halted:
                    continue
                task = cast("asyncio.Task[MemberOutput]", finished)
                pending.discard(task)
                settle(members[task], task.result())
            ok = [o for o in outputs.values() if o.ok]
            if cutoff_at is None and policy and pending and len(ok) >= needed:
                cutoff_at = straggler_cutoff(policy, ok)
            if halted is not None and halted in done:
                cut_reason = halt_reason()
                break
            if not done and pending:
                cut_reason = why_cut(run)
                break
    finally:
        if halted is not None:
            halted.cancel()
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        # Also when the run itself is cancelled: the calls cut here were sent and count.
        now = run.now()
        for task in pending:
            members[task].cut(now, cut_reason)
    for task in pending:
        call = members[task]
        settle(call, call.output(run.now(), error=cut_reason, cancelled=True))
    layer = LayerResult(
        layer=position + 1,
        members=[outputs[i] for i in sorted(outputs)],
        latency_s=round(run.now() - started, 6),
        min_successful=needed,
    )
    if partial:
        return layer
    return finish_layer(run, layer, members.values(), halted=halt is not None and halt.is_set())


def finish_layer(
    run: Run, layer: LayerResult, calls: Iterable[Call], *, halted: bool = False
) -> LayerResult:
    """Record the finished ``layer`` and check its quorum (not when ``halted``)."""
    run.result.layers.append(layer)
    run.emit(LayerFinished(layer=layer.layer, result=layer, **run.stamp()))
    needed = layer.min_successful
    if layer.answered >= needed or halted:
        return layer
    ok = {m.index for m in layer.members if m.ok}
    # Transient if a failed member's last error was (a timeout, a 5xx, a rate limit...).
    retryable = any(c.error is not None and c.error.retryable for c in calls if c.index not in ok)
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
    or ``DeadlineExceeded`` when the query's proposer time ran out."""
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
