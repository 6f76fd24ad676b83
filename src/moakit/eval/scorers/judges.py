"""LLM-as-a-judge scorers: MT-Bench single-answer grading, AlpacaEval-style pairwise judging
against a baseline's outputs (both orders), FLASK skill scoring, and a generic 1–10 judge.

The MT-Bench prompts are FastChat's own (``mt_bench_judge_prompts.jsonl``, see PROVENANCE.md):
reference-guided for math, reasoning and coding; the multi-turn prompt grades turn 2 with the
whole conversation in view. Model answers and references are pasted into the judge's prompt as
data; a judge's reply is parsed, never executed.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from moakit.eval.datasets import Item
from moakit.eval.scorers.base import Score, Scorer
from moakit.messages import Message
from moakit.models.base import ChatRequest, Model, Usage

# FastChat's NEED_REF_CATS.
REFERENCE_CATEGORIES = frozenset({"math", "reasoning", "coding", "arena-hard-200"})
_RATING_RE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP_RE = re.compile(r"\[(\d+\.?\d*)\]")
_VERDICT_RE = re.compile(r"\[\[([ABC])\]\]")
JUDGE_MAX_TOKENS = 2048


@functools.cache
def judge_prompts() -> dict[str, dict[str, Any]]:
    text = resources.files("moakit.eval.scorers").joinpath("mt_bench_judge_prompts.jsonl")
    rows = [json.loads(line) for line in text.read_text(encoding="utf-8").splitlines() if line]
    return {row["name"]: row for row in rows}


def parse_rating(text: str) -> float | None:
    """FastChat's rule: ``[[r]]``, else ``[r]``; None when neither appears."""
    for pattern in (_RATING_RE, _RATING_BACKUP_RE):
        found = pattern.findall(text)
        if found:
            value = float(found[-1])
            return value if 0 <= value <= 10 else None
    return None


def parse_verdict(text: str) -> str | None:
    """``A``, ``B`` or ``C`` (tie) from FastChat's pairwise ``[[A]]`` format."""
    found = _VERDICT_RE.findall(text)
    return found[-1] if found else None


class _Judge:
    """A judge model plus usage bookkeeping for one score."""

    def __init__(self, model: Model, *, max_tokens: int = JUDGE_MAX_TOKENS) -> None:
        self.model = model
        self.max_tokens = max_tokens

    async def ask(self, system: str, user: str, score: Score) -> str:
        request = ChatRequest(
            messages=[Message.system(system), Message.user(user)],
            temperature=0.0,
            max_tokens=self.max_tokens,
        )
        completion = await self.model.complete(request)
        score.judge_usage = score.judge_usage + completion.usage
        score.judge_calls += 1
        return completion.text


class MTBenchScorer(Scorer):
    """Single-answer grading, 1–10 per turn; the item's value is the mean over its turns."""

    name = "mt-bench"
    scale = (1.0, 10.0)

    def __init__(self, judge: Model) -> None:
        self.judge = _Judge(judge)

    async def score(self, item: Item, answers: Sequence[str]) -> Score:
        score = Score(value=None)
        ratings: list[float | None] = []
        for turn in range(len(answers)):
            system, user = self.prompt(item, answers, turn)
            reply = await self.judge.ask(system, user, score)
            ratings.append(parse_rating(reply))
            score.detail.setdefault("judgments", []).append(reply)
        score.detail["ratings"] = ratings
        valid = [r for r in ratings if r is not None]
        if len(valid) < len(ratings):
            score.error = "judge gave no [[rating]] for some turn"
        score.value = sum(valid) / len(valid) if valid else None
        return score

    def prompt(self, item: Item, answers: Sequence[str], turn: int) -> tuple[str, str]:
        needs_ref = item.meta.get("category") in REFERENCE_CATEGORIES and bool(item.references)
        kind = "single-math-v1" if needs_ref else "single-v1"
        if turn == 0:
            row = judge_prompts()[kind]
            fields = {"question": item.turns[0], "answer": answers[0]}
            if needs_ref:
                fields["ref_answer_1"] = item.references[0]
        else:
            row = judge_prompts()[f"{kind}-multi-turn"]
            fields = {
                "question_1": item.turns[0],
                "question_2": item.turns[1],
                "answer_1": answers[0],
                "answer_2": answers[1],
            }
            if needs_ref:
                fields["ref_answer_1"] = item.references[0]
                fields["ref_answer_2"] = item.references[1] if len(item.references) > 1 else ""
        return str(row["system_prompt"]), _fill(str(row["prompt_template"]), fields)


def _fill(template: str, fields: Mapping[str, str]) -> str:
    # str.format would interpret braces inside model answers; replace named slots only.
    out = template
    for key, value in fields.items():
        out = out.replace("{" + key + "}", value)
    return out


