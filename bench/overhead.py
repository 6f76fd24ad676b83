"""Engine overhead vs the critical-path lower bound, measured side by side in one run.

A stack of LAYERS proposer layers x 6 proposers + aggregator; every call is answered after a fixed
latency L. A query can never finish faster than the critical path, (LAYERS + 1) x L, so
wall time / lower bound is the overhead. Three ways of answering, each in the same run:

* http:   the fake OpenAI-compatible backend (`moa fake-backend`) in its own process, spoken to
          over loopback HTTP by the real openai-compatible adapter: what a deployment sees.
* engine: in-process members that sleep L and answer: the engine alone, no HTTP.
* naive:  the http members awaited one after another, as the paper's evaluation script does.

For the http rows it also prints the CPU time per call of this process (engine + adapter) and
of the backend process: on a 2-core machine that CPU, not the engine's scheduling, is what
bounds the ratio at high concurrency.

    .venv/bin/python bench/overhead.py                               # L=0.2 s; 1 and 200 queries
    .venv/bin/python bench/overhead.py --latency 0.2 1 --concurrency 1 50 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import AsyncIterator
from statistics import median
from typing import Any

from _procs import fake_backend, own_cpu_s, process_cpu_s
from moakit import QueryFailed, Stack, parse_config
from moakit.models.base import ChatRequest, Chunk, Model, Usage
from moakit.prompts import inject_references

PROPOSERS = 6


def config(base_url: str, layers: int) -> dict[str, object]:
    members = [{"model": f"p{i}"} for i in range(PROPOSERS)]
    return {
        "defaults": {"base_url": base_url, "max_tokens": 12, "retries": 0},
        "layers": [members] * layers,
        "aggregator": {"model": "agg"},
        # The paper's block, as the figures before fencing became the default were measured:
        # the fenced formatter's per-reference rewriting (~15 µs a reference here) is the
        # defense's cost, not the engine's (bench/robustness.py measures defenses).
        "references": {"formatter": "paper"},
    }


async def concurrent(stack: Stack, n: int) -> float:
    t0 = time.perf_counter()
    outcomes = await asyncio.gather(
        *(stack.run([{"role": "user", "content": f"q{i}"}]) for i in range(n)),
        return_exceptions=True,
    )
    wall = time.perf_counter() - t0
    # Every query has finished either way, so a failed round leaves nothing running behind.
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return wall


async def sequential(stack: Stack, layers: int) -> float:
    """Naive baseline: the same calls, awaited one by one."""
    conv: list[Any] = [{"role": "user", "content": "q"}]
    t0 = time.perf_counter()
    refs: list[str] = []
    for li in range(layers):
        new = []
        for spec in stack.config.layer_members(li):
            model = stack.model_for(spec)
            c = await model.complete(ChatRequest(messages=inject_references(conv, refs)))
            new.append(c.text)
        refs = new
    agg = stack.config.aggregators()[0]
    await stack.model_for(agg).complete(ChatRequest(messages=inject_references(conv, refs)))
    return time.perf_counter() - t0


class SleepModel(Model):
    """Answers 12 words in one chunk after sleeping L: as little work as a member can be, so
    the engine column measures the engine and not a test double's chunking."""

    def __init__(self, name: str, latency: float) -> None:
        self.name = name
        self.latency = latency

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        await asyncio.sleep(self.latency)
        yield Chunk(text=ANSWER, finish_reason="stop", usage=USAGE)


ANSWER = " ".join(["word"] * 12)
USAGE = Usage(prompt_tokens=10, completion_tokens=12)


def sleeping_models(latency: float) -> dict[str, Model]:
    names = [f"p{i}" for i in range(PROPOSERS)] + ["agg"]
    return {n: SleepModel(n, latency) for n in names}


async def run_latency(latency: float, layers: int, concurrency: list[int], repeats: int) -> None:
    bound = (layers + 1) * latency
    print(f"\nL = {latency}s, lower bound {bound:.3f}s ({layers} layers x 6 + agg)")
    print(f"{'queries':>8} {'calls':>6} {'http':>7} {'engine':>7}   {'cpu/call: ours':>15} backend")
    with fake_backend("--ttft", str(latency), "--tokens", "12") as (base_url, pid):
        cfg = parse_config(config(base_url, layers))
        async with (
            Stack(cfg) as http,
            Stack(cfg, models=sleeping_models(latency)) as engine,
        ):
            await concurrent(http, 1)  # warm connections
            for n in concurrency:
                calls = n * (layers * PROPOSERS + 1)
                engine_walls, http_walls, ours, theirs = [], [], [], []
                failures: list[str] = []
                for _ in range(repeats):
                    engine_walls.append(await concurrent(engine, n))
                    b0, o0 = process_cpu_s(pid), own_cpu_s()
                    try:
                        http_walls.append(await concurrent(http, n))
                    except QueryFailed as exc:
                        # retries = 0 here, so one failed call fails its query; report it and
                        # keep the engine column, which does not depend on HTTP.
                        failures.append(str(exc)[:160])
                    ours.append(own_cpu_s() - o0)
                    theirs.append(process_cpu_s(pid) - b0)
                http_cell = f"{median(http_walls) / bound:>7.3f}" if http_walls else "   fail"
                print(
                    f"{n:>8} {calls:>6} {http_cell}"
                    f" {median(engine_walls) / bound:>7.3f}"
                    f"   {median(ours) / calls * 1e3:>12.2f} ms"
                    f" {median(theirs) / calls * 1e3:>5.2f} ms"
                )
                for failure in failures:
                    print(f"         http round failed: {failure}")
            naive = await sequential(http, layers)
            print(f"naive sequential (http), 1 query: {naive:.3f}s, ratio {naive / bound:.2f}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--latency", type=float, nargs="+", default=[0.2])
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 200])
    ap.add_argument("--repeats", type=int, default=3, help="runs per cell; the median is shown")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs; ratios are wall time / lower bound (target <=1.05 at 1 query,")
    print("<=1.15 at 200); http = real HTTP to a backend process, engine = in-process members;")
    print(f"each cell is the median of --repeats={args.repeats} runs")
    for latency in args.latency:
        await run_latency(latency, args.layers, args.concurrency, args.repeats)


if __name__ == "__main__":
    asyncio.run(main())
