"""`moa batch` throughput: the local executor vs Ray with 1 and 2 workers, side by side in one run.

Two workloads, each the same input file through every executor:

* fake:       a 2-proposer + aggregator stack on the fault backend (its own process, a fixed
              time to first token per call), so the work is waiting, as with remote endpoints;
              every executor gets the same total lines in flight (--concurrency);
* local-fast: the embedded SmolLM2 preset, CPU-bound; one line at a time per worker (each Ray
              worker loads its own copy of the model).

Printed per executor: wall time, items/s, items/s relative to the local executor, Ray's worker
start-up (actors plus their stacks) and Ray's overhead per item: (wall - start-up - local wall)
/ items. The Ray cluster (2 CPUs, loopback) is started once, before any timing.

    .venv/bin/python bench/batch_scale.py                        # 200 fake items, 6 local-fast
    .venv/bin/python bench/batch_scale.py --items 400 --local-items 0 --ttft 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import ray

from _procs import fake_backend
from moakit import parse_config
from moakit.batch import run_batch
from moakit.config import StackConfig
from moakit.executors import Executor, LocalExecutor
from moakit.executors.ray import RayExecutor


def fake_config(base_url: str) -> StackConfig:
    return parse_config(
        {
            "name": "fake",
            "defaults": {"provider": "openai", "base_url": base_url, "max_tokens": 32},
            "layers": [[{"model": "p1"}, {"model": "p2"}]],
            "aggregator": {"model": "agg"},
        }
    )


def write_input(path: Path, n: int) -> Path:
    lines = (json.dumps({"prompt": f"Question {i}: why is the sky blue?"}) for i in range(n))
    path.write_text("".join(line + "\n" for line in lines))
    return path


async def timed(
    src: Path, out: Path, model: str, configs: dict[str, StackConfig], executor: Executor
) -> tuple[float, float]:
    started = time.perf_counter()
    summary = await run_batch(
        src, out, default_model=model, configs=configs, executor=executor, overwrite=True
    )
    wall = time.perf_counter() - started
    assert summary.complete and summary.progress.errors == 0, summary.progress.line()
    return wall, getattr(executor, "startup_s", 0.0)


async def workload(
    name: str, items: int, model: str, configs: dict[str, StackConfig], concurrency: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = write_input(Path(tmp) / "in.jsonl", items)
        out = Path(tmp) / "out.jsonl"
        runs: list[tuple[str, Executor]] = [
            ("local", LocalExecutor(concurrency)),
            ("ray, 1 worker", RayExecutor(1, concurrency=concurrency)),
            ("ray, 2 workers", RayExecutor(2, concurrency=max(1, concurrency // 2))),
        ]
        if concurrency == 1:  # CPU-bound: every worker runs one line at a time
            runs[2] = ("ray, 2 workers", RayExecutor(2, concurrency=1))
        print(f"\n{name}: {items} items, {concurrency} in flight in total")
        print(
            f"{'executor':<16}{'wall s':>9}{'items/s':>10}{'vs local':>10}"
            f"{'start-up s':>12}{'overhead/item ms':>18}"
        )
        local_wall = 0.0
        for label, executor in runs:
            wall, startup = await timed(src, out, model, configs, executor)
            if label == "local":
                local_wall = wall
            rate = items / wall
            overhead = (wall - startup - local_wall) / items * 1000 if label != "local" else 0.0
            print(
                f"{label:<16}{wall:>9.2f}{rate:>10.2f}{local_wall / wall:>10.2f}"
                f"{startup:>12.2f}{overhead:>18.1f}"
            )


async def main(args: argparse.Namespace) -> None:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        if args.items:
            with fake_backend("--ttft", str(args.ttft), "--tokens", "24") as (base_url, _pid):
                configs = {"fake": fake_config(base_url)}
                await workload("fake backend", args.items, "fake", configs, args.concurrency)
        if args.local_items:
            await workload("local-fast (embedded)", args.local_items, "local-fast", {}, 1)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=200, help="fake-backend items (0: skip)")
    parser.add_argument("--local-items", type=int, default=6, help="local-fast items (0: skip)")
    parser.add_argument("--ttft", type=float, default=0.2, help="fake backend seconds per call")
    parser.add_argument("--concurrency", type=int, default=16, help="fake items in flight")
    asyncio.run(main(parser.parse_args()))
