"""``moa trace`` and ``moa ask`` against hostile stored text and bad files (issue 27, items 5, 7
and 12): escapes are shown, never obeyed; bad numbers and non-store files are one-line errors;
a corrupt store never stops an answer; an empty filter and a prune of everything say so."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from moakit.cli.main import cli, main
from moakit.testing.fake_backend import Behavior, FakeBackend
from moakit.trace import TraceRecorder, TraceStore, TraceStoreError, traced_run
from trace_helpers import echo_stack, failing, fixed

# Retitles the window, clears the screen, turns text red, a C1 CSI (8-bit ESC [), and a
# right-to-left override that would reorder what follows.
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x9b31m\u202eevil"


async def record(db: Path, run_id: str = "beef0123456789") -> None:
    stack, _ = echo_stack(
        a=fixed("a", f"answer {ESCAPES}"),
        b=failing("b", f"upstream said {ESCAPES}"),
        agg=fixed("agg", f"final {ESCAPES}"),
    )
    with TraceStore(db) as store:
        async with stack:
            await traced_run(
                stack,
                [{"role": "user", "content": f"question {ESCAPES}"}],
                TraceRecorder(store, stack=stack),
                run_id=run_id,
            )


def run(*args: str, input: str | None = None) -> Result:
    # Wide enough that Rich does not wrap a line in the middle of what a test looks for.
    return CliRunner().invoke(cli, list(args), input=input, env={"COLUMNS": "500"})


def assert_inert(output: str) -> None:
    for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert raw not in output, repr(raw)


async def test_show_list_and_export_never_emit_terminal_controls(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    await record(db)
    shown = run("trace", "show", "beef", "--db", str(db), "--full")
    assert shown.exit_code == 0, shown.output
    assert_inert(shown.output)
    assert "final \\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mred\\x9b31m\\u202eevil" in shown.output
    assert "upstream said \\x1b]0;pwned" in shown.output
    for args in (("list",), ("list", "--json"), ("export", "beef0123456789")):
        out = run("trace", *args, "--db", str(db))
        assert out.exit_code == 0, out.output
        assert_inert(out.output)
    exported = json.loads(run("trace", "export", "beef0123456789", "--db", str(db)).output)
    assert exported["query"]["output"] == f"final {ESCAPES}"  # the same data, escaped


@pytest.mark.parametrize("limit", ["1e23", "100000000000000000000000", "0", "nan"])
async def test_a_bad_limit_is_a_clear_error(tmp_path: Path, limit: str) -> None:
    db = tmp_path / "t.db"
    await record(db)
    out = run("trace", "list", "--db", str(db), "-n", limit)
    assert out.exit_code == 2 and "Invalid value for '--limit'" in out.output
    assert "Traceback" not in out.output


@pytest.mark.parametrize("command", [("list",), ("show", "beef"), ("stats",), ("export", "beef")])
def test_a_file_that_is_not_a_store_is_a_clear_error(
    tmp_path: Path,
    command: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE notes (x)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    for path, why in ((passwd, "not a SQLite database"), (other, "not a moakit trace store")):
        monkeypatch.setattr("sys.argv", ["moa", "trace", *command, "--db", str(path)])
        with pytest.raises(SystemExit) as exited:
            main()
        err = capsys.readouterr().err
        assert exited.value.code == 2 and why in err and str(path) in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert other.read_bytes() == before  # another program's database is left untouched
    missing = run("trace", *command, "--db", str(tmp_path / "none.db"))
    assert missing.exit_code == 1 and "no trace store at" in missing.output
    assert not (tmp_path / "none.db").exists()  # reading never creates a store


def test_a_corrupt_store_never_stops_an_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "t.db"
    asyncio.run(record(db))
    data = bytearray(db.read_bytes())
    data[100:4000] = b"\xff" * 3900
    db.write_bytes(bytes(data))
    monkeypatch.setenv("MOAKIT_TRACE_DB", str(db))
    with pytest.raises(TraceStoreError, match="malformed"):
        TraceStore(db)
    with FakeBackend(default=Behavior(tokens=4)) as backend:
        cfg = tmp_path / "fake.toml"
        cfg.write_text(
            f'name = "fake"\n[defaults]\nbase_url = "{backend.base_url}"\n'
            '[[layers]]\nmembers = [{model = "p1"}]\n[aggregator]\nmodel = "agg"\n'
        )
        answered = CliRunner().invoke(cli, ["ask", "-c", str(cfg), "hello"])
    assert answered.exit_code == 0, answered.output
    assert "warning: cannot use" in answered.output and str(db) in answered.output
    served = CliRunner().invoke(cli, ["serve", "--no-preload"], standalone_mode=False)
    assert isinstance(served.exception, TraceStoreError)
    assert str(db) in str(served.exception) and "--no-trace" in str(served.exception)


async def test_prune_asks_before_deleting_everything(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    await record(db, "run-one")
    await record(db, "run-two")
    kept = run("trace", "prune", "--older-than", "0s", "--db", str(db), input="n\n")
    assert kept.exit_code == 1 and "deletes all 2 recorded queries" in kept.output
    with TraceStore(db) as store:
        assert store.stats().queries == 2
    gone = run("trace", "prune", "--older-than", "0s", "--db", str(db), "--yes")
    assert gone.exit_code == 0 and "deleted 2 queries" in gone.output


async def test_a_filter_that_matches_nothing_says_so(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    await record(db)
    out = run("trace", "list", "--db", str(db), "--stack", "nope")
    assert out.output.strip() == "no traces match --stack nope (1 recorded in all)"
