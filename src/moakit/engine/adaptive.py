"""Adaptive compute: spend the panel only where it helps.

- **Early exit on agreement**: after a layer (or a cascade's first members), if the answers
  agree (``AgreementConfig``), the run answers with one of them and skips every member, layer
  and aggregator call left. Agreement is ``answer`` (the same extracted final answer, by a
  registered answer extractor, the ones the eval scorers and the vote strategy use) or
  ``similarity`` (RapidFuzz's token-set ratio between every pair: a well-kept C library that
  is already a dependency, fast enough to run per query, and needs no model download; it
  measures wording, not meaning, so its threshold is conservative).
- **Cascade**: layer 1 starts with its first (cheapest) members and escalates to the rest only
  when they disagree.

Every decision is a ``Decision`` in ``Result.decisions`` and a ``Decided`` event.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from rapidfuzz import fuzz

from moakit.config import ResolvedMember
from moakit.engine.run import Run
from moakit.events import TextDelta
from moakit.plugins import registry
from moakit.policies import AgreementConfig, CascadeConfig
from moakit.result import Decision, MemberOutput


@dataclass(frozen=True)
class Agreement:
    representative: MemberOutput
    detail: str


def agreement(config: AgreementConfig, outputs: Sequence[MemberOutput]) -> Agreement | None:
    """The agreed answer of ``outputs`` (their answered members), or ``None``."""
    answered = [o for o in outputs if o.ok and not o.truncated]
    if len(answered) < config.min_answers or len(answered) < sum(1 for o in outputs if o.ok):
        return None  # too few answers, or a truncated one that cannot be judged
    texts = [o.output or "" for o in answered]
    if config.rule == "answer":
        extract = registry().extractors.get(config.extractor, field="adaptive.early_exit")
        values = [extract(t) for t in texts]
        if values[0] is None or any(v != values[0] for v in values):
            return None
        detail = f"{len(answered)} answers agree on {str(values[0])[:60]!r} ({config.extractor})"
        return Agreement(answered[0], detail)
    scores = {
        (i, j): fuzz.token_set_ratio(texts[i], texts[j]) / 100
        for i, j in itertools.combinations(range(len(texts)), 2)
    }
    lowest = min(scores.values())
    if lowest < config.threshold:
        return None
    # The medoid: the answer most like the others.
    medoid = max(
        range(len(texts)),
        key=lambda i: sum(s for pair, s in scores.items() if i in pair),
    )
    detail = f"{len(answered)} answers alike (lowest similarity {lowest:.2f})"
    return Agreement(answered[medoid], detail)


def exit_early(run: Run, layer: int, found: Agreement, skipped: Sequence[str]) -> None:
    """Answer with the agreed answer: record the decision, and send the text."""
    decision = Decision(
        kind="early_exit",
        layer=layer,
        detail=found.detail,
        skipped=list(skipped),
        answer_from=found.representative.label,
    )
    run.decide(decision)
    run.result.final = found.representative.output or ""
    run.emit(TextDelta(text=run.result.final, **run.stamp()))


def escalate(run: Run, layer: int, detail: str) -> None:
    run.decide(Decision(kind="escalate", layer=layer, detail=detail))


def cascade_order(config: CascadeConfig, specs: Sequence[ResolvedMember]) -> list[int]:
    """Layer 1's member positions in the order a cascade starts them."""
    positions = list(range(len(specs)))
    if config.order == "price":

        def price(i: int) -> tuple[bool, float, int]:
            p = specs[i].price_out_per_mtok
            return (p is None, p or 0.0, i)

        positions.sort(key=price)
    return positions


def skipped_after(run: Run, position: int, not_started: Sequence[str] = ()) -> list[str]:
    """Labels of every call an exit after layer ``position`` (0-based) leaves unmade."""
    later = [s.label for specs in run.lineup.layer_specs[position + 1 :] for s in specs]
    return [*not_started, *later, "aggregator"]


__all__ = [
    "Agreement",
    "agreement",
    "cascade_order",
    "escalate",
    "exit_early",
    "skipped_after",
]
