"""Training the ``knn`` router (``moakit.routing``) from ``moa eval`` records, and judging it
on another split.

An eval of a MoA system records, per item, whether each first-layer member was right. The
router learns (query text -> which members were right) from the items of one split, and is
judged on the items of another, never seen in training: how many members it would have
called, and how often at least one of them was right, against calling them all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from moakit.config import ResolvedMember
from moakit.eval.datasets import Item
from moakit.eval.records import EvalRecord
from moakit.routing import Example, KnnRouter


def examples(items: Sequence[Item], records: Mapping[str, EvalRecord]) -> list[Example]:
    """One example per item whose record scored its first layer's members."""
    out = []
    for item in items:
        record = records.get(item.id)
        if record is None or not record.layers:
            continue
        right = {m.label: bool(m.correct) for m in record.layers[0] if m.correct is not None}
        if right:
            out.append(Example(item.prompt, right))
    return out


@dataclass(frozen=True)
class Judged:
    items: int
    members_mean: float  # members the router called per item
    members_all: int  # the layer's size
    any_right_routed: float  # share of items where a routed member was right
    any_right_all: float  # ... where any member was right
    best_routed: float  # share where the router's top member was right

    def to_json(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


def judge(router: KnnRouter, held_out: Sequence[Example]) -> Judged:
    """How ``router`` would have done on ``held_out`` (examples it was not trained on)."""
    if not held_out:
        raise ValueError("nothing to judge the router on")
    labels = sorted({label for e in held_out for label in e.right})
    members = [
        ResolvedMember(
            model=label, label=label, provider="openai", temperature=0, timeout_s=1, retries=0
        )
        for label in labels
    ]
    called, routed_right, all_right, best_right = 0, 0, 0, 0
    for example in held_out:
        chosen = router.select(example.text, 1, members)
        called += len(chosen)
        routed_right += any(example.right.get(m.label, False) for m in chosen)
        all_right += any(example.right.values())
        estimates = router.estimates(example.text)
        top = max(chosen, key=lambda m: estimates.get(m.label, 0.0))
        best_right += example.right.get(top.label, False)
    n = len(held_out)
    return Judged(
        items=n,
        members_mean=called / n,
        members_all=len(labels),
        any_right_routed=routed_right / n,
        any_right_all=all_right / n,
        best_routed=best_right / n,
    )


__all__ = ["Judged", "examples", "judge"]
