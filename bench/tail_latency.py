"""Tail latency with and without the straggler cut-off, under lognormal member latency.

Same stack as bench/overhead.py (LAYERS proposer layers x 6 proposers + aggregator) against the
fake backend, each call's time to first token drawn from a seeded lognormal. Runs M queries with
``straggler = {grace_factor: 0.5}, min_successful = 3`` and M without, and prints p50/p95 end to
end plus how many proposer answers the cut-off dropped.

    .venv/bin/python bench/tail_latency.py --queries 100 --concurrency 20
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from moakit import Stack, parse_config
from moakit.result import Result
from moakit.testing.fake_backend import Behavior, FakeBackend, Latency


def config(base_url: str, layers: int, cutoff: bool, grace_factor: float) -> dict[str, Any]:
    members = [{"model": f"p{i}"} for i in range(6)]
    cfg: dict[str, Any] = {
        "defaults": {"base_url": base_url, "max_tokens": 12, "retries": 0, "timeout_s": 60},
        "layers": [members] * layers,
        "aggregator": {"model": "agg"},
    }
    if cutoff:
        cfg["straggler"] = {"grace_factor": grace_factor}
        cfg["min_successful"] = 3
    return cfg


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


async def run_many(stack: Stack, queries: int, concurrency: int) -> list[Result]:
    sem = asyncio.Semaphore(concurrency)
    results: list[Result] = []

    async def one(i: int) -> None:
        async with sem:
            results.append(await stack.run([{"role": "user", "content": f"q{i}"}]))

    await asyncio.gather(*(one(i) for i in range(queries)))
    return results


async def measure(
    fb: FakeBackend, args: argparse.Namespace, cutoff: bool
) -> tuple[list[float], int, float]:
    latency = Latency(
        ttft_s=args.median, distribution="lognormal", sigma=args.sigma, seed=args.seed
    )
    fb.set_default(Behavior(latency=latency))  # same seed: both runs draw the same latencies
    cfg = parse_config(config(fb.base_url, args.layers, cutoff, args.grace_factor))
    async with Stack(cfg) as stack:
        t0 = time.perf_counter()
        results = await run_many(stack, args.queries, args.concurrency)
        wall = time.perf_counter() - t0
    lat = [r.latency_s for r in results]
    dropped = sum(1 for r in results for layer in r.layers for m in layer.members if m.cancelled)
    return lat, dropped, wall


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", "-m", type=int, default=100, help="queries per variant")
    ap.add_argument("--concurrency", type=int, default=20, help="queries in flight at once")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--median", type=float, default=0.2, help="median time to first token, s")
    ap.add_argument("--sigma", type=float, default=0.8, help="lognormal sigma")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--grace-factor", type=float, default=0.5)
    args = ap.parse_args()
    fb = FakeBackend()
    fb.start_in_thread()
    try:
        rows = []
        for cutoff in (False, True):
            lat, dropped, wall = await measure(fb, args, cutoff)
            rows.append((cutoff, lat, dropped, wall))
        total = args.queries * args.layers * 6
        print(
            f"{args.queries} queries x ({args.layers} layers x 6 + agg), lognormal "
            f"median={args.median}s sigma={args.sigma} seed={args.seed}, "
            f"concurrency {args.concurrency}"
        )
        print(f"{'variant':<22} {'p50 s':>7} {'p95 s':>7} {'mean s':>7} {'dropped':>12}")
        for cutoff, lat, dropped, _wall in rows:
            name = f"cut-off (gf={args.grace_factor})" if cutoff else "wait for all"
            print(
                f"{name:<22} {pct(lat, 50):>7.3f} {pct(lat, 95):>7.3f} "
                f"{statistics.fmean(lat):>7.3f} {dropped:>5}/{total:<6}"
            )
        base95, cut95 = pct(rows[0][1], 95), pct(rows[1][1], 95)
        print(f"p95 reduction with cut-off: {100 * (1 - cut95 / base95):.1f}% (target >= 40%)")
    finally:
        fb.stop()


if __name__ == "__main__":
    asyncio.run(main())
