from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from moakit.cli.main import cli
from moakit.cli.trace import parse_duration, render_trace
from moakit.trace import TraceRecorder, TraceStore, traced_run
from trace_helpers import echo_stack, failing, fixed

# Text that Rich would swallow or choke on if it were ever parsed as markup.
HOSTILE = "keep [bold]this[/bold] and [/INST] and [red]that[/red] literally"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "cli.db"


async def record_run(db: Path, run_id: str = "cafe0123456789") -> None:
    stack, _ = echo_stack(
        a=fixed("a", HOSTILE), b=failing("b", "boom [/INST] [bold]"), agg=fixed("agg", HOSTILE)
    )
    with TraceStore(db) as store:
        async with stack:
            await traced_run(
                stack,
                [{"role": "user", "content": "q?"}],
                TraceRecorder(store, stack=stack),
                run_id=run_id,
            )


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


async def test_list_show_export(db: Path) -> None:
    await record_run(db)
    listing = invoke("trace", "list", "--db", str(db))
    assert "cafe01234567" in listing and "trace-test" in listing and "complete" in listing
    assert invoke("trace", "list", "--db", str(db), "--status", "failed").strip() == (
        "no traces match --status failed (1 recorded in all)"
    )
    assert "cafe" in invoke("trace", "list", "--db", str(db), "--stack", "trace-test")
    assert "cafe" not in invoke("trace", "list", "--db", str(db), "--stack", "other")
    assert "cafe" in invoke("trace", "list", "--db", str(db), "--since", "1h")
    rows = [
        json.loads(line) for line in invoke("trace", "list", "--db", str(db), "--json").splitlines()
    ]
    assert [r["id"] for r in rows] == ["cafe0123456789"]

    shown = invoke("trace", "show", "cafe01", "--db", str(db))
    assert HOSTILE in shown  # printed literally, markup and all
    assert "boom [/INST] [bold]" in shown
    for part in ("layer 1", "layer 2", "aggregator", "final answer", "1/2 answered"):
        assert part in shown

    exported = json.loads(invoke("trace", "export", "cafe0123456789", "--db", str(db)))
    with TraceStore(db) as store:
        record = store.get("cafe0123456789")
    assert record is not None
    assert exported == json.loads(json.dumps(record.to_json()))
    assert exported["query"]["output"] == HOSTILE


async def test_show_marks_failures_red(db: Path) -> None:
    await record_run(db)
    with TraceStore(db) as store:
        record = store.get("cafe0123456789")
    assert record is not None
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system="standard", width=200)
    console.print(render_trace(record))
    lines = buffer.getvalue().splitlines()
    errors = [line for line in lines if "boom [/INST] [bold]" in line]
    assert errors and all("\x1b[31m" in line for line in errors)  # red
    [failed] = [line for line in lines if "openai/b" in line]
    assert "\x1b[31m✗" in failed
    [answered] = [line for line in lines if "openai/a\x1b" in line]
    assert "\x1b[32m✓" in answered and "\x1b[31m" not in answered


async def test_unknown_id_is_a_clear_error(db: Path) -> None:
    await record_run(db)
    result = CliRunner().invoke(cli, ["trace", "show", "nope", "--db", str(db)])
    assert result.exit_code == 1 and "no trace with id 'nope'" in result.output


async def test_prune_and_stats(db: Path) -> None:
    await record_run(db, "old-run")
    await record_run(db, "new-run")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE queries SET start_time = start_time - 31 * 86400 WHERE id = 'old-run'")
    conn.commit()
    conn.close()
    stats = json.loads(invoke("trace", "stats", "--db", str(db), "--json"))
    assert stats["queries"] == 2 and stats["calls"] == 8 and stats["file_bytes"] > 0
    assert "queries:  2" in invoke("trace", "stats", "--db", str(db))
    assert "deleted 1 queries" in invoke("trace", "prune", "--older-than", "30d", "--db", str(db))
    assert json.loads(invoke("trace", "stats", "--db", str(db), "--json"))["queries"] == 1
    bad = CliRunner().invoke(cli, ["trace", "prune", "--older-than", "soon", "--db", str(db)])
    assert bad.exit_code == 2 and "expected a duration" in bad.output


def test_parse_duration() -> None:
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("1.5h") == 5400
    assert parse_duration("2w") == 14 * 86400


async def test_default_store_is_under_moakit_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MOAKIT_TRACE_DB", raising=False)
    monkeypatch.setenv("MOAKIT_HOME", str(tmp_path / "home"))
    await record_run(tmp_path / "home" / "traces.db")
    stats = json.loads(invoke("trace", "stats", "--json"))
    assert stats["path"] == str(tmp_path / "home" / "traces.db") and stats["queries"] == 1
    assert "cafe01234567" in invoke("trace", "list")
