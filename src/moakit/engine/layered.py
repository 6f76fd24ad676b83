"""The layered strategy (the paper's): each proposer layer fans out in parallel, waits for its
quorum (cutting stragglers and stopping at the deadline), and hands its answers, through the
reference pipeline, to the next layer; the final aggregator then writes the answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from moakit.engine.adaptive import (
    agreement,
    cascade_order,
    escalate,
    exit_early,
    skipped_after,
)
from moakit.engine.advice import ADVICE, Advice, fresh_needed, tool_iteration, turn_key
from moakit.engine.aggregate import aggregate
from moakit.engine.calls import Call, OnText, call_with_retries
from moakit.engine.run import AGGREGATOR_RESERVE, Run
from moakit.engine.supervisor import finish_layer, supervise_layer
from moakit.events import LayerStarted, MemberDelta
from moakit.policies import AgreementConfig, CascadeConfig
from moakit.references import Reference, from_outputs
from moakit.result import Decision, LayerResult, MemberOutput


class LayeredStrategy:
    name = "layered"
    # The final aggregator may be sent the caller's tools (the proposers advise).
    tools = True
    # Budgets cut members and layers (``engine.budget``).
    budgets = True

    async def execute(self, run: Run) -> None:
        key = None
        if run.advising:
            key = turn_key(run.lineup.config_hash, run.request)
            if not fresh_needed(run.config.advice, tool_iteration(run.conversation)):
                advice = ADVICE.get(key)
                if advice is not None:
                    # This user turn's proposers already answered: act on their advice.
                    run.result.advice, run.result.advice_from = "reused", advice.run_id
                    await self.finish(run, advice.references)
                    return
            run.result.advice = "fresh"
        references = await self.propose(run)
        if references is None:
            return  # the proposers agreed: their answer is the answer (``engine.adaptive``)
        if key is not None:
            ADVICE.put(key, Advice(tuple(references), run.id))
        await self.finish(run, references)

    async def propose(self, run: Run) -> list[Reference] | None:
        """Every proposer layer in turn: the references the final step is shown, or ``None``
        when an early exit answered (``adaptive.early_exit``; never while tools are in play,
        where the answer is the aggregator's to act on)."""
        adaptive = run.config.adaptive
        judge = adaptive.early_exit if not run.advising else None
        references: list[Reference] = []
        for position in range(len(run.config.layers)):
            if position == 0 and judge is not None and adaptive.cascade is not None:
                layer = await run_cascade(run, judge, adaptive.cascade)
                if layer is None:
                    return None
            else:
                if position > 0 and over_latency_budget(run, position):
                    break
                found_layer = await run_layer(run, position, references)
                if found_layer is None:
                    break  # the budget affords no member: aggregate what we have
                layer = found_layer
            if judge is not None:
                found = agreement(judge, layer.members)
                if found is not None:
                    exit_early(run, position + 1, found, skipped_after(run, position))
                    return None
            references, actions = await run.lineup.references.apply_recorded(
                from_outputs(layer.members)
            )
            run.record_defenses(actions, layer=position + 2)
            if run.proposers_deadline_at and time.monotonic() >= run.proposers_deadline_at:
                break  # out of proposer time: aggregate what we have
        return list(references)

    async def finish(self, run: Run, references: Sequence[Reference]) -> None:
        """The final step (a subclass may aggregate differently, e.g. dropout-and-vote)."""
        await aggregate(run, references)


async def run_layer(run: Run, position: int, references: Sequence[Reference]) -> LayerResult | None:
    """Proposer layer ``position`` (0-based in ``config.layers``; its number is position+1),
    shown ``references`` (the layer below's answers, already through the transforms).
    ``None``: the budget could afford none of its members."""
    calls = layer_calls(run, position, references)
    admitted = admit(run, calls, range(len(calls)))
    if not admitted:
        return None
    tasks = {asyncio.create_task(_propose(run, calls[i])): calls[i] for i in admitted}
    needed = min(run.config.min_successful_for(position), len(admitted))
    return await supervise_layer(run, position, tasks, needed=needed)


def admit(run: Run, calls: Sequence[Call], positions: Sequence[int]) -> list[int]:
    """The ``positions`` the stack's router chooses for this query and its budget can afford
    (all, without either); the others are recorded as a ``route`` or ``budget`` decision and
    never started."""
    positions = route(run, calls, positions)
    ledger = run.ledger
    if ledger is None:
        return list(positions)
    aggregator = run.lineup.aggregator_specs[0]
    chosen = [(calls[i].spec, calls[i].request) for i in positions]
    reserved, why = ledger.admit_layer(chosen, aggregator)
    admitted = []
    for k, i in enumerate(positions):
        if k in reserved:
            calls[i].reserved = reserved[k]
            admitted.append(i)
    skipped = [calls[i].spec.label for i in positions if i not in admitted]
    if skipped:
        layer = calls[0].layer
        run.decide(
            Decision(
                kind="budget",
                layer=layer,
                detail=f"{len(skipped)} of layer {layer}'s members not started: {why}",
                skipped=skipped,
            )
        )
    return admitted


def layer_calls(run: Run, position: int, references: Sequence[Reference]) -> list[Call]:
    """Announce layer ``position`` and build its members' calls (not started)."""
    specs = run.lineup.layer_specs[position]
    models = run.lineup.layer_models[position]
    layer_no = position + 1
    run.emit(LayerStarted(layer=layer_no, members=[s.label for s in specs], **run.stamp()))
    block, actions = run.lineup.references.block_recorded(references, run.config.aggregate_prompt)
    run.record_defenses(actions, layer=layer_no)
    shown = tuple(references)
    return [
        Call(spec, model, run.member_request(spec, block), layer_no, i, references=shown)
        for i, (spec, model) in enumerate(zip(specs, models, strict=True))
    ]


async def run_cascade(
    run: Run, judge: AgreementConfig, cascade: CascadeConfig
) -> LayerResult | None:
    """Layer 1 as a cascade: its first members, then (if they disagree) the rest. ``None``
    when the first members agreed and the run exited early."""
    calls = layer_calls(run, 0, ())
    order = cascade_order(cascade, run.lineup.layer_specs[0])
    first = admit(run, calls, order[: cascade.first])
    rest = order[cascade.first :]
    started = run.now()
    batch = await supervise_layer(run, 0, _start(run, calls, first), partial=True, needed=0)
    outputs = list(batch.members)
    found = agreement(judge, outputs) if rest else None
    if found is not None:
        skipped = [calls[i].spec.label for i in rest]
        layer = LayerResult(
            layer=1,
            members=outputs,
            latency_s=round(run.now() - started, 6),
            min_successful=min(run.config.min_successful_for(0), len(first)),
        )
        finish_layer(run, layer, [calls[i] for i in first])
        exit_early(run, 1, found, skipped_after(run, 0, skipped))
        return None
    if rest:
        labels = ", ".join(calls[i].spec.label for i in first)
        escalate(run, 1, f"the first answers ({labels}) disagree: asking the rest of layer 1")
        rest = admit(run, calls, rest)
        more = await supervise_layer(run, 0, _start(run, calls, rest), partial=True, needed=0)
        outputs += more.members
    layer = LayerResult(
        layer=1,
        members=sorted(outputs, key=lambda m: m.index),
        latency_s=round(run.now() - started, 6),
        min_successful=min(run.config.min_successful_for(0), len(outputs)),
    )
    return finish_layer(run, layer, calls)


def route(run: Run, calls: Sequence[Call], positions: Sequence[int]) -> list[int]:
    router = run.lineup.router
    if router is None or not positions:
        return list(positions)
    layer = calls[0].layer
    query = next((m.text for m in reversed(run.conversation) if m.role == "user"), "")
    chosen = {m.label for m in router.select(query, layer, [calls[i].spec for i in positions])}
    kept = [i for i in positions if calls[i].spec.label in chosen]
    skipped = [calls[i].spec.label for i in positions if i not in kept]
    if skipped:
        run.decide(
            Decision(
                kind="route",
                layer=layer,
                detail=f"the router chose {len(kept)} of layer {layer}'s {len(positions)} members",
                skipped=skipped,
            )
        )
    return kept


def over_latency_budget(run: Run, position: int) -> bool:
    """Whether layer ``position`` would, going by the last layer's duration, end past 70% of
    the latency budget (the rest is the aggregator's); if so the skip is recorded."""
    limit = run.ledger.limits.max_latency_s if run.ledger is not None else None
    if limit is None or not run.result.layers:
        return False
    expected = run.now() + run.result.layers[-1].latency_s
    if expected <= limit * (1 - AGGREGATOR_RESERVE):
        return False
    later = [s.label for specs in run.lineup.layer_specs[position:] for s in specs]
    run.decide(
        Decision(
            kind="budget",
            layer=position + 1,
            detail=(
                f"layers {position + 1}+ skipped: expected to end at {expected:.2f}s, past "
                f"{1 - AGGREGATOR_RESERVE:.0%} of max_latency_s {limit:g}"
            ),
            skipped=later,
        )
    )
    return True


def _start(run: Run, calls: Sequence[Call], positions: Sequence[int]) -> dict[Any, Call]:
    return {asyncio.create_task(_propose(run, calls[i])): calls[i] for i in positions}


async def _propose(run: Run, call: Call) -> MemberOutput:
    on_text = _deltas(run, call) if run.live and run.member_deltas else None
    completion = await call_with_retries(
        run, call, deadline_at=run.proposers_deadline_at, on_text=on_text
    )
    if completion is None:
        assert call.error is not None
        return call.output(run.now(), error=call.error.describe())
    # The reference implementation strips every generation before reuse.
    return call.output(run.now(), text=completion.text.strip(), completion=completion)


def _deltas(run: Run, call: Call) -> OnText:
    """Emits ``call``'s text as ``MemberDelta`` events (built only for a run someone watches)."""

    def on_text(text: str) -> None:
        run.emit(MemberDelta(layer=call.layer, index=call.index, text=text, **run.stamp()))

    return on_text
