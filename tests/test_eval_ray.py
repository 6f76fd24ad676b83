"""``moa eval run --executor ray`` on a real local Ray cluster that this module starts (2 CPUs,
loopback only), against the fault backend: the same records as the local executor, one
endpoint limit and one response cache for the whole cluster, and a worker killed mid-run loses
no item. Ray's start-up costs seconds: one cluster serves every test here."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from click.testing import CliRunner

from moakit.cli.main import cli
from moakit.eval.executor import EvalExecutor
from moakit.eval.progress import LogProgress
from moakit.eval.ray_executor import RayEvalExecutor
from moakit.eval.results import ResultsDir
from moakit.eval.session import EvalSession, EvalSettings
from moakit.eval.worker import WorkerConfig
from moakit.testing.fake_backend import Behavior, FakeBackend, Latency

# What differs between two runs of the same units: when they ran and how long they took.
TIMES = ("started_at", "finished_at", "latency_s", "ttft_s")


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    yield
    ray.shutdown()


def stack_file(path: Path, base_url: str) -> Path:
    path.write_text(
        f"""
name = "fake"
[defaults]
provider = "openai"
base_url = "{base_url}"
max_tokens = 16
retries = 0
[[layers]]
members = [{{ model = "p1" }}, {{ model = "p2" }}]
[aggregator]
model = "agg"
"""
    )
    return path


def dataset(path: Path, prompts: list[str]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "prompt": p, "answer": "42"}) + "\n"
            for i, p in enumerate(prompts)
        )
    )
    return path


def settings(out: Path, data: Path, specs: list[str], **more: Any) -> EvalSettings:
    return EvalSettings(out_dir=out, dataset=str(data), systems=specs, scorer="exact", **more)


def records(out: Path, *ignore: str) -> dict[str, dict[str, dict[str, Any]]]:
    """System -> item -> its record as JSON, without times (nor the fields in ``ignore``)."""
    results = ResultsDir(out, warn=lambda message: None)
    manifest = results.manifest()
    assert manifest is not None
    out_rows: dict[str, dict[str, dict[str, Any]]] = {}
    for info in manifest.systems:
        rows = {}
        for item_id, record in results.records(info).items():
            row = record.model_dump(mode="json")
            for key in (*TIMES, *ignore):
                row.pop(key)
            rows[item_id] = row
        out_rows[info.name] = rows
    return out_rows


def hits_by_system(out: Path) -> dict[str, int]:
    rows = records(out)
    return {system: sum(r["cache_hits"] for r in items.values()) for system, items in rows.items()}


def differences(
    left: dict[str, dict[str, dict[str, Any]]], right: dict[str, dict[str, dict[str, Any]]]
) -> list[str]:
    """Where two runs' records differ: system/item/field, readable in a failure."""
    out = [f"systems: {sorted(left)} != {sorted(right)}"] if left.keys() != right.keys() else []
    for system in left.keys() & right.keys():
        a, b = left[system], right[system]
        out += [f"{system}/{i}: missing on one side" for i in a.keys() ^ b.keys()]
        for item in a.keys() & b.keys():
            out += [
                f"{system}/{item}/{k}: {a[item].get(k)!r} != {b[item].get(k)!r}"
                for k in a[item].keys() | b[item].keys()
                if a[item].get(k) != b[item].get(k)
            ]
    return sorted(out)


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    with FakeBackend(default=Behavior(latency=Latency(ttft_s=0.02))) as fb:
        yield fb


def test_ray_writes_the_records_the_local_executor_writes(
    backend: FakeBackend, tmp_path: Path
) -> None:
    stack = stack_file(tmp_path / "fake.toml", backend.base_url)
    # Two questions asked twice: cache hits within a system, on either executor.
    data = dataset(tmp_path / "qs.jsonl", [f"question {i % 6}" for i in range(8)])
    specs = [f"single:{stack}", f"moa:{stack}", f"majority:{stack}"]
    local = EvalSession(settings(tmp_path / "local", data, specs))
    asyncio.run(local.run())
    local_summary = local.write_report()
    # The Ray run through the command line, as a user runs it.
    args = ["eval", "run", "-d", str(data), "-o", str(tmp_path / "ray"), "--scorer", "exact"]
    for spec in specs:
        args += ["-s", spec]
    result = CliRunner().invoke(cli, [*args, "--executor", "ray", "--workers", "2", "--no-plots"])
    assert result.exit_code == 0, result.output
    # Which of two identical questions in flight at once is the cache hit depends on timing
    # (on either executor): hits are compared per system, everything else per record.
    ran = records(tmp_path / "ray", "cache_hits")
    assert differences(ran, records(tmp_path / "local", "cache_hits")) == []
    assert hits_by_system(tmp_path / "ray") == hits_by_system(tmp_path / "local")
    assert [len(rows) for rows in ran.values()] == [8, 8, 8]
    assert not [r for rows in ran.values() for r in rows.values() if r["error"]]
    # One shared cache: the same hits, misses and stored answers as the local run.
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["run"]["cache"] == local_summary["run"]["cache"]
    assert summary["run"]["cache"]["hits"] > 0


def test_one_endpoint_limit_and_one_cache_for_the_cluster(tmp_path: Path) -> None:
    with FakeBackend(default=Behavior(latency=Latency(ttft_s=0.05))) as fb:
        stack = stack_file(tmp_path / "fake.toml", fb.base_url)
        # 8 distinct questions, each asked twice: 16 items, 8 × 3 distinct calls.
        data = dataset(tmp_path / "qs.jsonl", [f"question {i % 8}" for i in range(16)])
        session = EvalSession(
            settings(
                tmp_path / "out",
                data,
                [f"moa:{stack}"],
                executor="ray",
                workers=2,
                parallel=4,
                default_endpoint_limit=2,
            )
        )
        asyncio.run(session.run())
        # Two workers × four items in flight, yet never more than 2 calls at the backend,
        # and every repeated question answered from the one cache, never called again.
        assert fb.stats.max_in_flight == 2
        assert fb.stats.requests == 8 * 3
    rows = records(tmp_path / "out")["moa:fake"]
    assert len(rows) == 16 and not [r for r in rows.values() if r["error"]]


