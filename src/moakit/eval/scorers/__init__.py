"""Scorers by name, or a user's own as a ``module:function`` entry point."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from moakit.answers import extract_final_number, numbers_equal
from moakit.config import DEFAULT_PROVIDER, MemberSpec
from moakit.errors import ConfigError
from moakit.eval.datasets import Item
from moakit.eval.scorers.base import Score, Scorer
from moakit.eval.scorers.gsm8k import GSM8KScorer
from moakit.models.base import ChatRequest, Chunk, Model
from moakit.plugins import registry


def _norm(text: str) -> str:
    text = re.sub(r"\s+", " ", text.strip().lower())
    return text.strip("*_`\"' ").rstrip(".").strip("*_`\"' ")


# "#### X", "\boxed{X}", "The (final) answer is X", "Answer: X": the last one stated wins.
_STATED = re.compile(
    r"####\s*(?P<hashes>[^\n]+)"
    r"|\\boxed\{(?P<boxed>[^{}\n]+)\}"
    r"|(?:final answer|the answer|answer)\s*(?:is|:)\s*:?\s*(?P<said>[^\n]+)",
    re.IGNORECASE,
)


def stated_answer(text: str) -> str | None:
    """The answer a reply states in so many words, normalized; None if it states none."""
    found = list(_STATED.finditer(text))
    if not found:
        return None
    last = found[-1]
    return _norm(last.group("hashes") or last.group("boxed") or last.group("said") or "")


class ExactScorer(Scorer):
    """Case- and whitespace-insensitive exact match with ``item.answer``: of the answer the
    reply states ("Answer: X", "The answer is X", "#### X", ``\\boxed{X}``), else of the
    whole reply."""

    name = "exact"
    closed_form = True

    def extract(self, text: str, item: Item) -> str | None:
        return stated_answer(text) or _norm(text)

    async def score(self, item: Item, answers: Sequence[str]) -> Score:
        whole, stated = _norm(answers[-1]), stated_answer(answers[-1])
        gold = None if item.answer is None else _norm(item.answer)
        correct = gold is not None and gold in (whole, stated)
        return Score(
            value=float(correct),
            correct=correct,
            extracted=stated or whole,
            detail={"stated": stated is not None},
        )

    def unparsed(self, score: Score) -> bool:
        return not score.correct and not score.detail.get("stated")


class ContainsScorer(ExactScorer):
    """Correct when ``item.answer`` appears in the reply (case-insensitive)."""

    name = "contains"

    async def score(self, item: Item, answers: Sequence[str]) -> Score:
        correct = item.answer is not None and _norm(item.answer) in _norm(answers[-1])
        return Score(value=float(correct), correct=correct)

    def unparsed(self, score: Score) -> bool:
        return False


class NumberScorer(GSM8KScorer):
    """GSM8K's rule for any dataset whose answers are numbers."""

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
    """A scorer registered by a plugin (the built-ins among them), or ``module:function``."""
    if ":" in name:
        return _entry_point(name)
    scorers = registry().scorers
    if name not in scorers:
        raise ConfigError(
            f"unknown scorer {name!r} (known: {', '.join(scorers.names())}, or module:function)",
            field="scorer",
        )
    scorer: Scorer = scorers.get(name, field="scorer")(name, judge, baseline)
    return scorer


def judged(name: str) -> bool:
    """Whether scorer ``name`` needs a judge model."""
    source = registry().scorers.entries.get(name)
    return source is not None and bool(getattr(source.value, "judged", False))


def scorer_names() -> list[str]:
    return registry().scorers.names()


class _NeverCalled(Model):
    """Stands in for the judge where a scorer is built only to read its traits."""

    name = "unused-judge"

    def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        raise AssertionError("a scorer built for its traits is never asked to score")


def scorer_traits(name: str, judge: bool, baseline: Mapping[str, str] | None) -> Scorer:
    """The scorer ``name``, built only to read its traits (closed form, scale, what it counts
    as unparsed). ``judge``: one is configured; a judged scorer without one is a
    ``ConfigError``, raised before anything runs."""
    return build_scorer(name, judge=_NeverCalled() if judge else None, baseline=baseline)


# Built-in scorers whose rule changed since records were first written under their name: the
# identity carries the revision, so records scored by the old rule are scored again.
# exact v2: the answer a reply states ("Answer: X", "#### X") before the whole reply; exact and
# contains v2 also ignore the bold/quote marks around an answer.
REVISIONS = {"exact": 2, "contains": 2}


def scorer_identity(name: str, judge: MemberSpec | None) -> str:
    """What decides a score: the scorer (and its revision), and for judged scorers the judge
    model. A record scored under another identity is scored again (from its stored answers,
    calling no system) on the next run."""
    revision = REVISIONS.get(name, 1)
    base = name if revision == 1 else f"{name} v{revision}"
    if not judged(name) or judge is None:
        return base
    where = f"@{judge.base_url}" if judge.base_url else ""
    return f"{base} judged by {judge.provider or DEFAULT_PROVIDER}:{judge.model}{where}"


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
    "ContainsScorer",
    "ExactScorer",
    "FunctionScorer",
    "Score",
    "Scorer",
    "build_scorer",
    "extract_final_number",
    "numbers_equal",
    "scorer_identity",
    "scorer_traits",
]
