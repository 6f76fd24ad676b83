"""A results directory as data: its manifest (``run.json``: the dataset, scorer and systems of
the run that wrote it) and its records. A report is rebuilt from what the directory holds,
never from whatever flags a later command happens to pass.

Directories written before the manifest existed have a ``summary.json`` whose rows name each
system with its hash; ``ResultsDir.manifest()`` reads that instead (``legacy``), and records
with no ``scorer`` label are taken to be scored by that summary's scorer.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from moakit.errors import ConfigError
from moakit.eval.records import EvalRecord, RecordsFile, Warn, latest, read_records
from moakit.eval.systems import SystemInfo

MANIFEST = "run.json"


class Manifest(BaseModel):
    dataset: str  # a built-in name, or the path of a user JSONL file as given
    data_dir: str | None = None
    limit: int | None = None
    offset: int = 0
    scorer: str  # the scorer's name, as the report's title shows it
    scorer_id: str  # its identity (name, and the judge for judged scorers)
    closed_form: bool = False
    scale: tuple[float, float] = (0.0, 1.0)
    reference: str | None = None
    judge_price: tuple[float, float] | None = None
    systems: list[SystemInfo] = Field(default_factory=list)
    # The scorer identity of records that carry none (written before records were labelled).
    unlabelled_scorer: str | None = None
    legacy: bool = False  # read from an older directory's summary.json, not written as such


class ResultsDir:
    def __init__(self, root: Path, warn: Warn) -> None:
        self.root = root
        self.records_dir = root / "records"
        self.warn = warn

    def records_file(self, system: SystemInfo) -> RecordsFile:
        return RecordsFile(self.records_dir, system.name, system.hash)

    def manifest(self) -> Manifest | None:
        """The directory's manifest, else one read from an older summary.json, else None."""
        path = self.root / MANIFEST
        if path.exists():
            try:
                return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
            except (OSError, ValidationError) as exc:
                raise ConfigError(f"{path}: not a moa eval manifest ({exc})", field="out") from None
        return self._legacy()

    def _legacy(self) -> Manifest | None:
        path = self.root / "summary.json"
        if not path.exists():
            return None
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
            systems = [
                SystemInfo(name=row["name"], kind=row["kind"], hash=row["hash"])
                for row in summary["systems"]
            ]
            scorer = str(summary["scorer"])
            return Manifest(
                dataset=str(summary["dataset"]),
                scorer=scorer,
                scorer_id=scorer,
                closed_form=bool(summary.get("closed_form")),
                scale=tuple(summary.get("scale") or (0.0, 1.0)),
                reference=summary.get("reference"),
                systems=systems,
                unlabelled_scorer=scorer,
                legacy=True,
            )
        except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
            raise ConfigError(f"{path}: not a moa eval summary ({exc})", field="out") from None

    def write_manifest(self, manifest: Manifest) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")

    def records(self, system: SystemInfo) -> dict[str, EvalRecord]:
        """Item id -> the system's last record (name and hash), wherever its file is named."""
        found: list[EvalRecord] = []
        for path in sorted(self.records_dir.glob(f"*.{system.hash}.jsonl")):
            found += [
                r
                for r in read_records(path, self.warn)
                if r.system == system.name and r.system_hash in (system.hash, "")
            ]
        return latest(found)
