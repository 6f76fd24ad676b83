"""Staircase (chunk-wise) aggregation vs wait-for-all (the layered strategy): time to first token
and total time, for 1, 2 and 3 proposer layers, side by side in one run.

Every member streams from the fake backend like a real server: ``--ttft`` before the first token
of every request (a staircase step is a new request, so it pays it again), plus
``--prompt-per-token`` per prompt word (reading the prompt; no prefix cache, as the references
sit before the conversation), then one token every ``--per-token`` seconds, answers of
``--tokens`` tokens. The aggregator and the members above
layer 1 continue their partial answers with vLLM-style prefill (``continue_final_message``).
Queries alternate between the two strategies, so load noise hits both alike.

    .venv/bin/python bench/staircase.py --queries 3
    .venv/bin/python bench/staircase.py --queries 3 --prompt-per-token 0.00005
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from contextlib import aclosing
from typing import Any

from moakit import Stack, parse_config
from moakit.events import RunFinished, TextDelta
from moakit.testing.fake_backend import Behavior, FakeBackend, Latency


def config(base_url: str, layers: int, strategy: str, args: argparse.Namespace) -> Any:
    members = [{"model": f"p{i}"} for i in range(args.members)]
    return parse_config(
        {
            "defaults": {
                "base_url": base_url,
                "retries": 0,
                "timeout_s": 120,
                "options": {"continue_final_message": True},
            },
            "layers": [members] * layers,
            "aggregator": {"model": "agg"},
            "strategy": strategy,
            "staircase": {"chunk_tokens": args.chunk, "schedule": args.schedule},
        }
    )


async def one_query(stack: Stack, i: int) -> tuple[float, float, int]:
    """(TTFT, total seconds, answer words) of one streamed query."""
    t0 = time.perf_counter()
    ttft: float | None = None
    words = 0
    async with aclosing(stack.events([{"role": "user", "content": f"q{i}"}])) as events:
        async for event in events:
            if isinstance(event, TextDelta) and ttft is None:
                ttft = time.perf_counter() - t0
            elif isinstance(event, RunFinished):
                words = len(event.result.final.split())
    total = time.perf_counter() - t0
    assert ttft is not None
    return ttft, total, words


async def main(args: argparse.Namespace) -> None:
    latency = Latency(
        ttft_s=args.ttft, per_token_s=args.per_token, prompt_per_token_s=args.prompt_per_token
    )
    behavior = Behavior(latency=latency, tokens=args.tokens)
    print(
        f"{args.members} proposers per layer, answers of {args.tokens} tokens, ttft "
        f"{args.ttft * 1000:.0f} ms per request + {args.prompt_per_token * 1e6:.0f} us per "
        f"prompt word, {args.per_token * 1000:.1f} ms per token; "
        f"staircase chunk {args.chunk} tokens ({args.schedule}); median of {args.queries} "
        "alternating queries per cell\n"
    )
    header = (
        f"{'layers':>6} | {'TTFT wait-all':>13} {'TTFT stair':>10} {'TTFT cut':>8} | "
        f"{'total wait-all':>14} {'total stair':>11} {'total ratio':>11} | agg steps"
    )
    print(header)
    print("-" * len(header))
    async with FakeBackend(default=behavior) as fb:
        for layers in args.layers:
            stacks = {
                s: Stack(config(fb.base_url, layers, s, args)) for s in ("layered", "staircase")
            }
            samples: dict[str, list[tuple[float, float, int]]] = {s: [] for s in stacks}
            for i in range(args.queries):
                for name, stack in stacks.items():
                    samples[name].append(await one_query(stack, i))
            for stack in stacks.values():
                await stack.aclose()
            med = {
                name: (
                    statistics.median(s[0] for s in rows),
                    statistics.median(s[1] for s in rows),
                )
                for name, rows in samples.items()
            }
            assert all(r[2] == args.tokens for rows in samples.values() for r in rows)
            (ta, wa), (ts, ws) = med["layered"], med["staircase"]
            # The aggregator's requests per staircase query (the layered query makes one).
            agg_requests = (fb.stats.requests_by_model.get("agg", 0) - args.queries) / args.queries
            fb.stats._reset()
            print(
                f"{layers:>6} | {ta:>12.2f}s {ts:>9.2f}s {1 - ts / ta:>8.0%} | "
                f"{wa:>13.2f}s {ws:>10.2f}s {ws / wa:>11.2f} | {agg_requests:.0f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--ttft", type=float, default=0.05)
    parser.add_argument("--per-token", type=float, default=0.005)
    parser.add_argument(
        "--prompt-per-token", type=float, default=0.0, help="s per prompt word, every request"
    )
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--schedule", choices=["lockstep", "greedy"], default="lockstep")
    parser.add_argument("--queries", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
