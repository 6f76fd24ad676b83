"""Where our CPU goes per call on the HTTP path: ``overhead.py``'s stack (3 layers x 6 + an
aggregator) against the fake backend in its own process, N queries at once, under cProfile with
a CPU clock (``time.process_time``, so what other processes do does not count). Prints our CPU
per call and the top frames by own time. Run it on two checkouts to compare them:

    .venv/bin/python bench/profile_overhead.py --queries 200
    (cd OTHER && PYTHONPATH=src $PWD/.venv/bin/python $PWD/bench/profile_overhead.py)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import time

from _procs import GcClock, fake_backend
from moakit import Stack, parse_config
from overhead import PROPOSERS, config


async def concurrent(stack: Stack, n: int) -> tuple[float, int]:
    """Wall time of ``n`` queries at once, and how many failed (a stalled connection under a
    profiler's slowdown: counted, not fatal)."""
    t0 = time.perf_counter()
    outcomes = await asyncio.gather(
        *(stack.run([{"role": "user", "content": f"q{i}"}]) for i in range(n)),
        return_exceptions=True,
    )
    return time.perf_counter() - t0, sum(isinstance(o, BaseException) for o in outcomes)


async def profile(queries: int, layers: int, latency: float, top: int) -> None:
    with fake_backend("--ttft", str(latency), "--tokens", "12") as (base_url, _pid):
        async with Stack(parse_config(config(base_url, layers))) as stack:
            await concurrent(stack, 1)  # warm connections
            with GcClock() as gc_clock:  # one round unprofiled: the GC's share
                cpu0 = time.process_time()
                await concurrent(stack, queries)
                plain_cpu = time.process_time() - cpu0
            profiler = cProfile.Profile(time.process_time)
            cpu0 = time.process_time()
            profiler.enable()
            wall, failed = await concurrent(stack, queries)
            profiler.disable()
            cpu = time.process_time() - cpu0
    calls = queries * (layers * PROPOSERS + 1)
    print(f"unprofiled: {plain_cpu / calls * 1e3:.3f} ms of our CPU per call, of which")
    print(gc_clock.summary(calls))
    print(f"{queries} queries ({failed} failed), {calls} calls: wall {wall:.2f}s, CPU {cpu:.2f}s,")
    print(f"{cpu / calls * 1e3:.3f} ms of our CPU per call (profiled: cProfile adds its own)")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[-4000:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    asyncio.run(profile(args.queries, args.layers, args.latency, args.top))


if __name__ == "__main__":
    main()
