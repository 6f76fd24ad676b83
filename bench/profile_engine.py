"""Where the engine's own CPU goes per call: ``engine_only.py``'s stack (3 layers x 6
in-process members that sleep L, and an aggregator), N queries at once for R rounds, under
cProfile with a CPU clock (``time.process_time``: what other processes do does not count).
Prints the CPU per call (unprofiled rounds, then profiled), the share the garbage collector
took, and the top frames by own time. Run it on two checkouts to compare them:

    .venv/bin/python bench/profile_engine.py
    (cd OTHER && PYTHONPATH=src $PWD/.venv/bin/python $PWD/bench/profile_engine.py)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import time

from _procs import GcClock
from moakit import Stack, parse_config
from overhead import PROPOSERS, concurrent, config, sleeping_models


async def profile(queries: int, rounds: int, layers: int, latency: float, top: int) -> None:
    calls = queries * (layers * PROPOSERS + 1) * rounds
    cfg = parse_config(config("http://127.0.0.1:9/v1", layers))  # never called
    async with Stack(cfg, models=sleeping_models(latency)) as engine:
        await concurrent(engine, queries)
        with GcClock() as gc_clock:
            cpu0 = time.process_time()
            for _ in range(rounds):
                await concurrent(engine, queries)
            cpu = time.process_time() - cpu0
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        for _ in range(rounds):
            await concurrent(engine, queries)
        profiler.disable()
    print(f"{queries} queries x {rounds} rounds, {calls} calls: {cpu / calls * 1e6:.1f} us of CPU")
    print(f"per call unprofiled, of which {gc_clock.summary(calls)}")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[-6000:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    asyncio.run(profile(args.queries, args.rounds, args.layers, args.latency, args.top))


if __name__ == "__main__":
    main()
