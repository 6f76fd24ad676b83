"""A layer of 3 samples of one embedded model: batched (one llama.cpp batch) vs one after another.

For each prompt (a short question, and the same question carrying ~1,000 tokens of references as a
layer-2 member sees it), in one run, side by side:

* sequential: the 3 members one after another, as a lock around the context would run them;
* one:        the slowest of those members alone (the unit of the target: sampled answers differ
              in length, and a layer can never finish before its slowest member);
* batched:    the 3 members started together: one decode step per token for all of them, the
              shared prompt prefix decoded once and copied to the other two.

Each row prints wall time, prompt tokens the model decoded, tokens generated and generated
tokens/s. The prompt asks for a long answer so that most samples run to ``--max-tokens``.
Target: batched ≤ 1.5 × one.

    .venv/bin/python bench/local_batch.py                       # qwen2.5-coder-0.5b, 64 tokens
    .venv/bin/python bench/local_batch.py --model smollm2-135m --max-tokens 128
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass

from moakit.models.base import ChatRequest
from moakit.models.local import LocalModel
from moakit.models.local.runtime import shared_runtime
from moakit.prompts import inject_references

QUESTION = "Write a long, detailed essay on why mixtures of language models beat a single model."
REFERENCE = (
    "Mixture-of-Agents layers several language models: each proposer answers the question, and "
    "an aggregator reads every answer before writing its own. The answers differ in what they get "
    "right, so reading them together lets a model correct one with another, fill gaps, and "
    "notice claims that only one proposer makes. Ensembles in classic machine learning work for "
    "the same reason: errors that are not correlated cancel when predictions are combined. "
)


@dataclass
class Row:
    wall_s: float
    prompt_evaluated: int
    generated: int

    def line(self, name: str, unit: float) -> str:
        return (
            f"  {name:<11}{self.wall_s:7.2f} s  {self.wall_s / unit:5.2f}x one   "
            f"prompt decoded {self.prompt_evaluated:5d}   generated {self.generated:4d}   "
            f"{self.generated / self.wall_s:6.1f} tok/s"
        )


async def measure(model: LocalModel, requests: list[ChatRequest]) -> Row:
    """All of ``requests`` started together."""
    stats = shared_runtime(model.key).scheduler.stats
    evaluated, generated = stats.prompt_tokens_evaluated, stats.tokens_generated
    start = time.perf_counter()
    await asyncio.gather(*(model.complete(r) for r in requests))
    wall = time.perf_counter() - start
    return Row(wall, stats.prompt_tokens_evaluated - evaluated, stats.tokens_generated - generated)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--references", type=int, default=3, help="references in the long prompt")
    args = parser.parse_args()
    model = LocalModel(args.model, {"n_ctx": 4096, "n_seq_max": 4})
    await model.load()
    await model.complete(ChatRequest([{"role": "user", "content": "Hi"}], max_tokens=4))
    plain = [{"role": "user", "content": QUESTION}]
    refs = [f"(answer {i}) " + REFERENCE * 3 for i in range(1, args.references + 1)]
    prompts = {"short prompt": plain, "references prompt": inject_references(plain, refs)}
    threads = os.environ.get("MOAKIT_LLAMA_THREADS", str(os.cpu_count()))
    print(f"{args.model}, 3 samples x {args.max_tokens} tokens, {threads} threads")
    for name, messages in prompts.items():
        requests = [
            ChatRequest(messages, temperature=0.7 + 0.1 * i, seed=1 + i, max_tokens=args.max_tokens)
            for i in range(3)
        ]
        n_prompt = (await model.complete(ChatRequest(messages, max_tokens=1))).usage.prompt_tokens
        alone = [await measure(model, [r]) for r in requests]
        one = max(alone, key=lambda row: row.wall_s)
        sequential = Row(
            sum(r.wall_s for r in alone),
            sum(r.prompt_evaluated for r in alone),
            sum(r.generated for r in alone),
        )
        batched = await measure(model, requests)
        print(f"{name} ({n_prompt} tokens):")
        for label, row in (("one", one), ("sequential", sequential), ("batched", batched)):
            print(row.line(label, one.wall_s))
        print(
            f"  batched / one = {batched.wall_s / one.wall_s:.2f} (target <= 1.5); "
            f"sequential / batched = {sequential.wall_s / batched.wall_s:.2f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