class PairwiseScorer(Scorer):
    """AlpacaEval 2.0's protocol: the system's output against a baseline's output for the same
    instruction, judged twice with the order swapped (position bias cancels). The value is the
    system's win share (1 win, 0.5 tie, 0 loss; averaged over the two orders)."""

    name = "alpaca-eval"

    def __init__(self, judge: Model, baseline: Mapping[str, str]) -> None:
        self.judge = _Judge(judge)
        self.baseline = baseline  # instruction text -> baseline output

    async def score(self, item: Item, answers: Sequence[str]) -> Score:
        score = Score(value=None)
        base = self.baseline.get(item.prompt)
        if base is None:
            score.error = "no baseline output for this instruction"
            return score
        row = judge_prompts()["pair-v2"]
        wins: list[float] = []
        for system_first in (True, False):
            a, b = (answers[-1], base) if system_first else (base, answers[-1])
            user = _fill(
                str(row["prompt_template"]), {"question": item.prompt, "answer_a": a, "answer_b": b}
            )
            verdict = parse_verdict(await self.judge.ask(str(row["system_prompt"]), user, score))
            score.detail.setdefault("verdicts", []).append(verdict)
            if verdict is None:
                continue
            system_letter = "A" if system_first else "B"
            wins.append(0.5 if verdict == "C" else float(verdict == system_letter))
        score.value = sum(wins) / len(wins) if wins else None
        score.detail["baseline_len"] = len(base)
        score.detail["output_len"] = len(answers[-1])
        if len(wins) < 2:
            score.error = "judge gave no [[A]]/[[B]]/[[C]] verdict in some order"
        return score


FLASK_SYSTEM = "You are a fair and careful evaluator of AI assistant responses."
FLASK_TEMPLATE = """Evaluate the assistant's response to the instruction below on each listed \
skill, using the reference answer as a guide to what a high-quality response contains. For each \
skill give a score from 1 (very poor) to 5 (excellent). First explain your assessment briefly, \
then end with exactly one line per skill in the form "<skill>: [[score]]".

Skills: {skills}

[Instruction]
{question}

[The Start of Reference Answer]
{reference}
[The End of Reference Answer]

[The Start of Assistant's Answer]
{answer}
[The End of Assistant's Answer]"""


class FlaskScorer(Scorer):
    """FLASK-style fine-grained judging: 1–5 on each skill annotated for the item; the value is
    the mean over skills (per-skill scores kept in ``detail``)."""

    name = "flask"
    scale = (1.0, 5.0)

    def __init__(self, judge: Model) -> None:
        self.judge = _Judge(judge)

    async def score(self, item: Item, answers: Sequence[str]) -> Score:
        skills = [str(s) for s in item.meta.get("skills", [])] or ["Overall"]
        score = Score(value=None)
        user = _fill(
            FLASK_TEMPLATE,
            {
                "skills": ", ".join(skills),
                "question": item.prompt,
                "reference": item.reference or "(none)",
                "answer": answers[-1],
            },
        )
        reply = await self.judge.ask(FLASK_SYSTEM, user, score)
        per_skill = parse_skill_scores(reply, skills)
        score.detail["skills"] = per_skill
        valid = [v for v in per_skill.values() if v is not None]
        if len(valid) < len(skills):
            score.error = "judge did not score every skill"
        score.value = sum(valid) / len(valid) if valid else None
        return score


def parse_skill_scores(text: str, skills: Sequence[str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for skill in skills:
        found = re.findall(rf"{re.escape(skill)}\s*:?\s*\[\[(\d(?:\.\d+)?)\]\]", text, re.I)
        value = float(found[-1]) if found else None
        out[skill] = value if value is not None and 1 <= value <= 5 else None
    return out


class RatingJudgeScorer(Scorer):
    """Generic 1–10 judge for user datasets (reference-guided when the item has a reference)."""

    name = "judge"
    scale = (1.0, 10.0)

    def __init__(self, judge: Model) -> None:
        self.judge = _Judge(judge)

    async def score(self, item: Item, answers: Sequence[str]) -> Score:
        score = Score(value=None)
        kind = "single-math-v1" if item.reference else "single-v1"
        row = judge_prompts()[kind]
        user = _fill(
            str(row["prompt_template"]),
            {
                "question": item.prompt,
                "answer": answers[-1],
                "ref_answer_1": item.reference or "",
            },
        )
        reply = await self.judge.ask(str(row["system_prompt"]), user, score)
        score.value = parse_rating(reply)
        if score.value is None:
            score.error = "judge gave no [[rating]]"
        score.detail["judgment"] = reply
        return score


__all__ = [
    "FlaskScorer",
    "MTBenchScorer",
    "PairwiseScorer",
    "RatingJudgeScorer",
    "Usage",
    "judge_prompts",
    "parse_rating",
    "parse_skill_scores",
    "parse_verdict",
]
