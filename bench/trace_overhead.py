"""What recording a run into the trace store costs, measured side by side in one run.

The same stack (LAYERS x 6 in-process proposers that sleep L and answer, + an aggregator) answers
N concurrent queries, alternately untraced (``stack.run``) and traced (``traced_run`` into a
``TraceStore`` on a temporary file), `--repeats` times each. Printed per mode: the median wall
time, traced / untraced as a ratio, the process CPU per query, and the worst event-loop lag a
5 ms ticker saw (recording must never block the loop: SQLite writes happen in the store's
writer thread).

With ``--http`` the members are the fake OpenAI-compatible backend in its own process, spoken
to over loopback by the real adapter (what a deployment's event loop also has to do).

    .venv/bin/python bench/trace_overhead.py                       # L=0.05 s, 1 and 200 queries
    .venv/bin/python bench/trace_overhead.py --http --latency 0.2 --concurrency 1 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from statistics import median

from _procs import fake_backend
from moakit import Stack, parse_config
from moakit.models.base import ChatRequest, Chunk, Model, Usage
from moakit.trace import TraceRecorder, TraceStore, traced_run

PROPOSERS = 6


class Sleeper(Model):
    def __init__(self, name: str, latency: float) -> None:
        self.name = name
        self.latency = latency

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        await asyncio.sleep(self.latency)
        yield Chunk(text=f"{self.name} answers with a few words of text")
        yield Chunk(finish_reason="stop", usage=Usage(prompt_tokens=20, completion_tokens=8))


def make_stack(layers: int, latency: float, base_url: str | None = None) -> Stack:
    names = [f"p{i}" for i in range(PROPOSERS)]
    config = parse_config(
        {
            "name": "bench",
            "defaults": {"base_url": base_url or "http://127.0.0.1:9/v1", "retries": 0},
            "layers": [[{"model": n} for n in names]] * layers,
            "aggregator": {"model": "agg"},
        }
    )
    if base_url is not None:
        return Stack(config)
    models: dict[str, Model] = {n: Sleeper(n, latency) for n in [*names, "agg"]}
    return Stack(config, models=models)


async def ticker(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append(time.perf_counter() - t - 0.005)


async def once(stack: Stack, n: int, recorder: TraceRecorder | None) -> tuple[float, float, float]:
    lags: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(lags, stop))
    cpu0, t0 = time.process_time(), time.perf_counter()
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(n)]
    if recorder is None:
        await asyncio.gather(*(stack.run(c) for c in convs))
    else:
        await asyncio.gather(*(traced_run(stack, c, recorder) for c in convs))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stop.set()
    await tick
    return wall, cpu / n, max(lags, default=0.0)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 200])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--http", action="store_true", help="members over HTTP (fake backend)")
    args = parser.parse_args()
    with contextlib.ExitStack() as exits:
        base_url = None
        if args.http:
            flags = ("--ttft", str(args.latency), "--tokens", "12")
            base_url, _ = exits.enter_context(fake_backend(*flags))
        await run(args, base_url)


async def run(args: argparse.Namespace, base_url: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = TraceStore(Path(tmp) / "bench.db")
        async with make_stack(args.layers, args.latency, base_url) as stack:
            recorder = TraceRecorder(store, stack=stack, source="bench")
            where = "HTTP fake backend" if base_url else "in-process members"
            print(f"L={args.latency}s, {args.layers} layers x {PROPOSERS} + aggregator, {where}")
            print(
                "queries | untraced wall | traced wall | ratio | CPU/query (ms) off, on"
                " | max loop lag (ms) off, on"
            )
            for n in args.concurrency:
                rows: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
                for _ in range(args.repeats):  # alternate, so drift hits both modes alike
                    rows[False].append(await once(stack, n, None))
                    rows[True].append(await once(stack, n, recorder))
                    store.flush(60)
                off = [median(x[i] for x in rows[False]) for i in range(3)]
                on = [median(x[i] for x in rows[True]) for i in range(3)]
                print(
                    f"{n:7d} | {off[0]:12.3f}s | {on[0]:10.3f}s | {on[0] / off[0]:5.3f} |"
                    f" {off[1] * 1e3:6.2f}, {on[1] * 1e3:6.2f}"
                    f" | {off[2] * 1e3:6.1f}, {on[2] * 1e3:6.1f}"
                )
        stats = store.stats()
        print(
            f"recorded {stats.queries} queries, {stats.calls} calls, "
            f"{stats.file_bytes / 1e6:.1f} MB"
        )
        store.close()


if __name__ == "__main__":
    asyncio.run(main())
