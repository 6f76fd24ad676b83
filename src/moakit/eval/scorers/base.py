"""What every scorer returns and implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from moakit.eval.datasets import Item
from moakit.messages import ToolCall
from moakit.models.base import Usage


class Score(BaseModel):
    """``value`` is the item's score on the scorer's scale (0/1 for closed-form tasks, 1–10 for
    MT-Bench, 0–1 win share for pairwise, 1–5 for FLASK). ``correct`` is set by closed-form
    scorers only. A judge's own usage is kept apart so its cost is reported, not hidden."""

    model_config = ConfigDict(extra="ignore")

    value: float | None = None
    correct: bool | None = None
    extracted: str | None = None
    error: str | None = None
    judge_usage: Usage = Field(default_factory=Usage)
    judge_calls: int = 0
    detail: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Scorer(ABC):
    name: str
    # Closed-form scorers can extract a comparable answer (majority vote, error correlation).
    closed_form: bool = False
    # Scale for plots and reports.
    scale: tuple[float, float] = (0.0, 1.0)
    # Scores the final answer's tool calls (BFCL): the worker calls ``score_calls`` with them,
    # and does not score the proposals, whose advice is text and never calls a tool.
    scores_tool_calls: bool = False

    def extract(self, text: str, item: Item) -> str | None:
        """The comparable final answer in ``text`` (closed-form scorers only)."""
        return None

    def unparsed(self, score: Score) -> bool:
        """The reply held nothing this scorer could read as an answer (no number for a number
        scorer, no stated answer for ``exact``): a run where nearly every reply is unparsed
        says so, since the scorer, not the systems, is then the likely problem."""
        return False

    @abstractmethod
    async def score(self, item: Item, answers: Sequence[str]) -> Score:
        """Score the system's answers to ``item``'s turns (one answer per turn)."""

    async def score_calls(
        self, item: Item, answers: Sequence[str], tool_calls: Sequence[ToolCall]
    ) -> Score:
        """Score the answers together with the tool calls the last one made (a scorer that
        ``scores_tool_calls`` overrides this; the default ignores the calls)."""
        return await self.score(item, answers)
