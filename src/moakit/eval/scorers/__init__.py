"""Scorers by name, or a user's own as a ``module:function`` entry point."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from moakit.answers import extract_final_number, numbers_equal
from moakit.errors import ConfigError
from moakit.eval.datasets import Item
from moakit.eval.scorers.base import Score, Scorer
from moakit.eval.scorers.gsm8k import GSM8KScorer
from moakit.models.base import Model

JUDGED = ("mt-bench", "alpaca-eval", "flask", "judge")
BUILTIN = ("gsm8k", "number", "humaneval", "exact", "contains", *JUDGED)


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".")


class ExactScorer(Scorer):
    """Case- and whitespace-insensitive exact match of the whole answer with ``item.answer``."""

    name = "exact"
    closed_form = True

    def extract(self, text: str, item: Item) -> str | None:
        return _norm(text)

    async def score(self, item: Item, answers: Sequence[str]) -> Score:
        got = _norm(answers[-1])
        correct = item.answer is not None and got == _norm(item.answer)
        return Score(value=float(correct), correct=correct, extracted=got)


class ContainsScorer(ExactScorer):
    """Correct when ``item.answer`` appears in the reply (case-insensitive)."""

    name = "contains"

    async def score(self, item: Item, answers: Sequence[str]) -> Score:
        correct = item.answer is not None and _norm(item.answer) in _norm(answers[-1])
        return Score(value=float(correct), correct=correct)


class NumberScorer(GSM8KScorer):
    name = "number"


class FunctionScorer(Scorer):
    """Wraps ``fn(answer: str, item: Item) -> bool | float | Score`` (sync or async)."""

    def __init__(self, name: str, fn: Callable[..., Any], closed_form: bool) -> None:
        self.name = name
        self.fn = fn
        self.closed_form = closed_form

    async def score(self, item: Item, answers: Sequence[str]) -> Score:
        out = self.fn(answers[-1], item)
        if inspect.isawaitable(out):
            out = await out
        if isinstance(out, Score):
            return out
        if isinstance(out, bool):
            return Score(value=float(out), correct=out)
        if isinstance(out, int | float):
            return Score(value=float(out))
        raise ConfigError(
            f"scorer {self.name}: returned {type(out).__name__}, "
            "expected bool, a number or a Score",
            field="scorer",
        )


def build_scorer(
    name: str, *, judge: Model | None = None, baseline: Mapping[str, str] | None = None
) -> Scorer:
    if ":" in name:
        return _entry_point(name)
    if name in JUDGED and judge is None:
        raise ConfigError(f"scorer {name!r} needs a judge model (--judge)", field="judge")
    if name == "gsm8k":
        return GSM8KScorer()
    if name == "number":
        return NumberScorer()
    if name == "humaneval":
        from moakit.eval.scorers.humaneval import HumanEvalScorer

        return HumanEvalScorer()
    if name == "exact":
        return ExactScorer()
    if name == "contains":
        return ContainsScorer()
    from moakit.eval.scorers import judges

    assert judge is not None
    if name == "mt-bench":
        return judges.MTBenchScorer(judge)
    if name == "alpaca-eval":
        if baseline is None:
            raise ConfigError(
                "scorer 'alpaca-eval' needs baseline outputs (--baseline)", field="baseline"
            )
        return judges.PairwiseScorer(judge, baseline)
    if name == "flask":
        return judges.FlaskScorer(judge)
    if name == "judge":
        return judges.RatingJudgeScorer(judge)
    raise ConfigError(
        f"unknown scorer {name!r} (known: {', '.join(BUILTIN)}, or module:function)", field="scorer"
    )


def _entry_point(spec: str) -> Scorer:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        fn = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"scorer {spec!r}: cannot load ({exc})", field="scorer") from None
    if not callable(fn):
        raise ConfigError(f"scorer {spec!r}: not callable", field="scorer")
    return FunctionScorer(spec, fn, closed_form=bool(getattr(fn, "closed_form", False)))


__all__ = [
    "BUILTIN",
    "ContainsScorer",
    "ExactScorer",
    "FunctionScorer",
    "Score",
    "Scorer",
    "build_scorer",
    "extract_final_number",
    "numbers_equal",
]
