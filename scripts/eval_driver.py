"""What the long local runs share (``eval_local.py``, ``robustness_local.py``): run one chunk
of an evaluation in-process with ``moakit.eval.EvalSession`` under a deadline, log its wall
time, fold the cache's WAL into its file, and read results back through the library."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import sqlite3
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moakit.cli.eval_progress import progress_for
from moakit.eval.records import EvalRecord
from moakit.eval.results import ResultsDir
from moakit.eval.session import EvalSession, EvalSettings
from moakit.eval.systems import SystemInfo

ROOT = Path(__file__).resolve().parent.parent
# The benchmark files: MOAKIT_EVAL_DATA if set, else the copies shipped with moakit (None).
DATA = Path(os.environ["MOAKIT_EVAL_DATA"]) if os.environ.get("MOAKIT_EVAL_DATA") else None
CACHE = ROOT / "results" / "eval-local" / "cache.sqlite"  # one cache: every run reuses calls


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def record_lines(records: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in records.glob("*.jsonl"))


async def _session(settings: EvalSettings, deadline: float | None) -> bool:
    """Run the chunk and write its report; False when the deadline stopped it first (every
    finished item is already on disk: one appended line each; the cache commits per answer)."""
    with progress_for(sys.stderr) as progress:
        session = EvalSession(settings, progress=progress)
        started = time.monotonic()
        left = None if deadline is None else max(1.0, deadline - time.time())
        try:
            async with asyncio.timeout(left):
                await session.run()
        except TimeoutError:
            return False
        session.write_report(time.monotonic() - started)
    return True


def run_chunk(settings: EvalSettings, log: Path, deadline: float | None, **info: Any) -> bool:
    """One chunk (a ``moa eval run`` in-process), logged to ``log``; False when the deadline
    interrupted it."""
    records = settings.out_dir / "records"
    before = record_lines(records)
    started = time.time()
    finished = asyncio.run(_session(settings, deadline))
    row = {
        **info,
        "started": round(started, 1),
        "wall_s": round(time.time() - started, 1),
        "new_records": record_lines(records) - before,
        "interrupted": not finished,
    }
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    return finished


def report(settings: EvalSettings) -> None:
    """The report of what ``settings.out_dir`` holds, rebuilt without running anything."""
    with progress_for(sys.stderr) as progress:
        EvalSession(settings, progress=progress).write_report()


def checkpoint_cache() -> None:
    """Fold the cache's WAL into the database file, so the committed file is complete."""
    if CACHE.exists():
        with sqlite3.connect(CACHE) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def records_of(results: Path, row: Mapping[str, Any]) -> dict[str, EvalRecord]:
    """Item id -> the last record of the summary row's system (name and hash), as ``moa
    eval``'s own report reads it."""
    system = SystemInfo(name=row["name"], kind=row.get("kind", ""), hash=row["hash"])
    return ResultsDir(results, warn).records(system)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = found.group(1).strip() if found else cpu
    return f"{os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}"
