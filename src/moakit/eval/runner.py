"""The evaluation loop: every system on every item, one JSONL record per item per system.

Resumable: records live in ``records/<system>.<hash>.jsonl``; a re-run skips items that already
have a record without an error, and a system whose configuration changed gets a new hash, hence a
new file, so old answers are never mixed into its numbers. Systems run one after another (later
ones reuse the response cache the earlier ones filled); items of a system run concurrently, and
every call passes a per-endpoint concurrency limit.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moakit.config import MemberSpec
from moakit.engine import Stack
from moakit.errors import MoaError
from moakit.eval.cache import TALLY, Tally
from moakit.eval.calls import ModelFactory, run_single, run_stack
from moakit.eval.datasets import Item
from moakit.eval.scorers.base import Score, Scorer
from moakit.eval.systems import System, parse_ranker_choice
from moakit.models.base import Message
from moakit.result import MemberOutput, Result

# US dollars per million tokens (input, output) by model name, for members without prices in
# their spec. The embedded provider is free.
PriceTable = Mapping[str, tuple[float, float]]


@dataclass
class Answer:
    finals: list[str]
    result: Result
    latency_s: float
    ttft_s: float | None
    tally: Tally
    extra: dict[str, Any] = field(default_factory=dict)


class Runner:
    def __init__(
        self,
        scorer: Scorer,
        factory: ModelFactory,
        out_dir: Path,
        *,
        parallel: int | None = None,
        score_layers: bool | None = None,
        prices: PriceTable | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.scorer = scorer
        self.factory = factory
        self.out_dir = out_dir
        self.parallel = parallel
        self.score_layers = scorer.closed_form if score_layers is None else score_layers
        self.prices = dict(prices or {})
        self.on_progress = on_progress
        (out_dir / "records").mkdir(parents=True, exist_ok=True)

    def records_path(self, system: System) -> Path:
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", system.name)
        return self.out_dir / "records" / f"{slug}.{system.hash}.jsonl"

    def stale_files(self, system: System) -> list[Path]:
        """Records of earlier configurations of this system (another hash): kept, not used."""
        current = self.records_path(system)
        stem = current.name.rsplit(".", 2)[0]
        return sorted(
            p
            for p in current.parent.glob(f"{stem}.*.jsonl")
            if p != current and p.name.rsplit(".", 2)[0] == stem
        )

    def load_records(self, system: System) -> dict[str, dict[str, Any]]:
        """The last record of each item (later lines win: a retried failure replaces itself)."""
        path = self.records_path(system)
        records: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    if row.get("system_hash") == system.hash:
                        records[row["item_id"]] = row
        return records

    async def run(self, systems: Sequence[System], items: Sequence[Item]) -> None:
        for system in systems:
            await self.run_system(system, items, systems)

    async def run_system(
        self, system: System, items: Sequence[Item], systems: Sequence[System] = ()
    ) -> None:
        items = items[: system.max_items] if system.max_items else items
        done = {k for k, r in self.load_records(system).items() if not r.get("error")}
        todo = [item for item in items if item.id not in done]
        total, finished = len(items), len(items) - len(todo)
        if self.on_progress:
            self.on_progress(system.name, finished, total)
        stack = (
            self.factory.stack(system.config, live=system.live, compromised=system.compromised)
            if system.config is not None
            else None
        )
        source: dict[str, dict[str, Any]] = {}
        if system.source is not None:
            src = next(s for s in systems if s.name == system.source)
            source = self.load_records(src)
        gate = asyncio.Semaphore(self.parallel or _auto_parallel(system))
        path = self.records_path(system)

        async def one(item: Item) -> None:
            nonlocal finished
            async with gate:
                started = time.time()
                record = await self.evaluate(system, item, stack, source.get(item.id))
                record["started_at"] = round(started, 3)
                record["finished_at"] = round(time.time(), 3)
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            finished += 1
            if self.on_progress:
                self.on_progress(system.name, finished, total)

        await asyncio.gather(*(one(item) for item in todo))

    async def evaluate(
        self, system: System, item: Item, stack: Stack | None, source: dict[str, Any] | None
    ) -> dict[str, Any]:
        base: dict[str, Any] = {
            "item_id": item.id,
            "system": system.name,
            "kind": system.kind,
            "system_hash": system.hash,
        }
        if system.kind == "majority":
            return base | await self.majority(item, source)
        tally = Tally()
        token = TALLY.set(tally)
        try:
            answer = await self.answer(system, item, stack, tally)
        except MoaError as exc:  # QueryFailed and friends: record, never crash the run
            result = getattr(exc, "result", None) or Result(stack=system.name)
            answer = Answer([], result, result.latency_s, None, tally)
            base["error"] = str(exc)
        finally:
            TALLY.reset(token)
        return base | await self.describe(system, item, answer, base.get("error"))

    async def answer(self, system: System, item: Item, stack: Stack | None, tally: Tally) -> Answer:
        messages: list[Message] = []
        finals: list[str] = []
        t0 = time.monotonic()
        ttft: float | None = None
        result = Result(stack=system.name)
        extra: dict[str, Any] = {}
        for turn in item.turns:
            messages.append({"role": "user", "content": turn})
            if stack is None:
                assert system.member is not None
                model = self.factory.direct_model_for(system.member, live=system.live)
                result = await run_single(model, system.member, messages)
                first = tally.first_token_s[0] if tally.first_token_s else None
            else:
                result, first = await run_stack(stack, messages)
            ttft = first if ttft is None else ttft
            if result.error:
                raise _Failed(result)
            final = result.final
            if system.kind == "ranker":
                final, extra = self.ranked(result)
            finals.append(final)
            messages.append({"role": "assistant", "content": final})
        if system.kind == "collab" and system.member is not None:
            alone = await run_single(
                self.factory.direct_model_for(system.member, live=system.live),
                system.member,
                messages[:-1],
            )
            extra["alone"] = alone.final
        return Answer(finals, result, time.monotonic() - t0, ttft, tally, extra)

    def ranked(self, result: Result) -> tuple[str, dict[str, Any]]:
        proposals = [m.output for m in result.layers[-1].members if m.ok and m.output]
        choice = parse_ranker_choice(result.final, len(proposals))
        extra = {"ranker_reply": result.final, "ranker_choice": choice}
        return proposals[choice if choice is not None else 0], extra

    async def _score(self, item: Item, answers: Sequence[str]) -> Score:
        """A judge that fails (after its retries) fails this score, not the run; the record
        carries the error so a re-run retries the item."""
        try:
            return await self.scorer.score(item, answers)
        except MoaError as exc:
            return Score(value=None, error=f"scoring failed: {exc}", detail={"failed": True})

    async def describe(
        self, system: System, item: Item, answer: Answer, error: str | None
    ) -> dict[str, Any]:
        result = answer.result
        final = answer.finals[-1] if answer.finals else ""
        score = (
            await self._score(item, answer.finals)
            if answer.finals
            else Score(value=None, error="no answer")
        )
        layers: list[list[dict[str, Any]]] = []
        for layer in result.layers:
            rows = []
            for m in layer.members:
                row: dict[str, Any] = {
                    "label": m.label,
                    "model": m.model,
                    "output": m.output,
                    "error": m.error,
                    "usage": m.usage.model_dump(),
                    "cost_usd": self.cost([m]),
                }
                if m.ok and m.output is not None and self.score_layers:
                    s = await self._score(item, [*answer.finals[:-1], m.output])
                    row |= {"value": s.value, "correct": s.correct, "extracted": s.extracted}
                    score.judge_usage = score.judge_usage + s.judge_usage
                    score.judge_calls += s.judge_calls
                elif m.ok and m.output is not None and self.scorer.closed_form:
                    row["extracted"] = self.scorer.extract(m.output, item)
                rows.append(row)
            layers.append(rows)
        extra = dict(answer.extra)
        if "alone" in extra:
            alone = await self._score(item, [*answer.finals[:-1], extra["alone"]])
            extra["alone_value"] = alone.value
            extra["alone_correct"] = alone.correct
            score.judge_usage = score.judge_usage + alone.judge_usage
        usage = result.usage
        return {
            "error": error or result.error or (score.error if score.detail.get("failed") else None),
            "finals": answer.finals,
            "final": final,
            "score": score.to_json(),
            "usage": usage.model_dump(),
            "cost_usd": self.cost(result.calls()),
            "judge_cost_usd": None,  # filled by the report from the judge's price
            "latency_s": round(answer.latency_s, 4),
            "ttft_s": None if answer.ttft_s is None else round(answer.ttft_s, 4),
            "answer_chars": len(final),
            "answer_words": len(final.split()),
            "calls": answer.tally.calls,
            "cache_hits": answer.tally.cache_hits,
            "layers": layers,
            # What each defense did (fenced, filtered, labelled, voted): the robustness table
            # counts the items a defense acted on and the references it dropped.
            "defenses": [d.model_dump(exclude_defaults=True) for d in result.defenses],
            "extra": extra,
        }

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

    async def majority(self, item: Item, source: dict[str, Any] | None) -> dict[str, Any]:
        """Plurality over the source system's first-layer extracted answers (ties: the answer
        seen first); the answer is the first proposal carrying the winning value."""
        if source is None or not source.get("layers"):
            return {"error": "source system has no record for this item", "score": None}
        rows = [r for r in source["layers"][0] if r.get("output")]
        votes = [r.get("extracted") for r in rows if r.get("extracted") is not None]
        if not votes:
            final = rows[0]["output"] if rows else ""
            winner = None
        else:
            counts = Counter(votes)
            top = max(counts.values())
            winner = next(v for v in votes if counts[v] == top)
            final = next(r["output"] for r in rows if r.get("extracted") == winner)
        score = await self._score(item, [final]) if final else Score(value=None)
        # Its cost is the proposals it votes over; the vote itself is free.
        first = source["layers"][0]
        usage = {
            k: sum(int(r.get("usage", {}).get(k, 0)) for r in first)
            for k in ("prompt_tokens", "completion_tokens")
        }
        costs = [r.get("cost_usd") for r in first]
        cost = None if any(c is None for c in costs) else round(sum(costs), 8)
        return {
            "error": None,
            "finals": [final],
            "final": final,
            "score": score.to_json(),
            "usage": usage,
            "cost_usd": cost,
            "judge_cost_usd": None,
            "latency_s": None,
            "ttft_s": None,
            "answer_chars": len(final),
            "answer_words": len(final.split()),
            "calls": 0,
            "cache_hits": 0,
            "layers": [],
            "extra": {"votes": votes, "winner": winner, "proposer_usage_of": source.get("system")},
        }


def _auto_parallel(system: System) -> int:
    """Items in flight at once: one for the embedded model (its scheduler already batches the
    calls of one item; on a few cores more items would only inflate per-item latency), four
    for remote endpoints."""
    specs: list[MemberSpec] = [system.member] if system.member else []
    if system.config is not None:
        specs += [
            m for i in range(len(system.config.layers)) for m in system.config.layer_members(i)
        ]
        specs += system.config.aggregators()
    return 1 if specs and all(s.provider == "local" for s in specs) else 4


class _Failed(MoaError):
    def __init__(self, result: Result) -> None:
        super().__init__(result.error or "the system gave no answer")
        self.result = result
