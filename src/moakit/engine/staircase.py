"""The staircase strategy (chunk-wise aggregation, ``strategy = "staircase"``): proposers
stream, and each next layer and the final aggregator start as soon as every answering member
below has its first chunk (``staircase.chunk_tokens``). A writer above layer 1 writes a chunk
from the references it has, then continues its own partial answer (assistant prefill) as more
arrives, and writes to the end once the layer below is settled. The user sees one stream.

Meanings kept from the layered strategy: ``min_successful`` and the straggler policy per layer
(a layer that misses its quorum fails the query), the proposers' deadline (members still
writing are cut), the aggregator's fallbacks (only before any text is out), and the stream
rule (once text is out, an aggregator failure is final; ``result.final`` is what was sent).
A member that fails mid-answer is dropped from the next steps above it (no retry after text:
the layer above may have read it). Without streaming, the answer's text goes out step by step
as each step completes (a failed step's text never does, and retries stay free until then).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from moakit.config import ResolvedMember
from moakit.engine.aggregate import AggregatorChain
from moakit.engine.calls import Call, call_with_retries
from moakit.engine.run import Lineup, Run
from moakit.engine.stairs import Board, Feed, Stair
from moakit.engine.supervisor import supervise_layer
from moakit.errors import AggregatorFailed, ConfigError, QueryFailed
from moakit.events import LayerStarted, MemberDelta, TextDelta
from moakit.models.base import ChatRequest
from moakit.result import LayerResult, MemberOutput


class StaircaseStrategy:
    name = "staircase"

    def check(self, stack: Lineup) -> None:  # the lineup of the stack being built
        """Every writer above layer 1 continues its own answer: it must support prefill."""
        for spec, model in zip(stack.aggregator_specs, stack.aggregator_models, strict=True):
            if not model.profile.prefill:
                raise ConfigError(
                    f"aggregator {spec.label!r} cannot continue a partial answer "
                    "(its profile has no prefill), which strategy 'staircase' needs; use a "
                    "model that can (anthropic, an OpenAI-compatible endpoint with "
                    "options.continue_final_message = true) or strategy 'layered'",
                    field="aggregator",
                )
        for position in range(1, len(stack.layer_specs)):
            specs, models = stack.layer_specs[position], stack.layer_models[position]
            for i, (spec, model) in enumerate(zip(specs, models, strict=True)):
                if not model.profile.prefill:
                    raise ConfigError(
                        f"layers.{position} member {spec.label!r} cannot continue a partial "
                        "answer (its profile has no prefill), which strategy 'staircase' "
                        "needs above layer 1",
                        field=f"layers.{position}.members.{i}",
                    )

    async def execute(self, run: Run) -> None:
        boards: list[Board] = []
        layers: list[asyncio.Task[LayerResult]] = []
        for position in range(len(run.config.layers)):
            board, task = _start_layer(run, position, boards[-1] if boards else None)
            boards.append(board)
            layers.append(task)
        writer = Stair(run, boards[-1], final=True)
        agg: asyncio.Task[None] = asyncio.create_task(_aggregate(run, writer))
        tasks: list[asyncio.Task[Any]] = [*layers, agg]
        error: BaseException | None = None
        try:
            pending = set(tasks)
            while error is None and not agg.done():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                error = next((t.exception() for t in done if t.exception() is not None), None)
            if agg.done() and agg.exception() is None:
                error = None  # the answer is complete: a layer failing meanwhile is moot
            # The answer is complete (or a layer failed): stop what still runs, and let each
            # layer record its members, the cut ones included.
            for board in boards:
                board.halt_reason = (
                    "cancelled: answer complete" if error is None else "cancelled: query failed"
                )
                board.halt.set()
            if not agg.done():
                agg.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            run.result.layers.sort(key=lambda layer: layer.layer)
        if error is None:
            return
        if isinstance(error, QueryFailed) and not isinstance(error, AggregatorFailed):
            # A layer failed, perhaps after part of the answer was sent: that part stays.
            run.result.final = writer.text
        raise error


def _start_layer(
    run: Run, position: int, below: Board | None
) -> tuple[Board, asyncio.Task[LayerResult]]:
    specs = run.lineup.layer_specs[position]
    models = run.lineup.layer_models[position]
    layer_no = position + 1
    feeds = [
        Feed(Call(spec, model, run.member_request(spec, None), layer_no, i))
        for i, (spec, model) in enumerate(zip(specs, models, strict=True))
    ]
    board = Board(feeds, layer_no)
    run.emit(LayerStarted(layer=layer_no, members=[s.label for s in specs], **run.stamp()))
    if below is None:
        members = {asyncio.create_task(_propose(run, board, f)): f for f in feeds}
    else:
        members = {asyncio.create_task(_write_member(run, below, board, f)): f for f in feeds}
    return board, asyncio.create_task(_supervise(run, position, board, members))


def _on_text(run: Run, board: Board, feed: Feed, *, record: bool) -> Callable[[str], None]:
    call = feed.call

    def on_text(text: str) -> None:
        if record:
            feed.parts.append(text)
        board.changed()
        if run.live and run.member_deltas:
            run.emit(MemberDelta(layer=call.layer, index=call.index, text=text, **run.stamp()))

    return on_text


async def _propose(run: Run, board: Board, feed: Feed) -> MemberOutput:
    call = feed.call
    on_text = _on_text(run, board, feed, record=True)
    completion = await call_with_retries(
        run,
        call,
        deadline_at=run.proposers_deadline_at,
        on_text=on_text,
        final_after_text=True,  # the layer above may have read it: no second version
    )
    if completion is None:
        assert call.error is not None
        return call.output(run.now(), error=call.error.describe())
    return call.output(run.now(), text=completion.text.strip(), completion=completion)


async def _write_member(run: Run, below: Board, board: Board, feed: Feed) -> MemberOutput:
    """A member above layer 1: a staircase writer whose deltas feed the layer above it."""
    stair = Stair(run, below, final=False)
    stair.parts = feed.parts  # one list: the layer above reads the deltas as they come
    call = feed.call
    on_text = _on_text(run, board, feed, record=False)
    while True:
        view = await stair.next_view()
        completion = await stair.step(
            call,
            view,
            deadline_at=run.proposers_deadline_at,
            on_text=on_text,
            final_after_text=True,
        )
        if completion is None:
            assert call.error is not None
            out = call.output(run.now(), error=call.error.describe())
            out.steps = list(stair.steps)
            return out
        if stair.finished(call, view, completion):
            return stair.output(call, completion)


async def _supervise(
    run: Run, position: int, board: Board, members: dict[asyncio.Task[MemberOutput], Feed]
) -> LayerResult:
    """The layer's quorum, straggler cut-off and deadline (the shared supervisor), stopping
    early when the board is halted; then the layer's answers are final for the writers above."""
    feeds = {feed.call.index: feed for feed in members.values()}

    def settled(call: Call, out: MemberOutput) -> None:
        feed = feeds[call.index]
        feed.output = out
        feed.done = out.ok
        feed.dropped = not out.ok
        board.changed()

    layer = await supervise_layer(
        run,
        position,
        {task: feed.call for task, feed in members.items()},
        on_settled=settled,
        halt=board.halt,
        halt_reason=lambda: board.halt_reason,
    )
    board.settled = True
    board.changed()
    return layer


