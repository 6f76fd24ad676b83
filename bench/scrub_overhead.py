"""What scrubbing configured keys from member output costs, side by side in one run.

``ScrubbingModel`` (issue 27 item 4) wraps every member model of a stack whenever the environment
holds a key: each streamed chunk is searched for every key value and, at its end, for the start
of one (held back until the next chunk decides). This streams CHUNKS chunks of a few characters,
as a model's tokens arrive, through the bare model and through the wrapper with KEYS keys, and
prints the time per chunk of each and their difference. Text that contains key prefixes (the
worst case: tails are held back often) is measured too.

    .venv/bin/python bench/scrub_overhead.py
    .venv/bin/python bench/scrub_overhead.py --chunks 200000 --keys 1 3 10
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator

from moakit.models.base import ChatRequest, Chunk, Model
from moakit.models.wrappers import ScrubbingModel

REQUEST = ChatRequest(messages=[{"role": "user", "content": "hi"}])


class Tokens(Model):
    name = "tokens"

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        for piece in self.pieces:
            yield Chunk(text=piece)
        yield Chunk(finish_reason="stop")


async def per_chunk_us(model: Model, chunks: int) -> float:
    started = time.perf_counter()
    async for _ in model.stream(REQUEST):
        pass
    return (time.perf_counter() - started) / chunks * 1e6


def keys(n: int) -> list[str]:
    return [f"sk-proj-{i:02d}" + "x7Qm" * 10 for i in range(n)]


async def main(chunks: int, key_counts: list[int], repeats: int) -> None:
    prose = [" the", " answer", " is", " eighteen", ",", " because"] * (chunks // 6)
    # Every chunk ends in "s" or "sk": the start of every key, so a tail is held each time.
    prefixes = [" risks", " ask", " tasks", " sk"] * (chunks // 4)
    print(f"{chunks} chunks per stream, median of {repeats} runs (µs per chunk)")
    print(f"{'text':8} {'keys':>4} {'bare':>7} {'scrubbed':>9} {'added':>7}")
    for label, pieces in (("prose", prose), ("prefixes", prefixes)):
        for n in key_counts:
            bare, scrubbed = [], []
            for _ in range(repeats):
                bare.append(await per_chunk_us(Tokens(pieces), len(pieces)))
                wrapped = ScrubbingModel(Tokens(pieces), keys(n))
                scrubbed.append(await per_chunk_us(wrapped, len(pieces)))
            b, s = sorted(bare)[repeats // 2], sorted(scrubbed)[repeats // 2]
            print(f"{label:8} {n:>4} {b:7.2f} {s:9.2f} {s - b:7.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=60_000)
    parser.add_argument("--keys", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.chunks, args.keys, args.repeats))
