"""The engine column of ``overhead.py`` alone: 3 layers x 6 in-process members that sleep L plus
an aggregator, N queries at once, R rounds; prints the wall ratio to the lower bound and this
process's CPU per call. Run it on two checkouts, interleaved, to compare them:

    .venv/bin/python bench/engine_only.py
    (cd OTHER && PYTHONPATH=src $PWD/.venv/bin/python bench/engine_only.py)
"""

from __future__ import annotations

import argparse
import asyncio
import time

from moakit import Stack, parse_config
from overhead import PROPOSERS, concurrent, config, sleeping_models


async def main(queries: int, rounds: int, latency: float, layers: int) -> None:
    cfg = parse_config(config("http://127.0.0.1:9/v1", layers))  # never called
    bound = (layers + 1) * latency
    calls = queries * (layers * PROPOSERS + 1)
    async with Stack(cfg, models=sleeping_models(latency)) as engine:
        await concurrent(engine, 1)
        walls, cpus = [], []
        for _ in range(rounds):
            cpu0 = time.process_time()
            walls.append(await concurrent(engine, queries))
            cpus.append(time.process_time() - cpu0)
    walls.sort()
    cpus.sort()
    print(
        f"engine, {queries} queries: ratio median {walls[rounds // 2] / bound:.3f} "
        f"min {walls[0] / bound:.3f}; CPU per call median {cpus[rounds // 2] / calls * 1e3:.3f} ms"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--layers", type=int, default=3)
    args = ap.parse_args()
    asyncio.run(main(args.queries, args.rounds, args.latency, args.layers))