async def _aggregate(run: Run, stair: Stair) -> None:
    """The final aggregator as a staircase writer, through the aggregator chain: a fallback
    takes over only while no text is out."""
    chain = AggregatorChain(run)
    call: Call | None = None

    def on_text(text: str) -> None:
        run.emit(TextDelta(text=text, **run.stamp()))

    def request_for(spec: ResolvedMember) -> ChatRequest:
        return run.member_request(spec, None)

    on_failure = chain.reporter(lambda _call: bool(stair.parts))
    while True:
        view = await stair.next_view()
        while True:  # this step, by the aggregator or (before any text) its fallbacks
            if call is None:
                call = chain.start(request_for, view.references)
            mark = len(stair.parts)
            completion = await stair.step(
                call,
                view,
                deadline_at=run.deadline_at,
                on_text=on_text if run.streaming else None,
                final_after_text=run.streaming,
                on_failure=on_failure,
            )
            if completion is not None:
                break
            chain.failed(call, text_out=bool(stair.parts), partial=stair.text, steps=stair.steps)
            call = None
        if not run.streaming and len(stair.parts) > mark:
            run.emit(TextDelta(text="".join(stair.parts[mark:]), **run.stamp()))
        if stair.finished(call, view, completion):
            chain.answered(stair.output(call, completion), send=False)
            return
