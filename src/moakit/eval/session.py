"""``EvalSession``: one evaluation, as a library object. ``moa eval run`` and the scripts in
``scripts/`` are thin callers of it.

    session = EvalSession(EvalSettings(out_dir=Path("res"), dataset="gsm8k", limit=20,
                                       systems=["single:local", "moa:local"]))
    await session.run()                 # resumable: finished items are skipped
    summary = session.write_report()    # summary.json, report.md, plots, model_outputs

The session plans work units (one item for one system, ``worker.EvalUnit``), hands them to an
executor (``executor.EvalExecutor``: local asyncio by default) and is the only writer of the
results directory: each record it gets back is appended to its system's records file. Systems
run one after another (later ones reuse the response cache the earlier ones filled; a majority
vote after the system it votes over). A record scored by another scorer is scored again from
its stored answers; one with an error runs again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moakit.config import MemberSpec
from moakit.errors import ConfigError
from moakit.eval.cache import stored_count
from moakit.eval.datasets import Dataset, dataset_names, load_baseline, load_dataset
from moakit.eval.executor import EvalExecutor, ExecutorFactory, LocalEvalExecutor
from moakit.eval.kinds import build_systems
from moakit.eval.progress import LogProgress, Progress
from moakit.eval.records import EvalRecord, RecordsFile
from moakit.eval.report import write_outputs
from moakit.eval.results import Manifest, ResultsDir
from moakit.eval.scorers import scorer_identity, scorer_names, scorer_traits
from moakit.eval.systems import DEFAULT_KINDS, System, SystemInfo
from moakit.eval.worker import EvalUnit, WorkerConfig

# A warning when at least this share of at least this many replies gave the scorer nothing.
UNPARSED_SHARE = 0.8
UNPARSED_MIN = 5


@dataclass
class EvalSettings:
    """What ``moa eval run`` takes, as data. ``report_only``: run nothing; rebuild the report
    from the directory's own manifest and records (flags may narrow it, never replace it)."""

    out_dir: Path
    dataset: str | None = None
    systems: Sequence[str] = ()
    preset: str = "local"
    data_dir: Path | None = None
    limit: int | None = None
    offset: int = 0
    max_tokens: int | None = None
    timeout_s: float | None = None
    scorer: str | None = None
    judge: MemberSpec | None = None
    judge_price: tuple[float, float] | None = None
    baseline: Path | None = None
    baseline_key: str = "round1_output"
    prices: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    cache_path: Path | None = None
    parallel: int | None = None
    endpoint_limits: Mapping[str, int] = field(default_factory=dict)
    default_endpoint_limit: int = 8
    reference: str | None = None
    score_layers: bool | None = None
    plots: bool = True
    report_only: bool = False
    # Where units run: "local" (this process) or "ray" (Ray actors, moakit[ray]): ``workers``
    # actors on the cluster at ``ray_address`` (None: RAY_ADDRESS, else a local one).
    executor: str = "local"
    ray_address: str | None = None
    workers: int = 2


