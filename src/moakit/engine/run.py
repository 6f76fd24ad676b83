"""One query's state, shared by the strategy, the retry loop and the aggregator: the clock and
deadlines, the partial result, the event queue, and how a member's request is built."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from moakit.config import ResolvedMember, StackConfig
from moakit.engine.advice import ACTING_NOTE, advisory_view, context_tokens, involves_tools
from moakit.engine.budget import Ledger
from moakit.engine.timeouts import Expiry, Timeouts, for_loop
from moakit.events import Decided, Event, Stamp
from moakit.messages import Message
from moakit.models.base import ChatRequest, Model
from moakit.policies import BudgetConfig
from moakit.prompts import inject_block, with_system_prompt
from moakit.references import ReferencePipeline
from moakit.result import Decision, DefenseAction, Result

# Share of the deadline kept for the final aggregator: proposer layers are cut this early so a
# query that hits its deadline can still be answered from the references it has.
AGGREGATOR_RESERVE = 0.3

# Fields of the incoming request that steer the FINAL aggregator only (proposers answer
# freely). ``messages`` is the conversation every layer re-sees.
FINAL_OVERRIDES = (
    "temperature",
    "max_tokens",
    "seed",
    "stop",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    # The caller's tools: only the final aggregator acts (``engine.advice``).
    "tools",
    "tool_choice",
    "parallel_tool_calls",
)


# What a member's messages are built from, besides x1: (its system prompt, block, final).
_MessagesKey = tuple[str | None, str | None, bool]


class EventChannel:
    """The run's events on their way to ``Stack.events``: many producers (member tasks), one
    consumer. Lighter than ``asyncio.Queue`` (a run emits several events per call, and at
    hundreds of queries in flight the queue's bookkeeping showed in the overhead benchmark):
    the consumer takes everything queued at once and is woken at most once per batch."""

    __slots__ = ("_items", "_waiter", "closed")

    def __init__(self) -> None:
        self._items: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    def put(self, event: Event) -> None:
        self._items.append(event)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def batch(self) -> list[Event]:
        """Every event queued so far (waiting for one); empty once closed and drained."""
        while not self._items and not self.closed:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        items = list(self._items)
        self._items.clear()
        return items


class Discard(EventChannel):
    """The channel of a run nobody watches (``Stack.run`` without observers): events are
    dropped as they come, so an unobserved run pays for none of them."""

    __slots__ = ()

    def put(self, event: Event) -> None:
        pass


class MemberRouter(Protocol):
    """Which of a layer's members a query is worth (``moakit.routing``)."""

    def select(
        self, query: str, layer: int, members: Sequence[ResolvedMember]
    ) -> Sequence[ResolvedMember]: ...


@dataclass(frozen=True)
class Lineup:
    """What a strategy works with, and all it sees of its stack: the config, each layer's
    members and the aggregators (resolved specs and their models, wrapped as they are called),
    and the reference pipeline."""

    config: StackConfig
    layer_specs: Sequence[Sequence[ResolvedMember]]
    layer_models: Sequence[Sequence[Model]]
    aggregator_specs: Sequence[ResolvedMember]
    aggregator_models: Sequence[Model]
    references: ReferencePipeline
    config_hash: str = ""
    router: MemberRouter | None = None


class Strategy(Protocol):
    """How a run is carried out (layered, staircase). It emits events through ``run``, fills
    ``run.result`` and raises a ``QueryFailed`` when no answer is possible. It may also define
    ``check(lineup)``, called once the stack's models are built, to refuse a stack it cannot
    run with a ``ConfigError``."""

    async def execute(self, run: Run) -> None: ...


class Run:
    def __init__(
        self,
        lineup: Lineup,
        request: ChatRequest,
        *,
        run_id: str,
        streaming: bool,
        budget: BudgetConfig | None = None,
    ):
        self.lineup = lineup
        self.config = lineup.config
        self.request = request
        self.id = run_id
        # streaming: final text goes out as it is written, so a failure after the first
        # TextDelta is final (the stream rule). Otherwise text is committed per attempt.
        self.streaming = streaming
        # x1: every layer and the aggregator re-see exactly this conversation.
        self.conversation = list(request.messages)
        self.t0 = time.monotonic()
        self.result = Result(stack=self.config.name, run_id=run_id)
        deadline = self.config.deadline_s
        self.deadline_at = self.t0 + deadline if deadline else None
        self.proposers_deadline_at = (
            self.t0 + deadline * (1 - AGGREGATOR_RESERVE) if deadline else None
        )
        self.final_overrides: dict[str, Any] = {
            name: getattr(request, name)
            for name in FINAL_OVERRIDES
            if getattr(request, name) not in (None, ())
        }
        # Spending limits: the stack's, tightened by the caller's (``engine.budget``).
        limits = lineup.config.budget.tighter(budget)
        self.ledger = (
            Ledger(limits, self.conversation, self.config.aggregate_prompt)
            if limits.limited
            else None
        )
        # Tools in play: proposers see the advisory view (built once per context window).
        self.advising = involves_tools(request)
        self._views: dict[tuple[int, int], list[Message]] = {}
        self._last_messages: tuple[_MessagesKey, tuple[Message, ...]] | None = None
        self._timeouts: Timeouts | None = None
        self.channel = EventChannel()
        # False when nobody can see the events at all (a Stack.run() without observers): the
        # per-call ones (MemberStarted, MemberDelta) are then not even built.
        self.live = True
        self.member_deltas = True  # emit MemberDelta as proposers write (when live)
        # Stream every call, so each member's time to first token is measured even when
        # nobody reads its text as it comes (otherwise such a call is one plain request).
        self.member_ttft = False

    def unwatched(self) -> Run:
        self.channel = Discard()
        self.live = False
        return self

    def now(self) -> float:
        """Seconds since the query started."""
        return time.monotonic() - self.t0

    def stamp(self) -> Stamp:
        return {"run_id": self.id, "ts": time.time()}

    def emit(self, event: Event) -> None:
        self.channel.put(event)

    def record_defenses(
        self, actions: Sequence[DefenseAction], *, layer: int, step: int | None = None
    ) -> None:
        """Keep what a defense did, stamped with the layer whose input it changed (and the
        staircase step)."""
        for action in actions:
            self.result.defenses.append(action.model_copy(update={"layer": layer, "step": step}))

    def member_request(
        self, spec: ResolvedMember, block: str | None, *, final: bool = False
    ) -> ChatRequest:
        """What ``spec`` is sent: x1 with its own system prompt and the references ``block``;
        the final aggregator also gets the caller's sampling overrides and tools. With tools in
        play, anyone else gets the advisory view of x1 instead (``engine.advice``)."""
        fields: dict[str, Any] = {
            "temperature": spec.temperature,
            "max_tokens": spec.max_tokens,
            "seed": spec.seed,
            "stop": spec.stop,
        }
        if final and self.final_overrides:
            fields.update(self.final_overrides)
        request = ChatRequest(messages=self._member_messages(spec, block, final), **fields)
        if self.ledger is not None:
            request = self.ledger.bounded(request)
        return request

    def _member_messages(
        self, spec: ResolvedMember, block: str | None, final: bool
    ) -> tuple[Message, ...]:
        """The messages of ``member_request``. A layer's members are built one after another
        and mostly share one system prompt (or none) and one block, so the last messages built
        are reused while those match (messages are immutable). The advisory view depends on the
        member: never reused."""
        advisory = self.advising and not final
        key = (spec.system, block, final)
        last = self._last_messages
        if not advisory and last is not None and last[0] == key:
            return last[1]
        conversation = self._advisory_view(spec) if advisory else self.conversation
        messages = with_system_prompt(conversation, spec.system)
        if block is not None:
            if final and self.advising:
                block += "\n\n" + ACTING_NOTE
            messages = inject_block(messages, block)
        built = tuple(messages)
        if not advisory:
            self._last_messages = (key, built)
        return built

    def decide(self, decision: Decision) -> None:
        """Record an adaptive or budget decision and tell the observers."""
        self.result.decisions.append(decision)
        self.emit(Decided(decision=decision, **self.stamp()))

    def _advisory_view(self, spec: ResolvedMember) -> list[Message]:
        window = context_tokens(spec.options)
        answer = spec.max_tokens or 1024
        view = self._views.get((window, answer))
        if view is None:
            view = advisory_view(
                self.conversation,
                self.request.tools,
                result_chars=self.config.advice.result_chars,
                context_tokens=window,
                answer_tokens=answer,
            )
            self._views[(window, answer)] = view
        return view

    def timeout(self, spec: ResolvedMember, deadline_at: float | None) -> tuple[float, bool]:
        """Per-call timeout, clipped by the deadline. Second value: the deadline is binding."""
        timeout = spec.timeout_s
        if deadline_at is not None:
            left = max(0.0, deadline_at - time.monotonic())
            if left < timeout:
                return left, True
        return timeout, False

    def expiry(self, timeout: float, deadline_at: float | None) -> Expiry:
        """The time limit of one attempt: ``timeout`` seconds, or ``deadline_at`` when given
        (the binding deadline). Shares timers with every other attempt (``engine.timeouts``)."""
        timeouts = self._timeouts
        if timeouts is None:
            timeouts = self._timeouts = for_loop()
        return timeouts.at(deadline_at) if deadline_at is not None else timeouts.after(timeout)

    @staticmethod
    def time_left(delay: float, deadline_at: float | None) -> bool:
        return deadline_at is None or time.monotonic() + delay < deadline_at
