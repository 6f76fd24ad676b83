"""BFCL's verdict on an answer's tool calls, by the ``bfcl-eval`` package's own checker
(``moakit.eval.bfcl``): right or wrong, with the checker's error type kept in the detail."""

from __future__ import annotations

import json
from collections.abc import Sequence

from moakit.eval.datasets import Item
from moakit.eval.scorers.base import Score, Scorer
from moakit.messages import ToolCall


class BFCLScorer(Scorer):
    name = "bfcl"
    # Right/wrong per item: accuracy with a confidence interval, McNemar between systems.
    closed_form = True
    scores_tool_calls = True

    async def score(self, item: Item, answers: Sequence[str]) -> Score:
        """An answer in text alone made no call."""
        return await self.score_calls(item, answers, ())

    async def score_calls(
        self, item: Item, answers: Sequence[str], tool_calls: Sequence[ToolCall]
    ) -> Score:
        from moakit.eval import bfcl

        category = item.meta.get("category")
        if not isinstance(category, str) or category not in bfcl.CATEGORIES.values():
            return Score(error=f"item {item.id} is not a BFCL item (no known category)")
        verdict = bfcl.check(
            category, item.meta["functions"], item.meta.get("ground_truth"), tool_calls
        )
        detail: dict[str, object] = {"calls": len(tool_calls)}
        if not verdict.valid:
            detail |= {"error_type": verdict.error_type, "error": verdict.error}
        return Score(
            value=float(verdict.valid),
            correct=verdict.valid,
            extracted=_rendered(tool_calls),
            detail=detail,
        )

    def unparsed(self, score: Score) -> bool:
        """No tool call where one was wanted: when nearly every answer is like this, the
        system most likely cannot call tools at all."""
        return score.detail.get("error_type") == "no_tool_call"


def _rendered(calls: Sequence[ToolCall]) -> str | None:
    """The calls in one line, as a reader of the records wants to see them."""
    if not calls:
        return None
    return "; ".join(f"{c.name}({_args(c.arguments)})" for c in calls)[:500]


def _args(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments or "{}"), ensure_ascii=False, sort_keys=True)
    except ValueError:
        return arguments