class EvalSession:
    def __init__(
        self,
        settings: EvalSettings,
        *,
        progress: Progress | None = None,
        executor: ExecutorFactory | None = None,
    ) -> None:
        self.settings = settings
        self.progress = progress or LogProgress()
        self.results = ResultsDir(settings.out_dir, self._warn)
        self._executor_factory = executor or _executor_for(settings)
        self._warned: set[str] = set()
        self._cache_stats: dict[str, int] | None = None
        self.systems: list[System] = []
        if settings.report_only:
            self.manifest, self.dataset = self._for_report()
        else:
            self.manifest, self.dataset = self._for_run()
        self.scorer = scorer_traits(self.manifest.scorer, True, self._baseline())

    @property
    def infos(self) -> list[SystemInfo]:
        return self.manifest.systems

    def _warn(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self.progress.note(f"warning: {message}")

    def _baseline(self) -> dict[str, str] | None:
        s = self.settings
        if self.manifest.scorer != "alpaca-eval" and s.baseline is None:
            return None
        return load_baseline(s.baseline, s.baseline_key, self.dataset.name, s.data_dir)

    # -- preparing ----------------------------------------------------------------------------

    def _for_run(self) -> tuple[Manifest, Dataset]:
        s = self.settings
        if not s.dataset:
            raise ConfigError(
                "--dataset is required (a benchmark name or a .jsonl)", field="dataset"
            )
        dataset = load_dataset(
            s.dataset, data_dir=s.data_dir, limit=s.limit, offset=s.offset, scorer=s.scorer
        )
        specs = list(s.systems) or [f"{k}:{s.preset}" for k in DEFAULT_KINDS]
        self.systems = build_systems(specs, max_tokens=s.max_tokens, timeout_s=s.timeout_s)
        earlier = self.results.manifest()
        if earlier is not None and Path(earlier.dataset).stem != dataset.name:
            raise ConfigError(
                f"{s.out_dir} holds results on {earlier.dataset!r}, not {s.dataset!r}: "
                "use another --out",
                field="out",
            )
        # A stand-in baseline: the real one is loaded once the scorer is known to need it.
        scorer = scorer_traits(dataset.scorer, s.judge is not None, {})
        scorer_id = scorer_identity(dataset.scorer, s.judge)
        self.progress.note(f"scorer: {dataset.scorer} ({dataset.scorer_reason})")
        manifest = Manifest(
            # Paths absolute, so --report-only finds them from any working directory.
            dataset=str(Path(s.dataset).resolve()) if s.dataset.endswith(".jsonl") else s.dataset,
            data_dir=None if s.data_dir is None else str(s.data_dir.resolve()),
            limit=s.limit,
            offset=s.offset,
            scorer=dataset.scorer,
            scorer_id=scorer_id,
            closed_form=scorer.closed_form,
            scale=scorer.scale,
            reference=s.reference,
            judge_price=s.judge_price or _judge_price(s.judge),
            systems=[system.info() for system in self.systems],
            unlabelled_scorer=earlier.unlabelled_scorer if earlier else scorer_id,
        )
        return manifest, dataset

    def _for_report(self) -> tuple[Manifest, Dataset]:
        s = self.settings
        held = self.results.manifest()
        if held is None:
            raise ConfigError(
                f"--report-only: {s.out_dir} holds no results (no run.json or summary.json)",
                field="out",
            )
        if s.scorer and s.scorer != held.scorer:
            raise ConfigError(
                f"--report-only reports the scores {s.out_dir} holds ({held.scorer}); run "
                f"without --report-only to score its answers with {s.scorer}",
                field="scorer",
            )
        name = s.dataset or held.dataset
        if held.legacy and not s.dataset and held.dataset not in dataset_names():
            raise ConfigError(
                f"--report-only: name the dataset of {s.out_dir} with --dataset", field="dataset"
            )
        data_dir = s.data_dir or (Path(held.data_dir) if held.data_dir else None)
        dataset = load_dataset(
            name,
            data_dir=data_dir,
            limit=s.limit if s.limit is not None else held.limit,
            offset=s.offset or held.offset,
            scorer=held.scorer,
        )
        infos = held.systems
        if s.systems:
            asked = [
                x.info()
                for x in build_systems(
                    list(s.systems), max_tokens=s.max_tokens, timeout_s=s.timeout_s
                )
            ]
            known = {(i.name, i.hash) for i in held.systems}
            missing = [i.name for i in asked if (i.name, i.hash) not in known]
            if missing:
                raise ConfigError(
                    f"--report-only: {', '.join(missing)} never ran in {s.out_dir} (it holds "
                    f"{', '.join(i.name for i in held.systems)}); drop --system to report "
                    "what it holds",
                    field="system",
                )
            infos = asked
        manifest = held.model_copy(
            update={
                "systems": infos,
                "reference": s.reference or held.reference,
                "judge_price": s.judge_price or held.judge_price,
            }
        )
        return manifest, dataset

    def worker_config(self) -> WorkerConfig:
        s = self.settings
        return WorkerConfig(
            scorer=self.manifest.scorer,
            scorer_id=self.manifest.scorer_id,
            judge=s.judge,
            baseline=self._baseline(),
            cache_path=s.cache_path or s.out_dir / "cache.sqlite",
            endpoint_limits=dict(s.endpoint_limits),
            default_endpoint_limit=s.default_endpoint_limit,
            score_layers=s.score_layers,
            prices=dict(s.prices),
        )

    # -- running ------------------------------------------------------------------------------

    def scored_by(self, record: EvalRecord) -> str:
        return record.scorer or self.manifest.unlabelled_scorer or self.manifest.scorer_id

    def plan(self, system: System) -> tuple[list[EvalUnit], int]:
        """The units ``system`` still needs, and how many of its items are already done."""
        items = self.dataset.items
        items = items[: system.max_items] if system.max_items else items
        held = self.results.records(system.info())
        source: dict[str, EvalRecord] = {}
        if system.source is not None:
            voted = next(x for x in self.systems if x.name == system.source)
            source = self.results.records(voted.info())
        units = []
        for item in items:
            record = held.get(item.id)
            if record is None or record.error:
                units.append(EvalUnit(system, item, source=source.get(item.id)))
            elif self.scored_by(record) != self.manifest.scorer_id:
                if system.derived:  # a vote is recomputed from its source's new scores
                    units.append(EvalUnit(system, item, source=source.get(item.id)))
                else:
                    units.append(EvalUnit(system, item, rescore=record))
        return units, len(items) - len(units)

    async def run(self) -> None:
        """Run every unit not done yet. Cancelling it (a deadline) keeps every record already
        written; the next run continues from there."""
        if self.settings.report_only:
            return
        self.results.write_manifest(self.manifest)
        for system in self.systems:
            for stale in RecordsFile(self.results.records_dir, system.name, system.hash).stale():
                self.progress.note(
                    f"note: {system.name} changed since {stale.name}; those results are kept "
                    "apart, not reused"
                )
        executor = self._executor_factory(self.worker_config())
        ticker = asyncio.create_task(self._tick())
        try:
            # A vote runs after the system it votes over, whatever the order given.
            for system in sorted(self.systems, key=lambda x: x.derived):
                await self._run_system(executor, system)
        finally:
            ticker.cancel()
            self._cache_stats = executor.cache_stats()
            await executor.aclose()

    async def _run_system(self, executor: EvalExecutor, system: System) -> None:
        units, done = self.plan(system)
        total = done + len(units)
        self.progress.start(system.name, done, total)
        if units:
            out = RecordsFile(self.results.records_dir, system.name, system.hash)

            def activity(unit: EvalUnit, what: str) -> None:
                self.progress.activity(system.name, unit.item.id, what)

            parallel = self.settings.parallel or _auto_parallel(system)
            async with aclosing(
                executor.run(units, parallel=parallel, on_activity=activity)
            ) as records:
                async for record in records:
                    out.append(record)
                    done += 1
                    self.progress.advance(system.name, done, total)
        self.progress.finish(system.name)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.progress.tick()

    # -- reporting ----------------------------------------------------------------------------

    def records(self) -> dict[str, list[EvalRecord]]:
        """System name -> its records of this dataset's items, scored by this scorer (a record
        scored otherwise counts as not scored, with a warning)."""
        ids = {item.id for item in self.dataset.items}
        out: dict[str, list[EvalRecord]] = {}
        for info in self.infos:
            rows = [r for r in self.results.records(info).values() if r.item_id in ids]
            other = [r for r in rows if r.score and self.scored_by(r) != self.manifest.scorer_id]
            if other:
                self._warn(
                    f"{len(other)} records of {info.name} were scored by "
                    f"{self.scored_by(other[0])}, not {self.manifest.scorer_id}; they count as "
                    "not scored until a run (without --report-only) scores them again"
                )
            out[info.name] = [
                r.model_copy(update={"score": None}) if r in other else r for r in rows
            ]
        return out

    def write_report(self, wall_s: float | None = None) -> dict[str, Any]:
        """``summary.json``, ``report.md``, ``model_outputs/`` and plots, from the records the
        directory holds. ``wall_s``: this invocation's time, shown when it ran something."""
        records = self.records()
        self._warn_unparsed(records)
        specs = list(self.settings.systems) or list(
            dict.fromkeys(i.spec for i in self.infos if i.spec)
        )
        summary = write_outputs(
            self.settings.out_dir,
            self.manifest,
            records,
            {item.id: item.prompt for item in self.dataset.items},
            dataset_name=self.dataset.name,
            specs=specs,
            items=len(self.dataset.items),
            wall_s=wall_s,
            plots=self.settings.plots,
        )
        cache_path = self.settings.cache_path or self.settings.out_dir / "cache.sqlite"
        summary["run"]["cache"] = self._cache_stats or {
            "hits": 0,
            "misses": 0,
            "failures": 0,
            "stored": stored_count(cache_path),
        }
        (self.settings.out_dir / "summary.json").write_text(
            json.dumps(summary, indent=2), encoding="utf-8"
        )
        return summary

    def _warn_unparsed(self, records: Mapping[str, Sequence[EvalRecord]]) -> None:
        if not self.scorer.closed_form:
            return
        for name, rows in records.items():
            scores = [r.score for r in rows if r.score is not None and r.score.value is not None]
            missed = sum(self.scorer.unparsed(score) for score in scores)
            if len(scores) >= UNPARSED_MIN and missed >= UNPARSED_SHARE * len(scores):
                self._warn(
                    f"{missed} of {len(scores)} replies of {name} held no answer the "
                    f"{self.scorer.name} scorer could read{_HINTS.get(self.scorer.name, '')}; "
                    f"is it the right scorer? (--scorer {', '.join(scorer_names())}, or "
                    "module:function)"
                )


_HINTS = {
    "exact": " (it compares the answer a reply states, 'Answer: X' or '#### X', else the "
    "whole reply)",
    "number": " (it reads the final number a reply states)",
    "gsm8k": " (it reads the final number a reply states)",
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


def _executor_for(settings: EvalSettings) -> ExecutorFactory:
    if settings.executor == "local":
        return LocalEvalExecutor
    if settings.executor != "ray":
        raise ConfigError(
            f"executor {settings.executor!r}: expected local or ray", field="executor"
        )
    if settings.workers < 1:
        raise ConfigError("workers must be at least 1", field="workers")
    try:
        from moakit.eval.ray_executor import RayEvalExecutor
    except ImportError:
        raise ConfigError(
            "--executor ray needs Ray: pip install 'moakit[ray]'", field="executor"
        ) from None

    def build(config: WorkerConfig) -> EvalExecutor:
        return RayEvalExecutor(config, workers=settings.workers, address=settings.ray_address)

    return build


def _judge_price(judge: MemberSpec | None) -> tuple[float, float] | None:
    if judge is None or judge.price_in_per_mtok is None:
        return None
    return judge.price_in_per_mtok, judge.price_out_per_mtok or 0.0
