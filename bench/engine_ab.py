"""The engine column (``engine_only.py``) of two checkouts, measured in PAIRED rounds: one worker
process per checkout (its ``src/`` and its ``bench/overhead.py``), rounds of N queries taken
in turn, A B B A A B ..., so both see the same load from moment to moment. On a shared machine
separate runs drift by ±30 % in CPU per call; the paired differences do not.

    .venv/bin/python bench/engine_ab.py /tmp/base .                # A = /tmp/base, B = here
    .venv/bin/python bench/engine_ab.py /tmp/base . --rounds 40
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


async def worker(queries: int, latency: float, layers: int) -> None:
    """One checkout's side: a round per ``go`` line on stdin, printing "ratio cpu_us_per_call"."""
    sys.path.insert(0, "bench")  # this checkout's overhead.py, not the driver's
    from moakit import Stack, parse_config
    from overhead import PROPOSERS, concurrent, config, sleeping_models

    bound = (layers + 1) * latency
    calls = queries * (layers * PROPOSERS + 1)
    loop = asyncio.get_running_loop()
    cfg = parse_config(config("http://127.0.0.1:9/v1", layers))  # never called
    async with Stack(cfg, models=sleeping_models(latency)) as engine:
        await concurrent(engine, queries)
        print("ready", flush=True)
        while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "go":
            cpu0 = time.process_time()
            wall = await concurrent(engine, queries)
            cpu = time.process_time() - cpu0
            print(f"{wall / bound:.4f} {cpu / calls * 1e6:.2f}", flush=True)


def drive(checkouts: list[str], rounds: int, flags: list[str]) -> None:
    script = str(Path(__file__).resolve())
    procs = [
        subprocess.Popen(
            [sys.executable, script, "--worker", *flags],
            cwd=path,
            env={**os.environ, "PYTHONPATH": str(Path(path, "src").resolve())},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for path in checkouts
    ]
    runs: list[list[tuple[float, float]]] = [[], []]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for i in range(rounds):
            for k in (0, 1) if i % 2 == 0 else (1, 0):
                stdin, stdout = procs[k].stdin, procs[k].stdout
                assert stdin is not None and stdout is not None
                stdin.write("go\n")
                stdin.flush()
                ratio, cpu = map(float, stdout.readline().split())
                runs[k].append((ratio, cpu))
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(30)
    for label, path, run in zip("AB", checkouts, runs, strict=True):
        ratios, cpus = [r for r, _ in run], [c for _, c in run]
        print(
            f"{label} {path}: ratio median {statistics.median(ratios):.3f} min {min(ratios):.3f}; "
            f"CPU per call median {statistics.median(cpus):.1f} us, min {min(cpus):.1f} us"
        )
    d_ratio = [b[0] - a[0] for a, b in zip(*runs, strict=True)]
    d_cpu = [b[1] - a[1] for a, b in zip(*runs, strict=True)]
    base = statistics.median(c for _, c in runs[0])
    print(
        f"paired B - A over {rounds} rounds: ratio median {statistics.median(d_ratio):+.3f}; "
        f"CPU per call median {statistics.median(d_cpu):+.1f} us "
        f"({statistics.median(d_cpu) / base * 100:+.0f} %), B lower in "
        f"{sum(d < 0 for d in d_cpu)} of {rounds}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("checkouts", nargs="*", help="A and B: two checkouts (src/ and bench/)")
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        asyncio.run(worker(args.queries, args.latency, args.layers))
        return
    if len(args.checkouts) != 2:
        ap.error("give two checkouts, A and B")
    flags = ["--queries", str(args.queries), "--latency", str(args.latency)]
    drive(args.checkouts, args.rounds, [*flags, "--layers", str(args.layers)])


if __name__ == "__main__":
    main()
