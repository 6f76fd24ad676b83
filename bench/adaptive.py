"""Adaptive policies against full MoA, on scripted agreement: calls, latency p50/p95 and
accuracy per policy, side by side in one run.

A 2-layer x 3-proposer stack plus an aggregator, in-process. Each proposer call sleeps a
latency drawn like the fault backend's (``LatencySampler``: lognormal around ``--ttft``, seeded
per model) and answers the query's right number with probability ``--agree`` (seeded per
query and member), else a wrong one; the aggregator answers the most common number among its
references. Policies: ``full`` (the whole stack every time), ``exit`` (early exit on the same
final answer after layer 1), ``cascade`` (two proposers first, the third only if they
disagree). Timings are this process's, so compare the columns of one run, not runs.

    .venv/bin/python bench/adaptive.py --queries 200 --agree 0.5 0.8 0.95
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import time
from collections import Counter
from typing import Any

from moakit import Stack, parse_config
from moakit.messages import ChatRequest
from moakit.testing.fake_backend import Latency, LatencySampler
from moakit.testing.models import FunctionModel

PROPOSERS = ("p1", "p2", "p3")
POLICIES: dict[str, dict[str, Any]] = {
    "full": {},
    "exit": {"early_exit": {"rule": "answer"}},
    "cascade": {"early_exit": {"rule": "answer"}, "cascade": {"first": 2, "order": "position"}},
}


def stack_config(policy: str) -> Any:
    return parse_config(
        {
            "layers": [[{"model": p} for p in PROPOSERS]] * 2,
            "aggregator": {"model": "agg"},
            "references": {"formatter": "paper"},
            "adaptive": POLICIES[policy],
        }
    )


def models(agree: float, ttft: float, seed: int) -> dict[str, FunctionModel]:
    def proposer(name: str) -> FunctionModel:
        sampler = LatencySampler(Latency(ttft_s=ttft, distribution="lognormal", sigma=0.5), name)

        async def answer(request: ChatRequest) -> str:
            await asyncio.sleep(sampler.ttft())
            query = int(request.messages[-1].text.split()[-1])
            draw = random.Random(f"{seed}:{query}:{name}:{len(request.messages)}").random()
            return f"#### {query if draw < agree else query + 1 + int(draw * 5)}"

        return FunctionModel(answer, name=name)

    agg_sampler = LatencySampler(Latency(ttft_s=ttft, distribution="lognormal", sigma=0.5), "agg")

    async def aggregate(request: ChatRequest) -> str:
        await asyncio.sleep(agg_sampler.ttft())
        numbers = re.findall(r"#### (\d+)", request.messages[0].text)
        return f"#### {Counter(numbers).most_common(1)[0][0]}" if numbers else "#### 0"

    return {**{p: proposer(p) for p in PROPOSERS}, "agg": FunctionModel(aggregate, name="agg")}


async def run_policy(policy: str, agree: float, queries: int, ttft: float) -> dict[str, float]:
    calls, latencies, right = [], [], 0
    semaphore = asyncio.Semaphore(32)
    async with Stack(stack_config(policy), models=models(agree, ttft, seed=7)) as stack:

        async def one(q: int) -> None:
            nonlocal right
            async with semaphore:
                t0 = time.perf_counter()
                result = await stack.run([{"role": "user", "content": f"query {q}"}])
                latencies.append(time.perf_counter() - t0)
                calls.append(result.llm_calls)
                right += result.final.strip() == f"#### {q}"

        await asyncio.gather(*(one(q) for q in range(queries)))
    latencies.sort()
    return {
        "calls": statistics.mean(calls),
        "p50": latencies[len(latencies) // 2],
        "p95": latencies[int(len(latencies) * 0.95)],
        "accuracy": right / queries,
    }


async def main(queries: int, agrees: list[float], ttft: float) -> None:
    print(f"{queries} queries, 2 layers x 3 proposers + aggregator, ttft ~{ttft}s lognormal")
    print("agree | policy  | calls/query | vs full | p50 s | p95 s | accuracy")
    for agree in agrees:
        rows = {p: await run_policy(p, agree, queries, ttft) for p in POLICIES}
        for policy, r in rows.items():
            ratio = r["calls"] / rows["full"]["calls"]
            print(
                f"{agree:5.2f} | {policy:7} | {r['calls']:11.2f} | {ratio:7.2f} | "
                f"{r['p50']:5.3f} | {r['p95']:5.3f} | {r['accuracy']:.3f}"
            )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--agree", type=float, nargs="+", default=[0.5, 0.8, 0.95])
    ap.add_argument("--ttft", type=float, default=0.05)
    args = ap.parse_args()
    asyncio.run(main(args.queries, args.agree, args.ttft))
