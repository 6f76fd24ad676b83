"""What the long local runs share (``eval_local.py``, ``robustness_local.py``): run one
``moa eval run`` under a deadline, log its wall time, fold the cache's WAL into its file."""

from __future__ import annotations

import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MOA = Path(sys.executable).parent / "moa"
# The benchmark files (GSM8K): MOAKIT_EVAL_DATA, else the project's shared checkout beside it.
DATA = Path(os.environ.get("MOAKIT_EVAL_DATA") or ROOT.parent / "shared" / "data")
CACHE = ROOT / "results" / "eval-local" / "cache.sqlite"  # one cache: every run reuses calls


def check_data() -> None:
    if not (DATA / "gsm8k_train.jsonl").exists():
        sys.exit(f"no {DATA / 'gsm8k_train.jsonl'}: set MOAKIT_EVAL_DATA to the benchmark data")


def record_lines(records: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in records.glob("*.jsonl"))


def run_chunk(
    cmd: list[str], records: Path, log: Path, deadline: float | None, **info: Any
) -> bool:
    """One ``moa eval run``, logged to ``log``; False when the deadline interrupted it."""
    before = record_lines(records)
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    finished = True
    try:
        proc.wait(timeout=None if deadline is None else max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        # Every finished item is already on disk (one appended line each; the cache commits
        # per answer), so stopping loses only the items in flight. SIGTERM, not SIGINT: a
        # background job's children ignore SIGINT.
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        finished = False
    row = {
        **info,
        "started": round(started, 1),
        "wall_s": round(time.time() - started, 1),
        "new_records": record_lines(records) - before,
        "rc": proc.returncode,
        "interrupted": not finished,
    }
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    return finished


def checkpoint_cache() -> None:
    """Fold the cache's WAL into the database file, so the committed file is complete."""
    if CACHE.exists():
        with sqlite3.connect(CACHE) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def system_records(results: Path, row: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Item id -> the last record of the summary row's system (name and hash); a retried
    failure replaces itself, as in ``moa eval``'s own resume."""
    out: dict[str, dict[str, Any]] = {}
    for path in (results / "records").glob(f"*.{row['hash']}.jsonl"):
        for line in path.read_text().splitlines():
            rec = json.loads(line) if line.strip() else {}
            if rec.get("system") == row["name"]:
                out[rec["item_id"]] = rec
    return out


def right(rec: Mapping[str, Any]) -> bool | None:
    """Whether a closed-form record's final answer was right; None if it was not scored."""
    score = rec.get("score") or {}
    return None if rec.get("error") or score.get("correct") is None else bool(score["correct"])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = found.group(1).strip() if found else cpu
    return f"{os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}"
