"""MoA analyses on a run's records, each a pure function of hand-checkable inputs.

- ``error_correlation``: Pearson (phi) correlation of the proposers' error indicators on a
  closed-form task — are the members different bets, or one bet under several names?
- ``minority_majority``: how often the final answer is right when only a minority of proposers
  were right (preservation), and how often a right majority was overturned.
- ``similarity_quality``: Spearman correlation between each proposal's similarity to the final
  answer (BLEU, TF-IDF cosine, Levenshtein) and the proposal's score (the paper's Figure 4b).
- ``layer_curve`` and ``collaborativeness`` summarize scores already in the records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from moakit.eval.records import EvalRecord


def error_correlation(
    correct: Sequence[Sequence[bool | None]], members: int | None = None
) -> list[list[float | None]]:
    """``correct[item][member]`` -> member×member correlation of errors (phi), each pair over
    the items both members answered (``None``: cut by the straggler policy or failed), as
    pandas' pairwise-complete ``corr`` does: one missing sample must not void a whole item. A
    pair with fewer than two shared items, or a member always right (or always wrong) on them,
    has no variance: undefined (None), not 0. ``members`` sizes the matrix when there are no
    rows."""
    rows = [list(r) for r in correct]
    size = len(rows[0]) if rows else (members or 0)
    out: list[list[float | None]] = []
    for i in range(size):
        row: list[float | None] = []
        for j in range(size):
            pairs = [(r[i], r[j]) for r in rows if r[i] is not None and r[j] is not None]
            a = np.asarray([not x for x, _ in pairs], dtype=float)
            b = np.asarray([not y for _, y in pairs], dtype=float)
            if len(pairs) < 2 or a.std() == 0 or b.std() == 0:
                row.append(None)
            else:
                row.append(float(np.corrcoef(a, b)[0, 1]))
        out.append(row)
    return out


def minority_majority(
    proposer_correct: Sequence[Sequence[bool]], final_correct: Sequence[bool]
) -> dict[str, Any]:
    """Strict minority: fewer than half of the proposers right (but at least one); strict
    majority: more than half right. Ties (exactly half) count as neither."""
    minority = majority = preserved = overturned = 0
    for votes, final in zip(proposer_correct, final_correct, strict=True):
        k, n = sum(bool(v) for v in votes), len(votes)
        if n == 0:
            continue
        if k > 0 and 2 * k < n:
            minority += 1
            preserved += bool(final)
        elif 2 * k > n:
            majority += 1
            overturned += not final
    return {
        "minority_items": minority,
        "minority_preserved": preserved,
        "minority_preservation_rate": preserved / minority if minority else None,
        "majority_items": majority,
        "majority_overturned": overturned,
        "majority_overturn_rate": overturned / majority if majority else None,
    }


def similarities(final: str, proposals: Sequence[str]) -> dict[str, list[float]]:
    """Similarity of each proposal to the final answer under three measures, each in [0, 1]
    (BLEU divided by 100)."""
    import sacrebleu
    from rapidfuzz.distance import Levenshtein
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    bleu = [sacrebleu.sentence_bleu(p, [final]).score / 100 for p in proposals]
    lev = [float(Levenshtein.normalized_similarity(p, final)) for p in proposals]
    try:
        tfidf = TfidfVectorizer().fit_transform([final, *proposals])
        cos = [float(x) for x in cosine_similarity(tfidf[0], tfidf[1:])[0]]
    except ValueError:  # every text empty or stop words only: no vocabulary
        cos = [0.0 for _ in proposals]
    return {"bleu": bleu, "tfidf_cosine": cos, "levenshtein": lev}


def similarity_quality(
    items: Sequence[tuple[str, Sequence[str], Sequence[float]]],
) -> dict[str, dict[str, float | int | None]]:
    """``items``: (final answer, proposals, proposal scores). Per measure: the Spearman
    correlation within each item (the paper's protocol), averaged over items where it is
    defined, and the pooled correlation over all (item, proposal) pairs."""
    from scipy.stats import spearmanr

    per_item: dict[str, list[float]] = {"bleu": [], "tfidf_cosine": [], "levenshtein": []}
    pooled_x: dict[str, list[float]] = {k: [] for k in per_item}
    pooled_y: list[float] = []
    for final, proposals, scores in items:
        if len(proposals) != len(scores) or not proposals:
            continue
        sims = similarities(final, proposals)
        pooled_y.extend(scores)
        for name, values in sims.items():
            pooled_x[name].extend(values)
            if len(values) >= 2 and len(set(values)) > 1 and len(set(scores)) > 1:
                rho = spearmanr(values, scores).statistic
                if not math.isnan(rho):
                    per_item[name].append(float(rho))
    out: dict[str, dict[str, float | int | None]] = {}
    for name in per_item:
        xs = pooled_x[name]
        pooled = None
        if len(xs) >= 3 and len(set(xs)) > 1 and len(set(pooled_y)) > 1:
            value = float(spearmanr(xs, pooled_y).statistic)
            pooled = None if math.isnan(value) else value
        rhos = per_item[name]
        out[name] = {
            "mean_within_item": float(np.mean(rhos)) if rhos else None,
            "items": len(rhos),
            "pooled": pooled,
        }
    return out


def layer_curve(records: Sequence[EvalRecord]) -> list[dict[str, Any]]:
    """Mean proposal score per layer (and the best proposal's), then the final answer's."""
    depth = max((len(r.layers) for r in records), default=0)
    curve: list[dict[str, Any]] = []
    for li in range(depth):
        values, bests = [], []
        for r in records:
            if li >= len(r.layers):
                continue
            scored = [m.value for m in r.layers[li] if m.value is not None]
            values.extend(scored)
            if scored:
                bests.append(max(scored))
        curve.append(
            {
                "layer": li + 1,
                "mean": _mean(values),
                "best_of_layer": _mean(bests),
                "n": len(values),
            }
        )
    finals = [r.value for r in records if r.value is not None]
    curve.append({"layer": "final", "mean": _mean(finals), "best_of_layer": None, "n": len(finals)})
    return curve


def collaborativeness(
    records_by_system: Mapping[str, Sequence[EvalRecord]],
) -> list[dict[str, Any]]:
    """For each ``collab`` system: the member alone vs. with the others' answers."""
    out = []
    for name, records in records_by_system.items():
        alone = [
            float(r.extra["alone_value"]) for r in records if r.extra.get("alone_value") is not None
        ]
        helped = [r.value for r in records if r.value is not None]
        out.append(
            {
                "system": name,
                "alone": _mean(alone),
                "with_references": _mean(helped),
                "n": min(len(alone), len(helped)),
            }
        )
    return out


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None
