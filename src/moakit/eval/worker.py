"""The work unit of an evaluation and what runs it: one item for one system -> one typed
``EvalRecord``. An executor (``moakit.eval.executor``) decides where and how many units run at
once; a ``Worker`` answers and scores one unit. ``WorkerConfig`` is the picklable recipe for a
worker, so an executor on another process (a Ray actor) builds its own from it."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moakit.config import MemberSpec
from moakit.engine import Stack
from moakit.errors import MoaError
from moakit.eval.cache import TALLY, ClusterCache, EvalCache, ResponseCache, Tally
from moakit.eval.calls import ModelFactory, OnActivity, run_single, run_stack
from moakit.eval.datasets import Item
from moakit.eval.records import EvalRecord, MemberRecord
from moakit.eval.scorers import Scorer, build_scorer
from moakit.eval.scorers.base import Score
from moakit.eval.systems import System, parse_ranker_choice
from moakit.executors.base import Services
from moakit.messages import ToolCall
from moakit.models.base import Message, Usage
from moakit.result import MemberOutput, Result

# US dollars per million tokens (input, output) by model name, for members without prices in
# their spec. The embedded provider is free.
PriceTable = Mapping[str, tuple[float, float]]
# (unit, what it is doing): progress inside a slow item.
UnitActivity = Callable[["EvalUnit", str], None]


@dataclass(frozen=True)
class EvalUnit:
    """One item for one system. ``source``: for a majority vote, the voted system's record of
    the item. ``rescore``: an answered record scored by another scorer; it is scored again
    from its stored answers, and nothing is called."""

    system: System
    item: Item
    source: EvalRecord | None = None
    rescore: EvalRecord | None = None


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, as plain data (picklable)."""

    scorer: str
    scorer_id: str
    judge: MemberSpec | None = None
    baseline: Mapping[str, str] | None = None
    cache_path: Path | None = None
    endpoint_limits: Mapping[str, int] = field(default_factory=dict)
    default_endpoint_limit: int = 8
    score_layers: bool | None = None
    prices: PriceTable = field(default_factory=dict)

    def build(self, services: Services | None = None) -> Worker:
        """This process's worker; with ``services`` (a cluster worker), its calls go through
        the run's shared cache and its one limiter per endpoint for every worker."""
        if services is None:
            cache: EvalCache = ResponseCache(self.cache_path)
        elif services.cache is not None:
            cache = ClusterCache(services.cache)
        else:
            cache = ResponseCache(None)
        factory = ModelFactory(
            cache,
            self.endpoint_limits,
            self.default_endpoint_limit,
            shared_limits=services.limits if services is not None else None,
        )
        judge = factory.judge(self.judge) if self.judge is not None else None
        scorer = build_scorer(self.scorer, judge=judge, baseline=self.baseline)
        return Worker(
            scorer,
            self.scorer_id,
            factory,
            score_layers=self.score_layers,
            prices=self.prices,
        )


@dataclass
class _Answered:
    finals: list[str]
    result: Result
    latency_s: float
    ttft_s: float | None
    truncated: bool
    extra: dict[str, Any] = field(default_factory=dict)


