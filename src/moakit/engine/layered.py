"""The layered strategy (the paper's): each proposer layer fans out in parallel, waits for its
quorum (cutting stragglers and stopping at the deadline), and hands its answers, through the
reference pipeline, to the next layer; the final aggregator then writes the answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from moakit.engine.advice import ADVICE, Advice, fresh_needed, tool_iteration, turn_key
from moakit.engine.aggregate import aggregate
from moakit.engine.calls import Call, call_with_retries
from moakit.engine.run import Run
from moakit.engine.supervisor import supervise_layer
from moakit.events import LayerStarted, MemberDelta
from moakit.references import Reference, from_outputs
from moakit.result import LayerResult, MemberOutput


class LayeredStrategy:
    name = "layered"
    # The final aggregator may be sent the caller's tools (the proposers advise).
    tools = True

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
        if key is not None:
            ADVICE.put(key, Advice(tuple(references), run.id))
        await self.finish(run, references)

    async def propose(self, run: Run) -> list[Reference]:
        """Every proposer layer in turn: the references the final step is shown."""
        references: list[Reference] = []
        for position in range(len(run.config.layers)):
            layer = await run_layer(run, position, references)
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


async def run_layer(run: Run, position: int, references: Sequence[Reference]) -> LayerResult:
    """Proposer layer ``position`` (0-based in ``config.layers``; its number is position+1),
    shown ``references`` (the layer below's answers, already through the transforms)."""
    specs = run.lineup.layer_specs[position]
    models = run.lineup.layer_models[position]
    layer_no = position + 1
    run.emit(LayerStarted(layer=layer_no, members=[s.label for s in specs], **run.stamp()))
    block, actions = run.lineup.references.block_recorded(references, run.config.aggregate_prompt)
    run.record_defenses(actions, layer=layer_no)
    shown = tuple(references)
    calls = [
        Call(spec, model, run.member_request(spec, block), layer_no, i, references=shown)
        for i, (spec, model) in enumerate(zip(specs, models, strict=True))
    ]
    tasks = {asyncio.create_task(_propose(run, call)): call for call in calls}
    return await supervise_layer(run, position, tasks)


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
