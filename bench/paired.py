"""A column of ``overhead.py`` for two checkouts, measured in PAIRED rounds: one worker process
per checkout (its ``src/`` and its ``bench/overhead.py``; for http, its own fake backend
process too), rounds of N queries taken in turn, A B B A A B ..., so both see the same load
from moment to moment. On a shared machine separate runs drift by a third in CPU per call;
the paired differences do not.

    .venv/bin/python bench/paired.py /tmp/base .                  # engine column; A = /tmp/base
    .venv/bin/python bench/paired.py /tmp/base . --column http --rounds 12
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


async def worker(column: str, queries: int, latency: float, layers: int) -> None:
    """One checkout's side: a round per ``go`` line on stdin, printing "ratio cpu_us_per_call
    backend_cpu_us_per_call" (0 for the engine column)."""
    sys.path.insert(0, "bench")  # this checkout's overhead.py and _procs.py, not the driver's
    from _procs import fake_backend, process_cpu_s
    from moakit import Stack, parse_config
    from overhead import PROPOSERS, concurrent, config, sleeping_models

    bound = (layers + 1) * latency
    calls = queries * (layers * PROPOSERS + 1)
    loop = asyncio.get_running_loop()
    with contextlib.ExitStack() as processes:
        pid = 0
        if column == "http":
            flags = ("--ttft", str(latency), "--tokens", "12")
            base_url, pid = processes.enter_context(fake_backend(*flags))
            stack = Stack(parse_config(config(base_url, layers)))
        else:
            cfg = parse_config(config("http://127.0.0.1:9/v1", layers))  # never called
            stack = Stack(cfg, models=sleeping_models(latency))
        async with stack:
            await concurrent(stack, queries)
            print("ready", flush=True)
            while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "go":
                backend0 = process_cpu_s(pid) if pid else 0.0
                cpu0 = time.process_time()
                wall = await concurrent(stack, queries)
                cpu = time.process_time() - cpu0
                backend = process_cpu_s(pid) - backend0 if pid else 0.0
                print(f"{wall / bound:.4f} {cpu / calls * 1e6:.2f} {backend / calls * 1e6:.2f}")
                sys.stdout.flush()


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
    runs: list[list[tuple[float, float, float]]] = [[], []]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for i in range(rounds):
            for k in (0, 1) if i % 2 == 0 else (1, 0):
                stdin, stdout = procs[k].stdin, procs[k].stdout
                assert stdin is not None and stdout is not None
                stdin.write("go\n")
                stdin.flush()
                ratio, cpu, backend = map(float, stdout.readline().split())
                runs[k].append((ratio, cpu, backend))
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(30)
    for label, path, run in zip("AB", checkouts, runs, strict=True):
        ratios, cpus = [r[0] for r in run], [r[1] for r in run]
        backend = statistics.median(r[2] for r in run)
        print(
            f"{label} {path}: ratio median {statistics.median(ratios):.3f} min {min(ratios):.3f}; "
            f"CPU per call median {statistics.median(cpus):.1f} us, min {min(cpus):.1f} us"
            + (f"; backend's median {backend:.1f} us" if backend else "")
        )
    d_ratio = [b[0] - a[0] for a, b in zip(*runs, strict=True)]
    d_cpu = [b[1] - a[1] for a, b in zip(*runs, strict=True)]
    base = statistics.median(r[1] for r in runs[0])
    print(
        f"paired B - A over {rounds} rounds: ratio median {statistics.median(d_ratio):+.3f}; "
        f"CPU per call median {statistics.median(d_cpu):+.1f} us "
        f"({statistics.median(d_cpu) / base * 100:+.0f} %), B lower in "
        f"{sum(d < 0 for d in d_cpu)} of {rounds}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("checkouts", nargs="*", help="A and B: two checkouts (src/ and bench/)")
    ap.add_argument("--column", choices=("engine", "http"), default="engine")
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        asyncio.run(worker(args.column, args.queries, args.latency, args.layers))
        return
    if len(args.checkouts) != 2:
        ap.error("give two checkouts, A and B")
    flags = ["--column", args.column, "--queries", str(args.queries)]
    flags += ["--latency", str(args.latency), "--layers", str(args.layers)]
    drive(args.checkouts, args.rounds, flags)


if __name__ == "__main__":
    main()
