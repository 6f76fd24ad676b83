"""``moa batch`` on a real local Ray cluster that this module starts (2 CPUs, loopback only),
against the fault backend: same outputs as the local executor, one endpoint limit and one cache
for the whole cluster, and a worker killed mid-run loses no item. Ray's start-up costs seconds:
one cluster serves every test here."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import ray

from batch_helpers import fake_stack, normalized, read_lines, write_input
from moakit.batch import BatchProgress, run_batch
from moakit.executors import LocalExecutor, Services
from moakit.executors.ray import RayExecutor
from moakit.testing.fake_backend import Behavior, FakeBackend, Latency


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


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    with FakeBackend(default=Behavior(latency=Latency(ttft_s=0.02))) as fb:
        yield fb


async def test_ray_writes_what_the_local_executor_writes(
    backend: FakeBackend, tmp_path: Path
) -> None:
    src = write_input(tmp_path / "in.jsonl", 12)
    with src.open("a") as fh:
        fh.write(json.dumps({"prompt": "x", "logprobs": True}) + "\n")
    configs = {"fake": fake_stack(backend.base_url)}
    local = await run_batch(src, tmp_path / "local.jsonl", default_model="fake", configs=configs)
    executor = RayExecutor(2, concurrency=3)
    remote = await run_batch(
        src, tmp_path / "ray.jsonl", default_model="fake", configs=configs, executor=executor
    )
    assert normalized(read_lines(tmp_path / "ray.jsonl")) == normalized(
        read_lines(tmp_path / "local.jsonl")
    )
    assert remote.progress.cost_usd == pytest.approx(local.progress.cost_usd)
    assert remote.progress.done == 13 and remote.progress.errors == 1


async def test_one_endpoint_limit_and_one_cache_for_the_cluster(tmp_path: Path) -> None:
    with FakeBackend(default=Behavior(latency=Latency(ttft_s=0.05))) as fb:
        src = tmp_path / "in.jsonl"
        # 8 distinct questions, each asked twice: 16 lines, 8 × 3 distinct calls.
        src.write_text(
            "".join(json.dumps({"prompt": f"question {i % 8}"}) + "\n" for i in range(16))
        )
        executor = RayExecutor(
            2, concurrency=4, limits={f"openai:{fb.base_url}": 2}, cache=tmp_path / "cache.db"
        )
        await run_batch(
            src,
            tmp_path / "o.jsonl",
            default_model="fake",
            configs={"fake": fake_stack(fb.base_url)},
            executor=executor,
        )
        # Two workers × four lines in flight, yet never more than 2 calls at the backend.
        assert fb.stats.max_in_flight == 2
        assert fb.stats.requests == 8 * 3
    rows = read_lines(tmp_path / "o.jsonl")
    assert len(rows) == 16 and all(r["response"]["status_code"] == 200 for r in rows)


async def test_a_worker_killed_mid_run_loses_no_item(tmp_path: Path) -> None:
    with FakeBackend(default=Behavior(latency=Latency(ttft_s=0.1))) as fb:
        configs = {"fake": fake_stack(fb.base_url)}
        src = write_input(tmp_path / "in.jsonl", 16)
        await run_batch(src, tmp_path / "local.jsonl", default_model="fake", configs=configs)
        executor = RayExecutor(2, concurrency=2)
        killed: list[int] = []

        def kill_one(progress: BatchProgress) -> None:
            # After the first answers, SIGKILL a worker process with items in flight.
            if progress.done >= 3 and not killed and executor.worker_pids:
                pid = next(iter(executor.worker_pids.values()))
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        summary = await run_batch(
            src,
            tmp_path / "ray.jsonl",
            default_model="fake",
            configs=configs,
            executor=executor,
            on_progress=kill_one,
        )
    assert killed and executor.workers_lost == 1
    assert summary.complete and summary.progress.errors == 0
    rows = read_lines(tmp_path / "ray.jsonl")
    assert normalized(rows) == normalized(read_lines(tmp_path / "local.jsonl"))


class Doubler:
    """A work unit that is not a batch line: the seam ``moa eval`` can reuse."""

    async def __call__(self, payload: int) -> int:
        if payload == 3:
            raise ValueError("three is refused")
        return payload * 2

    async def aclose(self) -> None:
        return None


def build_doubler(services: Services) -> Doubler:
    return Doubler()


@pytest.mark.parametrize("kind", ["local", "ray"])
async def test_any_work_unit_runs_on_either_executor(kind: str) -> None:
    ray.cloudpickle.register_pickle_by_value(__import__(__name__))
    executor = LocalExecutor(2) if kind == "local" else RayExecutor(1, concurrency=2)
    outcomes = [o async for o in executor.map(build_doubler, [(str(i), i) for i in range(5)])]
    by_key = {o.key: o for o in outcomes}
    assert {k: o.result for k, o in by_key.items()} == {"0": 0, "1": 2, "2": 4, "3": None, "4": 8}
    assert by_key["3"].error is not None and "three is refused" in by_key["3"].error


async def test_a_map_fed_from_a_queue_hands_back_outcomes_while_the_source_waits() -> None:
    """A long-lived map (``moa eval`` feeds one system after another into one) must not hold
    the outcomes in flight back while its source waits for more payloads."""
    ray.cloudpickle.register_pickle_by_value(__import__(__name__))
    inbox: asyncio.Queue[tuple[str, int] | None] = asyncio.Queue()

    async def source() -> AsyncIterator[tuple[str, int]]:
        while (item := await inbox.get()) is not None:
            yield item

    executor = RayExecutor(1, concurrency=2)
    outcomes = executor.map(build_doubler, source())
    inbox.put_nowait(("a", 1))
    first = await asyncio.wait_for(anext(outcomes), timeout=60)
    assert (first.key, first.result) == ("a", 2)
    inbox.put_nowait(("b", 4))
    inbox.put_nowait(None)
    assert [(o.key, o.result) async for o in outcomes] == [("b", 8)]


@pytest.mark.embedded
async def test_local_fast_preset_on_a_ray_worker(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in ("What is 2+2?", "Hi")))
    summary = await run_batch(
        src,
        tmp_path / "o.jsonl",
        default_model="local-fast",
        executor=RayExecutor(1, concurrency=1),
    )
    rows = read_lines(tmp_path / "o.jsonl")
    assert summary.complete and [r["response"]["status_code"] for r in rows] == [200, 200]
    assert all(r["response"]["body"]["choices"][0]["message"]["content"].strip() for r in rows)
