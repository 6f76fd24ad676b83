"""Eval records, typed: one ``EvalRecord`` per (item, system), appended as a JSON line to
``records/<system>.<hash>.jsonl`` in a results directory.

Every field has a default, so records written by older versions (no ``scorer``, no
``defenses``, no ``truncated``) still load; a field they lack reads as "unknown" (``None``),
never as a made-up value. ``read_records`` skips a last line cut short by a killed run, with a
warning, and ``RecordsFile.append`` first cuts such a tail off so the next record starts on a
line of its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moakit.errors import ConfigError
from moakit.eval.scorers.base import Score
from moakit.messages import ToolCall
from moakit.models.base import Usage
from moakit.result import Decision, DefenseAction

Warn = Callable[[str], None]


class MemberRecord(BaseModel):
    """One proposer's (or a layer member's) answer, with its own score when layers are
    scored (``value``/``correct``) or its comparable answer on closed-form tasks."""

    model_config = ConfigDict(extra="ignore")

    label: str
    model: str = ""
    output: str | None = None
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = None
    truncated: bool | None = None  # stopped at its token budget (unknown in older records)
    value: float | None = None
    correct: bool | None = None
    extracted: str | None = None

    @property
    def answered(self) -> bool:
        return self.error is None and self.output is not None


class EvalRecord(BaseModel):
    """What one system did on one item: its answers (one per turn), their score under
    ``scorer``, every layer's proposals, tokens, cost, latency, and what defenses did."""

    model_config = ConfigDict(extra="ignore")

    item_id: str
    system: str
    kind: str = ""
    system_hash: str = ""
    # The scorer identity that produced ``score`` (part of the record's identity: a run with
    # another scorer rescores the stored answers). None: an older record, see ``Manifest``.
    scorer: str | None = None
    error: str | None = None
    finals: list[str] = Field(default_factory=list)
    final: str = ""
    # The tool calls the final answer made (an item offering tools, e.g. BFCL); ``final`` is
    # then the text beside them, often empty.
    tool_calls: list[ToolCall] = Field(default_factory=list)
    # The final answer stopped at its token budget (finish_reason "length"), in any turn.
    truncated: bool | None = None
    score: Score | None = None
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = None
    judge_cost_usd: float | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    answer_chars: int = 0
    answer_words: int = 0
    calls: int = 0
    cache_hits: int = 0
    # What an adaptive system decided on this item (early exits, escalations, budget cuts).
    decisions: list[Decision] = Field(default_factory=list)
    layers: list[list[MemberRecord]] = Field(default_factory=list)
    # What each defense did (fenced, filtered, labelled, voted).
    defenses: list[DefenseAction] = Field(default_factory=list)
    # Kind-specific details: the ranker's reply and choice, collab's answer alone, the votes.
    extra: dict[str, Any] = Field(default_factory=dict)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def value(self) -> float | None:
        return None if self.score is None else self.score.value

    @property
    def right(self) -> bool | None:
        """Whether a closed-form final answer was right; None if the item was not scored."""
        if self.error or self.score is None or self.score.correct is None:
            return None
        return bool(self.score.correct)

    def to_line(self) -> str:
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False) + "\n"


def read_records(path: Path, warn: Warn) -> Iterator[EvalRecord]:
    """Every record of ``path`` in file order. A last line that is not a whole record (a run
    killed mid-write) is skipped with a warning; a bad line elsewhere is a ``ConfigError``
    naming the file and line (someone edited the file: that needs a person, not a guess)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", field="out") from None
    lines = text.split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield EvalRecord.model_validate_json(line)
        except ValidationError as exc:
            if number - 1 == last and not text.endswith("\n"):
                warn(
                    f"{path.name} line {number} is cut short (a run stopped while writing "
                    "it); skipped: that item runs again"
                )
                continue
            problem = exc.errors()[0]["msg"] if exc.errors() else str(exc)
            raise ConfigError(
                f"{path}: line {number} is not an eval record ({problem}); fix or delete it",
                field="out",
            ) from None


def latest(records: Iterator[EvalRecord] | list[EvalRecord]) -> dict[str, EvalRecord]:
    """Item id -> its last record (a retried failure replaces itself)."""
    out: dict[str, EvalRecord] = {}
    for record in records:
        out[record.item_id] = record
    return out


def records_slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)


class RecordsFile:
    """The append-only records file of one system (name and hash) in a results directory."""

    def __init__(self, directory: Path, name: str, system_hash: str) -> None:
        self.path = directory / f"{records_slug(name)}.{system_hash}.jsonl"
        self.name = name
        self.system_hash = system_hash

    def append(self, record: EvalRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_partial_tail()
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(record.to_line())

    def _cut_partial_tail(self) -> None:
        """A file not ending in a newline ends in a half-written record (``read_records``
        skipped it): drop that fragment, or the next record would be glued onto it."""
        if not self.path.exists():
            return
        with self.path.open("rb+") as fh:
            size = fh.seek(0, 2)
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            fh.seek(0)
            data = fh.read()
            fh.truncate(data.rfind(b"\n") + 1)

    def stale(self) -> list[Path]:
        """Records of earlier configurations of this system (another hash): kept, not used."""
        stem = self.path.name.rsplit(".", 2)[0]
        return sorted(
            p
            for p in self.path.parent.glob(f"{stem}.*.jsonl")
            if p != self.path and p.name.rsplit(".", 2)[0] == stem
        )
