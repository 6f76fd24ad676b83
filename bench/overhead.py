"""Engine overhead vs the critical-path lower bound, measured side by side in one run.

A stack of LAYERS proposer layers × 6 proposers + aggregator, every call answered by the fake
backend after a fixed latency L. Lower bound: (LAYERS + 1) × L. Also a naive baseline that calls
members one after another (as the paper's evaluation script does).

    .venv/bin/python bench/overhead.py --latency 0.2 --concurrency 1 50 200
"""

from __future__ import annotations

import argparse
import asyncio
import time

from moakit import Stack, parse_config
from moakit.models.base import ChatRequest
from moakit.prompts import inject_references
from moakit.testing.fake_backend import Behavior, FakeBackend, Latency


def config(base_url: str, layers: int) -> dict[str, object]:
    members = [{"model": f"p{i}"} for i in range(6)]
    return {
        "defaults": {"base_url": base_url, "max_tokens": 12, "retries": 0},
        "layers": [members] * layers,
        "aggregator": {"model": "agg"},
    }


async def concurrent(stack: Stack, n: int) -> float:
    t0 = time.perf_counter()
    await asyncio.gather(*(stack.run([{"role": "user", "content": f"q{i}"}]) for i in range(n)))
    return time.perf_counter() - t0


async def sequential(stack: Stack, layers: int) -> float:
    """Naive baseline: the same calls, awaited one by one."""
    conv = [{"role": "user", "content": "q"}]
    t0 = time.perf_counter()
    refs: list[str] = []
    for li in range(layers):
        new = []
        for spec in stack.config.layer_members(li):
            model = stack._model_for(spec)
            c = await model.complete(ChatRequest(messages=inject_references(conv, refs)))
            new.append(c.text)
        refs = new
    agg = stack.config.aggregators()[0]
    await stack._model_for(agg).complete(ChatRequest(messages=inject_references(conv, refs)))
    return time.perf_counter() - t0


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 200])
    args = ap.parse_args()
    fb = FakeBackend(default=Behavior(latency=Latency(ttft_s=args.latency)))
    fb.start_in_thread()
    try:
        bound = (args.layers + 1) * args.latency
        async with Stack(parse_config(config(fb.base_url, args.layers))) as stack:
            await concurrent(stack, 1)  # warm connections
            print(
                f"lower bound {bound:.3f}s ({args.layers} layers x 6 + agg, L={args.latency}s)"
            )
            print(f"{'queries':>8} {'wall s':>8} {'ratio':>7}")
            for n in args.concurrency:
                wall = await concurrent(stack, n)
                print(f"{n:>8} {wall:>8.3f} {wall / bound:>7.3f}")
            naive = await sequential(stack, args.layers)
            print(f"naive sequential, 1 query: {naive:.3f}s, ratio {naive / bound:.2f}")
    finally:
        fb.stop()


if __name__ == "__main__":
    asyncio.run(main())
