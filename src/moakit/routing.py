"""Routers: which members a query is worth, chosen before any is called.

A router is registered by name (hook ``register_routers``) as ``factory(options) -> Router``
and named by a stack's ``[router]``. The engine asks it once per layer; members it leaves out
are never started and are recorded as a ``route`` decision.

The built-in ``knn`` router learns from ``moa eval`` records (``moakit.eval.routing`` trains
it): for a new query it finds the ``k`` most similar training queries (RapidFuzz's token-set
ratio over the raw text: cheap, offline, no model download; it matches wording, not meaning)
and keeps the members that were right on them about as often as the best one (within
``margin``), at least ``min_members``. Members the training never saw are always kept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rapidfuzz import fuzz, process

from moakit.config import ResolvedMember
from moakit.errors import ConfigError
from moakit.hookspecs import Register, hookimpl

FORMAT = "moakit-knn-router/1"


class Router(Protocol):
    def select(
        self, query: str, layer: int, members: Sequence[ResolvedMember]
    ) -> Sequence[ResolvedMember]: ...


@dataclass(frozen=True)
class Example:
    """One training query: its text, and which members (by label) answered it right."""

    text: str
    right: Mapping[str, bool]


class KnnRouter:
    def __init__(
        self,
        examples: Sequence[Example],
        *,
        k: int = 5,
        margin: float = 0.0,
        min_members: int = 1,
    ) -> None:
        if not examples:
            raise ConfigError("a knn router needs at least one training example", field="router")
        self.examples = list(examples)
        self._texts = [e.text for e in self.examples]
        self.k, self.margin, self.min_members = k, margin, min_members

    def estimates(self, query: str) -> dict[str, float]:
        """Each known member's share of right answers over the query's nearest examples."""
        found = process.extract(query, self._texts, scorer=fuzz.token_set_ratio, limit=self.k)
        neighbours = [self.examples[index] for _, _, index in found]
        labels = {label for e in neighbours for label in e.right}
        out = {}
        for label in labels:
            seen = [e.right[label] for e in neighbours if label in e.right]
            out[label] = sum(seen) / len(seen)
        return out

    def select(
        self, query: str, layer: int, members: Sequence[ResolvedMember]
    ) -> Sequence[ResolvedMember]:
        estimates = self.estimates(query)
        known = [m for m in members if m.label in estimates]
        if not known:
            return members
        best = max(estimates[m.label] for m in known)
        keep = {m.label for m in known if estimates[m.label] >= best - self.margin}
        ranked = sorted(known, key=lambda m: -estimates[m.label])
        for m in ranked[: self.min_members]:
            keep.add(m.label)
        return [m for m in members if m.label in keep or m.label not in estimates]

    # -- the trained file --------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "examples": [{"text": e.text, "right": dict(e.right)} for e in self.examples],
        }

    @classmethod
    def load(cls, path: Path, **options: Any) -> KnnRouter:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read router file {path}: {exc}", field="router") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError(f"{path} is not a {FORMAT} file", field="router")
        examples = [
            Example(str(e["text"]), {str(k): bool(v) for k, v in e["right"].items()})
            for e in data.get("examples", [])
        ]
        return cls(examples, **options)


def knn(options: Mapping[str, Any]) -> KnnRouter:
    unknown = set(options) - {"file", "k", "margin", "min_members"}
    if unknown:
        raise ConfigError(f"unknown knn router option {sorted(unknown)[0]!r}", field="router")
    if "file" not in options:
        raise ConfigError(
            "the knn router needs options.file (made by moa eval route --save)", field="router"
        )
    return KnnRouter.load(
        Path(str(options["file"])).expanduser(),
        k=int(options.get("k", 5)),
        margin=float(options.get("margin", 0.0)),
        min_members=int(options.get("min_members", 1)),
    )


@hookimpl
def register_routers(register: Register) -> None:
    register("knn", knn)


__all__ = ["Example", "KnnRouter", "Router", "knn"]
