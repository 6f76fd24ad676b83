"""`moa eval run` throughput: the local executor vs Ray with 1 and 2 workers, side by side.

One dataset, two systems (`single` and `moa` of a 2-proposer + aggregator stack on the fault
backend, in its own process with a fixed time per call), through `EvalSession` on each
executor into a fresh results directory (a fresh response cache: nothing is served from an
earlier run). Every executor has the same items in flight in total (--in-flight; on Ray,
--parallel is per actor). The Ray cluster (2 CPUs, loopback) is started once, before any timing.

Printed per executor: wall time, items/s (items x systems), items/s relative to local, and
Ray's overhead per item: (wall - local wall) / units, which includes starting the actors once.

    .venv/bin/python bench/eval_scale.py                  # 100 items x 2 systems
    .venv/bin/python bench/eval_scale.py --items 200 --ttft 0.1
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
from moakit.eval.executor import EvalExecutor, ExecutorFactory, LocalEvalExecutor
from moakit.eval.ray_executor import RayEvalExecutor
from moakit.eval.session import EvalSession, EvalSettings
from moakit.eval.worker import WorkerConfig

STACK = """
name = "fake"
[defaults]
provider = "openai"
base_url = "{base_url}"
max_tokens = 32
[[layers]]
members = [{{ model = "p1" }}, {{ model = "p2" }}]
[aggregator]
model = "agg"
"""


def on_ray(workers: int) -> ExecutorFactory:
    def build(config: WorkerConfig) -> EvalExecutor:
        return RayEvalExecutor(config, workers=workers)

    return build


async def timed(
    out: Path, data: Path, stack: Path, executor: ExecutorFactory, parallel: int
) -> float:
    settings = EvalSettings(
        out_dir=out,
        dataset=str(data),
        systems=[f"single:{stack}", f"moa:{stack}"],
        scorer="exact",
        parallel=parallel,
        plots=False,
    )
    session = EvalSession(settings, executor=executor)
    started = time.perf_counter()
    await session.run()
    wall = time.perf_counter() - started
    errors = [r for rows in session.records().values() for r in rows if r.error]
    assert not errors, errors[0].error
    return wall


async def main(args: argparse.Namespace) -> None:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        with (
            fake_backend("--ttft", str(args.ttft), "--tokens", "24") as (base_url, _pid),
            tempfile.TemporaryDirectory() as tmp,
        ):
            stack = Path(tmp) / "fake.toml"
            stack.write_text(STACK.format(base_url=base_url))
            data = Path(tmp) / "qs.jsonl"
            data.write_text(
                "".join(
                    json.dumps({"id": f"q{i}", "prompt": f"Question {i}: why?", "answer": "x"})
                    + "\n"
                    for i in range(args.items)
                )
            )
            units = args.items * 2
            runs: list[tuple[str, ExecutorFactory, int]] = [
                ("local", LocalEvalExecutor, args.in_flight),
                ("ray, 1 worker", on_ray(1), args.in_flight),
                ("ray, 2 workers", on_ray(2), max(1, args.in_flight // 2)),
            ]
            print(f"{args.items} items x 2 systems, {args.in_flight} in flight in total")
            print(
                f"{'executor':<16}{'wall s':>9}{'units/s':>10}{'vs local':>10}"
                f"{'overhead/unit ms':>18}"
            )
            local_wall = 0.0
            for n, (label, factory, parallel) in enumerate(runs):
                wall = await timed(Path(tmp) / f"out{n}", data, stack, factory, parallel)
                if label == "local":
                    local_wall = wall
                overhead = (wall - local_wall) / units * 1000
                print(
                    f"{label:<16}{wall:>9.2f}{units / wall:>10.2f}{local_wall / wall:>10.2f}"
                    f"{overhead:>18.1f}"
                )
    finally:
        ray.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100, help="dataset items")
    parser.add_argument("--ttft", type=float, default=0.2, help="fake backend seconds per call")
    parser.add_argument("--in-flight", type=int, default=8, help="items in flight in total")
    asyncio.run(main(parser.parse_args()))
