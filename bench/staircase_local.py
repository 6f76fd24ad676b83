"""Staircase vs wait-for-all on the embedded model: time to first token and total time of the
`local-staircase` preset's stack run layered (three batched Qwen2.5-Coder-0.5B samples, then
the aggregator; what the `local` preset was before it became a cascade) against the preset
itself (the aggregator starting on the samples' first chunk and continuing its own answer by
prefill into the reused KV stream), side by side in one run.

Queries are GSM8K word problems (items past the first 100, so not the eval's) and alternate
between the two strategies, so load noise hits both alike. ``--layers 2`` repeats the proposer
layer (layer 2 continues its own answers too). The first query of each stack loads the model
and is not counted.

    .venv/bin/python bench/staircase_local.py --queries 3
    .venv/bin/python bench/staircase_local.py --queries 3 --chunk 32
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from contextlib import aclosing
from pathlib import Path

from moakit import Stack, parse_config
from moakit.config import StackConfig, load_preset
from moakit.eval.datasets import default_data_dir, load_dataset
from moakit.events import RunFinished, TextDelta

DATA = default_data_dir()  # the benchmark files shipped with moakit, or $MOAKIT_EVAL_DATA


def stack_config(
    preset: str, layers: int, chunk: int | None, *, layered: bool = False
) -> StackConfig:
    data = load_preset(preset).model_dump(exclude_unset=True)
    data["layers"] = data["layers"] * layers
    if layered:  # the same stack, waiting for every layer
        data.pop("staircase", None)
        data["strategy"] = "layered"
    if chunk is not None and "staircase" in data:
        data["staircase"]["chunk_tokens"] = chunk
    return parse_config(data, source=f"{preset} ({layers} layers)")


async def one_query(stack: Stack, prompt: str) -> tuple[float, float, int, int]:
    """(TTFT, total seconds, answer words, aggregator steps) of one streamed query."""
    t0 = time.perf_counter()
    ttft: float | None = None
    words = steps = 0
    async with aclosing(stack.events([{"role": "user", "content": prompt}])) as events:
        async for event in events:
            if isinstance(event, TextDelta) and ttft is None:
                ttft = time.perf_counter() - t0
            elif isinstance(event, RunFinished):
                words = len(event.result.final.split())
                agg = event.result.aggregator
                steps = len(agg.steps) if agg and agg.steps else 1
    assert ttft is not None, "the stack streamed no text"
    return ttft, time.perf_counter() - t0, words, steps


async def main(args: argparse.Namespace) -> None:
    items = load_dataset("gsm8k", data_dir=args.data_dir, offset=100, limit=args.queries + 1)
    prompts = [item.turns[0] for item in items.items]
    stacks = {
        "wait-for-all": Stack(stack_config("local-staircase", args.layers, None, layered=True)),
        "staircase": Stack(stack_config("local-staircase", args.layers, args.chunk)),
    }
    chunk = stacks["staircase"].config.staircase.chunk_tokens
    print(
        f"embedded Qwen2.5-Coder-0.5B, {args.layers} proposer layer(s) x 3 batched samples, "
        f"staircase chunk {chunk} tokens; median of {args.queries} alternating GSM8K queries "
        "(after one warm-up query per stack)\n"
    )
    rows: dict[str, list[tuple[float, float, int, int]]] = {name: [] for name in stacks}
    for i, prompt in enumerate(prompts):
        for name, stack in stacks.items():
            sample = await one_query(stack, prompt)
            if i:  # the first query loads the model
                rows[name].append(sample)
                print(
                    f"  query {i} {name:>12}: TTFT {sample[0]:6.1f} s, total {sample[1]:6.1f} s,"
                    f" {sample[2]} words, {sample[3]} aggregator step(s)"
                )
    for stack in stacks.values():
        await stack.aclose()
    med = {
        name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
        for name, rs in rows.items()
    }
    (ta, wa), (ts, ws) = med["wait-for-all"], med["staircase"]
    print(
        f"\nTTFT   wait-for-all {ta:6.1f} s  staircase {ts:6.1f} s  cut {1 - ts / ta:4.0%}"
        f"\ntotal  wait-for-all {wa:6.1f} s  staircase {ws:6.1f} s  ratio {ws / wa:4.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=3)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=None, help="Staircase chunk in tokens.")
    parser.add_argument("--data-dir", type=Path, default=DATA)
    asyncio.run(main(parser.parse_args()))
