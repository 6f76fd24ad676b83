"""GSM8K: exact match on the final number (``moakit.answers`` reads it, the same code the
runtime ``vote`` defense uses)."""

from __future__ import annotations

from collections.abc import Sequence

from moakit.answers import extract_final_number, normalize_number, numbers_equal
from moakit.eval.datasets import Item
from moakit.eval.scorers.base import Score, Scorer

__all__ = ["GSM8KScorer", "extract_final_number", "normalize_number", "numbers_equal"]


class GSM8KScorer(Scorer):
    name = "gsm8k"
    closed_form = True

    def extract(self, text: str, item: Item) -> str | None:
        return extract_final_number(text)

    async def score(self, item: Item, answers: Sequence[str]) -> Score:
        extracted = extract_final_number(answers[-1]) if answers else None
        correct = numbers_equal(extracted, item.answer)
        return Score(value=float(correct), correct=correct, extracted=extracted)

    def unparsed(self, score: Score) -> bool:
        return score.extracted is None