class KillOneWorker(LogProgress):
    """After the first records, SIGKILLs a Ray worker process with items in flight."""

    def __init__(self) -> None:
        self.executor: RayEvalExecutor | None = None
        self.killed: list[int] = []

    def advance(self, system: str, done: int, total: int) -> None:
        if done >= 3 and not self.killed and self.executor and self.executor.ray.worker_pids:
            pid = next(iter(self.executor.ray.worker_pids.values()))
            os.kill(pid, signal.SIGKILL)
            self.killed.append(pid)


def test_a_worker_killed_mid_run_loses_no_item(tmp_path: Path) -> None:
    with FakeBackend(default=Behavior(latency=Latency(ttft_s=0.1))) as fb:
        stack = stack_file(tmp_path / "fake.toml", fb.base_url)
        data = dataset(tmp_path / "qs.jsonl", [f"question {i}" for i in range(12)])
        specs = [f"moa:{stack}"]
        asyncio.run(EvalSession(settings(tmp_path / "local", data, specs)).run())
        progress = KillOneWorker()

        def executor(config: WorkerConfig) -> EvalExecutor:
            progress.executor = RayEvalExecutor(config, workers=2)
            return progress.executor

        ray_settings = settings(tmp_path / "ray", data, specs, parallel=2)
        asyncio.run(EvalSession(ray_settings, progress=progress, executor=executor).run())
    assert progress.killed and progress.executor is not None
    assert progress.executor.ray.workers_lost == 1
    # A retried item finds the calls its lost worker finished in the cache: only its count
    # of cache hits may differ.
    ran = records(tmp_path / "ray", "cache_hits")
    assert len(ran["moa:fake"]) == 12
    assert differences(ran, records(tmp_path / "local", "cache_hits")) == []


class WatchWorkers(LogProgress):
    """Which worker processes each system ran on; can cancel the session after N records."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.executor: RayEvalExecutor | None = None
        self.pids: dict[str, set[int]] = {}
        self.cancel_after = cancel_after
        self.task: asyncio.Task[None] | None = None

    def advance(self, system: str, done: int, total: int) -> None:
        assert self.executor is not None
        self.pids.setdefault(system, set()).update(self.executor.ray.worker_pids.values())
        if self.cancel_after is not None and done >= self.cancel_after and self.task:
            self.task.cancel()

    def factory(self, config: WorkerConfig) -> EvalExecutor:
        self.executor = RayEvalExecutor(config, workers=2)
        return self.executor


def test_the_workers_last_the_whole_session(backend: FakeBackend, tmp_path: Path) -> None:
    stack = stack_file(tmp_path / "fake.toml", backend.base_url)
    data = dataset(tmp_path / "qs.jsonl", [f"question {i}" for i in range(6)])
    watch = WatchWorkers()
    specs = [f"single:{stack}", f"moa:{stack}", f"majority:{stack}"]
    session = EvalSession(
        settings(tmp_path / "out", data, specs), progress=watch, executor=watch.factory
    )
    asyncio.run(session.run())
    # Two actors, started once: every system ran on the same two processes.
    assert len(watch.pids["single:fake"]) == 2
    assert watch.pids["single:fake"] == watch.pids["moa:fake"] == watch.pids["majority:fake"]
    assert watch.executor is not None and watch.executor.ray.workers_lost == 0


def test_a_cancelled_session_keeps_its_records_and_the_next_run_finishes(
    tmp_path: Path,
) -> None:
    with FakeBackend(default=Behavior(latency=Latency(ttft_s=0.1))) as fb:
        stack = stack_file(tmp_path / "fake.toml", fb.base_url)
        data = dataset(tmp_path / "qs.jsonl", [f"question {i}" for i in range(10)])
        specs = [f"moa:{stack}"]
        watch = WatchWorkers(cancel_after=3)

        async def cancelled() -> None:
            session = EvalSession(
                settings(tmp_path / "out", data, specs), progress=watch, executor=watch.factory
            )
            watch.task = asyncio.current_task()
            with pytest.raises(asyncio.CancelledError):
                await session.run()

        asyncio.run(cancelled())
        kept = records(tmp_path / "out")["moa:fake"]
        assert 3 <= len(kept) < 10
        asyncio.run(EvalSession(settings(tmp_path / "out", data, specs, executor="ray")).run())
    assert len(records(tmp_path / "out")["moa:fake"]) == 10


def test_an_unknown_executor_is_refused_naming_the_field(tmp_path: Path) -> None:
    data = dataset(tmp_path / "qs.jsonl", ["x"])
    with pytest.raises(Exception, match="executor 'spark': expected local or ray") as caught:
        EvalSession(settings(tmp_path / "out", data, ["single:local"], executor="spark"))
    assert getattr(caught.value, "field", None) == "executor"


@pytest.mark.embedded
def test_local_fast_on_a_ray_worker(tmp_path: Path) -> None:
    data = dataset(tmp_path / "qs.jsonl", ["What is 6 times 7?", "What is 40 plus 2?"])
    session = EvalSession(
        settings(tmp_path / "out", data, ["single:local-fast"], executor="ray", workers=1)
    )
    asyncio.run(session.run())
    rows = records(tmp_path / "out")["single:local-fast"]
    assert len(rows) == 2
    assert all(r["final"].strip() and not r["error"] for r in rows.values())
