"""What `moa serve` adds on top of calling the engine directly, measured side by side in one run.

Three processes on loopback: the fake OpenAI-compatible backend (`moa fake-backend`, fixed
latency), `moa serve` with a stack pointing at it, and this script, which is the client.
The stack is 1 layer x 3 proposers + an aggregator whose answer streams token by token.

1. Added latency: N queries, one at a time, alternating between `Stack.run` in this process
   (direct) and a streaming POST to the server (served), both against the same backend.
   Prints p50/p99 end-to-end latency of each and the difference (the server's added latency).
2. Load: C concurrent streaming clients, each sending queries back to back for a fixed count.
   Prints throughput, errors, p50/p99 latency and time to first content byte; then the same
   load on the engine directly, for comparison.

    .venv/bin/python bench/server_overhead.py                     # N=200, C=200
    .venv/bin/python bench/server_overhead.py -n 100 -c 200 --per-client 3 --latency 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from _procs import MOA, child, fake_backend, process_cpu_s
from moakit import Stack, parse_config
from moakit.events import TextDelta

QUESTION = [{"role": "user", "content": "What does a mixture of agents add?"}]


def stack_toml(base_url: str) -> str:
    return f"""
name = "bench"
[defaults]
provider = "openai"
base_url = "{base_url}"
max_tokens = 16
retries = 0
[[layers]]
members = [{{model = "p1"}}, {{model = "p2"}}, {{model = "p3"}}]
[aggregator]
model = "agg"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_ready(session: aiohttp.ClientSession, url: str, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            async with session.get(url) as r:
                if r.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not ready after {within_s}s")
        await asyncio.sleep(0.1)


@dataclass
class Sample:
    latency_s: float
    ttfb_s: float | None = None
    error: str | None = None


@dataclass
class Samples:
    items: list[Sample] = field(default_factory=list)

    def ok(self) -> list[Sample]:
        return [s for s in self.items if s.error is None]

    def errors(self) -> list[str]:
        return [s.error for s in self.items if s.error is not None]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def served_query(session: aiohttp.ClientSession, url: str) -> Sample:
    """One streaming chat completion; latency to `data: [DONE]`, ttfb to the first content."""
    body = {"model": "bench", "messages": QUESTION, "stream": True}
    t0 = time.perf_counter()
    ttfb: float | None = None
    try:
        async with session.post(url, json=body) as r:
            if r.status != 200:
                return Sample(time.perf_counter() - t0, error=f"HTTP {r.status}")
            done = False
            async for raw in r.content:
                line = raw.strip()
                if not line.startswith(b"data: "):
                    continue
                if line == b"data: [DONE]":
                    done = True
                    break
                event = json.loads(line[6:])
                if "error" in event:
                    return Sample(time.perf_counter() - t0, error=event["error"]["message"])
                delta = event["choices"][0]["delta"] if event.get("choices") else {}
                if ttfb is None and delta.get("content"):
                    ttfb = time.perf_counter() - t0
            if not done:
                return Sample(time.perf_counter() - t0, error="stream ended without [DONE]")
    except (TimeoutError, aiohttp.ClientError) as exc:
        return Sample(time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")
    return Sample(time.perf_counter() - t0, ttfb)


async def direct_query(stack: Stack) -> Sample:
    t0 = time.perf_counter()
    ttfb: float | None = None
    try:
        # What the server consumes, minus HTTP: the same event stream.
        async for event in stack.events(QUESTION):
            if ttfb is None and isinstance(event, TextDelta) and event.text:
                ttfb = time.perf_counter() - t0
    except Exception as exc:
        return Sample(time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")
    return Sample(time.perf_counter() - t0, ttfb)


def describe(name: str, samples: Samples, wall_s: float | None = None) -> None:
    ok = samples.ok()
    lat = [s.latency_s * 1000 for s in ok]
    ttfb = [s.ttfb_s * 1000 for s in ok if s.ttfb_s is not None]
    line = (
        f"{name:>8}: {len(ok):>5} ok {len(samples.errors()):>4} errors   "
        f"latency p50 {pct(lat, 50):7.1f} ms  p99 {pct(lat, 99):7.1f} ms   "
        f"first content p50 {pct(ttfb, 50):7.1f} ms  p99 {pct(ttfb, 99):7.1f} ms"
    )
    if wall_s is not None:
        line += f"   {len(ok) / wall_s:6.1f} queries/s"
    print(line)
    for error in sorted(set(samples.errors()))[:5]:
        print(f"          error: {error}")


async def added_latency(
    session: aiohttp.ClientSession, url: str, stack: Stack, n: int
) -> tuple[Samples, Samples]:
    direct, served = Samples(), Samples()
    for _ in range(5):  # warm both paths (connections, first-use imports)
        await direct_query(stack)
        await served_query(session, url)
    for i in range(n):
        # Alternate which goes first so drift in the machine's load hits both alike.
        if i % 2:
            direct.items.append(await direct_query(stack))
            served.items.append(await served_query(session, url))
        else:
            served.items.append(await served_query(session, url))
            direct.items.append(await direct_query(stack))
    return direct, served


async def load(clients: int, per_client: int, one: object) -> tuple[Samples, float]:
    samples = Samples()

    async def client() -> None:
        for _ in range(per_client):
            samples.items.append(await one())  # type: ignore[operator]

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return samples, time.perf_counter() - t0


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-n", "--queries", type=int, default=200, help="sequential queries per path")
    ap.add_argument("-c", "--clients", type=int, default=200, help="concurrent streaming clients")
    ap.add_argument("--per-client", type=int, default=3, help="queries per concurrent client")
    ap.add_argument("--latency", type=float, default=0.1, help="backend time to first token, s")
    ap.add_argument("--per-token", type=float, default=0.005, help="backend delay per token, s")
    args = ap.parse_args()

    backend_flags = ["--ttft", str(args.latency), "--per-token", str(args.per_token)]
    with (
        fake_backend(*backend_flags, "--tokens", "16") as (base_url, _),
        tempfile.TemporaryDirectory() as tmp,
    ):
        config_path = Path(tmp) / "bench.toml"
        config_path.write_text(stack_toml(base_url))
        port = free_port()
        serve_cmd = [MOA, "serve", "--port", str(port), "--config", str(config_path)]
        serve_cmd += ["--max-concurrent", str(args.clients * 2), "--log-level", "warning"]
        with child(serve_cmd) as server:
            root = f"http://127.0.0.1:{port}"
            url = f"{root}/v1/chat/completions"
            connector = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=120)
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                Stack(parse_config(tomllib.loads(stack_toml(base_url)))) as stack,
            ):
                await wait_ready(session, f"{root}/health")
                print(
                    f"stack: 1 layer x 3 proposers + streamed aggregator; backend ttft "
                    f"{args.latency * 1000:.0f} ms + 16 tokens x {args.per_token * 1000:.0f} ms; "
                    f"{os.cpu_count()} CPUs"
                )
                print(f"\n1) one query at a time, {args.queries} per path, interleaved")
                direct, served = await added_latency(session, url, stack, args.queries)
                describe("direct", direct)
                describe("served", served)
                d = [s.latency_s * 1000 for s in direct.ok()]
                s = [s.latency_s * 1000 for s in served.ok()]
                print(
                    f"   added by the server: p50 {pct(s, 50) - pct(d, 50):+.2f} ms, "
                    f"p99 {pct(s, 99) - pct(d, 99):+.2f} ms "
                    f"(mean {statistics.fmean(s) - statistics.fmean(d):+.2f} ms)"
                )

                total = args.clients * args.per_client
                print(f"\n2) {args.clients} concurrent streaming clients, {total} queries")
                c0 = process_cpu_s(server.pid)
                served_load, wall = await load(
                    args.clients, args.per_client, lambda: served_query(session, url)
                )
                server_cpu = process_cpu_s(server.pid) - c0
                describe("served", served_load, wall)
                direct_load, dwall = await load(
                    args.clients, args.per_client, lambda: direct_query(stack)
                )
                describe("direct", direct_load, dwall)
                done = max(1, len(served_load.ok()))
                print(f"   server process CPU: {server_cpu / done * 1000:.2f} ms per query")


if __name__ == "__main__":
    asyncio.run(main())