class Worker:
    def __init__(
        self,
        scorer: Scorer,
        scorer_id: str,
        factory: ModelFactory,
        *,
        score_layers: bool | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self.scorer = scorer
        self.scorer_id = scorer_id
        self.factory = factory
        if score_layers is None:
            # Proposals that only advise (a tool-call scorer's items) have no calls to score.
            score_layers = scorer.closed_form and not scorer.scores_tool_calls
        self.score_layers = score_layers
        self.prices = dict(prices or {})
        self._stacks: dict[tuple[str, str], Stack] = {}

    @property
    def cache(self) -> EvalCache:
        return self.factory.cache

    async def aclose(self) -> None:
        for stack in self._stacks.values():
            await stack.aclose()
        await self.factory.aclose()
        self.cache.close()

    def _stack(self, system: System) -> Stack | None:
        if system.config is None:
            return None
        key = (system.name, system.hash)
        if key not in self._stacks:
            self._stacks[key] = self.factory.stack(
                system.config, live=system.live, compromised=system.compromised
            )
        return self._stacks[key]

    async def evaluate(self, unit: EvalUnit, on_activity: UnitActivity | None = None) -> EvalRecord:
        """The unit's record. Never raises for a failed call or judge: the record says so."""
        if unit.rescore is not None:  # its answering time stays the one it had
            return await self.score(unit.item, _unscored(unit.rescore))
        started = time.time()
        if unit.system.kind == "majority":
            record = await self.majority(unit)
        else:
            activity = (lambda text: on_activity(unit, text)) if on_activity else None
            record = await self.answer(unit.system, unit.item, activity)
            if activity is not None:
                activity("scoring")
            record = await self.score(unit.item, record)
        return record.model_copy(
            update={"started_at": round(started, 3), "finished_at": round(time.time(), 3)}
        )

    # -- answering ----------------------------------------------------------------------------

    async def answer(self, system: System, item: Item, activity: OnActivity | None) -> EvalRecord:
        """The system's unscored record of ``item``."""
        tally = Tally()
        token = TALLY.set(tally)
        error: str | None = None
        try:
            answered = await self._converse(system, item, tally, activity)
        except MoaError as exc:  # QueryFailed and friends: record, never crash the run
            result = getattr(exc, "result", None) or Result(stack=system.name)
            answered = _Answered([], result, result.latency_s, None, False)
            error = str(exc)
        finally:
            TALLY.reset(token)
        result = answered.result
        final = answered.finals[-1] if answered.finals else ""
        return EvalRecord(
            item_id=item.id,
            system=system.name,
            kind=system.kind,
            system_hash=system.hash,
            error=error or result.error,
            finals=answered.finals,
            final=final,
            tool_calls=list(result.tool_calls) if answered.finals else [],
            truncated=answered.truncated if answered.finals else None,
            usage=result.usage,
            cost_usd=self.cost(result.calls()),
            latency_s=round(answered.latency_s, 4),
            ttft_s=None if answered.ttft_s is None else round(answered.ttft_s, 4),
            answer_chars=len(final),
            answer_words=len(final.split()),
            calls=tally.calls,
            cache_hits=tally.cache_hits,
            decisions=list(result.decisions),
            layers=[
                [
                    MemberRecord(
                        label=m.label,
                        model=m.model,
                        output=m.output,
                        error=m.error,
                        usage=m.usage,
                        cost_usd=self.cost([m]),
                        truncated=m.truncated,
                    )
                    for m in layer.members
                ]
                for layer in result.layers
            ],
            defenses=result.defenses,
            extra=answered.extra,
        )

    async def _converse(
        self, system: System, item: Item, tally: Tally, activity: OnActivity | None
    ) -> _Answered:
        messages: list[Message] = []
        finals: list[str] = []
        t0 = time.monotonic()
        ttft: float | None = None
        truncated = False
        result = Result(stack=system.name)
        extra: dict[str, Any] = {}
        stack = self._stack(system)
        for turn in item.turns:
            messages.append(Message.user(turn))
            if stack is None:
                assert system.member is not None
                if activity is not None:
                    activity("answering")
                model = self.factory.model_for(system.member, cached=not system.live)
                result = await run_single(model, system.member, messages, item.tools)
                first = tally.first_token_s[0] if tally.first_token_s else None
            else:
                result, first = await run_stack(stack, messages, activity, item.tools)
            ttft = first if ttft is None else ttft
            if result.error:
                raise _Failed(result)
            final, cut = result.final, bool(result.aggregator and result.aggregator.truncated)
            if system.kind == "ranker":
                final, cut, extra = self.ranked(result)
            truncated = truncated or cut
            finals.append(final)
            messages.append(Message.assistant(final, result.tool_calls))
        if system.kind == "collab" and system.member is not None:
            if activity is not None:
                activity("the member alone")
            alone = await run_single(
                self.factory.model_for(system.member, cached=not system.live),
                system.member,
                messages[:-1],
            )
            extra["alone"] = alone.final
        return _Answered(finals, result, time.monotonic() - t0, ttft, truncated, extra)

    def ranked(self, result: Result) -> tuple[str, bool, dict[str, Any]]:
        proposals = [m for m in result.layers[-1].members if m.ok and m.output]
        choice = parse_ranker_choice(result.final, len(proposals))
        extra = {"ranker_reply": result.final, "ranker_choice": choice}
        picked = proposals[choice if choice is not None else 0]
        return picked.output or "", picked.truncated, extra

    def cost(self, calls: Sequence[MemberOutput]) -> float | None:
        total = 0.0
        for m in calls:
            if m.cost_usd is not None:
                total += m.cost_usd
            elif m.provider == "local":
                continue
            elif m.model in self.prices:
                p_in, p_out = self.prices[m.model]
                total += (m.usage.prompt_tokens * p_in + m.usage.completion_tokens * p_out) / 1e6
            elif m.usage.total_tokens:
                return None  # an unpriced call: the total is unknown, not smaller
        return round(total, 8)

    # -- scoring ------------------------------------------------------------------------------

    async def _score(
        self, item: Item, answers: Sequence[str], tool_calls: Sequence[ToolCall] = ()
    ) -> Score:
        """A judge that fails (after its retries) fails this score, not the run; the record
        carries the error so a re-run retries the item. ``tool_calls``: those the last
        answer made, for a scorer that scores them."""
        try:
            if self.scorer.scores_tool_calls:
                return await self.scorer.score_calls(item, answers, tool_calls)
            return await self.scorer.score(item, answers)
        except MoaError as exc:
            return Score(value=None, error=f"scoring failed: {exc}", detail={"failed": True})

    async def score(self, item: Item, record: EvalRecord) -> EvalRecord:
        """``record`` scored by this worker's scorer: the final answer, every proposal (or
        its comparable answer on closed-form tasks), and collab's member alone."""
        finals = record.finals
        score = (
            await self._score(item, finals, record.tool_calls)
            if finals
            else Score(error="no answer")
        )
        layers: list[list[MemberRecord]] = []
        for layer in record.layers:
            rows = []
            for m in layer:
                if m.answered and self.score_layers:
                    assert m.output is not None
                    s = await self._score(item, [*finals[:-1], m.output])
                    m = m.model_copy(
                        update={"value": s.value, "correct": s.correct, "extracted": s.extracted}
                    )
                    score.judge_usage = score.judge_usage + s.judge_usage
                    score.judge_calls += s.judge_calls
                elif m.answered and self.scorer.closed_form:
                    assert m.output is not None
                    m = m.model_copy(update={"extracted": self.scorer.extract(m.output, item)})
                rows.append(m)
            layers.append(rows)
        extra = dict(record.extra)
        if "alone" in extra:
            alone = await self._score(item, [*finals[:-1], extra["alone"]])
            extra["alone_value"] = alone.value
            extra["alone_correct"] = alone.correct
            score.judge_usage = score.judge_usage + alone.judge_usage
            score.judge_calls += alone.judge_calls
        failed = score.error if score.detail.get("failed") else None
        return record.model_copy(
            update={
                "scorer": self.scorer_id,
                "error": record.error or failed,
                "score": score,
                "layers": layers,
                "extra": extra,
            }
        )

    async def majority(self, unit: EvalUnit) -> EvalRecord:
        """Plurality over the source system's first-layer extracted answers (ties: the answer
        seen first); the answer is the first proposal carrying the winning value."""
        base = EvalRecord(
            item_id=unit.item.id,
            system=unit.system.name,
            kind=unit.system.kind,
            system_hash=unit.system.hash,
            scorer=self.scorer_id,
        )
        source = unit.source
        if source is None or not source.layers:
            return base.model_copy(update={"error": "source system has no record for this item"})
        rows = [r for r in source.layers[0] if r.output]
        votes = [r.extracted for r in rows if r.extracted is not None]
        if not votes:
            final = (rows[0].output or "") if rows else ""
            winner = None
        else:
            counts = Counter(votes)
            top = max(counts.values())
            winner = next(v for v in votes if counts[v] == top)
            final = next(r.output or "" for r in rows if r.extracted == winner)
        score = await self._score(unit.item, [final]) if final else Score()
        # Its cost is the proposals it votes over; the vote itself is free.
        first = source.layers[0]
        costs = [r.cost_usd for r in first if r.cost_usd is not None]
        cost = round(sum(costs), 8) if len(costs) == len(first) else None
        return base.model_copy(
            update={
                "finals": [final],
                "final": final,
                "score": score,
                "usage": sum((r.usage for r in first), Usage()),
                "cost_usd": cost,
                "answer_chars": len(final),
                "answer_words": len(final.split()),
                "extra": {"votes": votes, "winner": winner, "proposer_usage_of": source.system},
            }
        )


def _unscored(record: EvalRecord) -> EvalRecord:
    """An answered record without the scores a previous scorer gave it."""
    layers = [
        [m.model_copy(update={"value": None, "correct": None, "extracted": None}) for m in layer]
        for layer in record.layers
    ]
    extra = {k: v for k, v in record.extra.items() if k not in ("alone_value", "alone_correct")}
    return record.model_copy(
        update={"score": None, "scorer": None, "layers": layers, "extra": extra}
    )


class _Failed(MoaError):
    def __init__(self, result: Result) -> None:
        super().__init__(result.error or "the system gave no answer")
        self.result = result
