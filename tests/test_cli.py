from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import PROVIDER_KEY_VARS, is_key_variable


def moa(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moakit.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


def test_presets_lists_shipped_presets() -> None:
    proc = moa("presets")
    assert proc.returncode == 0
    for name in ("local", "together-moa", "moa-lite", "moa-gpt4o", "claude-trio"):
        assert name in proc.stdout


def test_config_check_reports_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[layers]]\nmembers = [{ model = "a", temperature = 9 }]\n[aggregator]\nmodel = "b"\n'
    )
    proc = moa("config", "check", str(bad))
    assert proc.returncode == 2
    assert "layers.0.members.0.temperature" in proc.stderr and "9" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_config_check_names_missing_key_variable(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '[[layers]]\nmembers = [{ model = "a", api_key_env = "MOA_NOPE_KEY" }]\n'
        '[aggregator]\nmodel = "b"\nprovider = "anthropic"\n'
    )
    proc = moa("config", "check", str(good))
    assert proc.returncode == 0
    assert "MOA_NOPE_KEY: NOT SET" in proc.stdout and "ANTHROPIC_API_KEY" in proc.stdout


def test_missing_key_is_one_line_error(tmp_path: Path) -> None:
    proc = moa("ask", "--preset", "claude-trio", "hi")
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "ANTHROPIC_API_KEY" in lines[0]
    assert proc.returncode == 2 and proc.stdout == ""


def test_child_processes_see_no_provider_keys() -> None:
    # Probe (run directly, and by the test below with keys exported): a child the suite starts
    # inherits the test process's environment, which conftest scrubs.
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print('\\n'.join(os.environ))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    leaked = [name for name in proc.stdout.splitlines() if is_key_variable(name)]
    assert leaked == []


def test_keys_in_the_developers_environment_never_reach_children() -> None:
    exported = {name: "sk-real-looking-0123456789" for name in sorted(PROVIDER_KEY_VARS)}
    exported["SOME_VENDOR_API_KEY"] = "sk-another-0123456789"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{__file__}::test_child_processes_see_no_provider_keys",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **exported},
    )
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_unknown_preset() -> None:
    proc = moa("ask", "--preset", "nope", "hi")
    assert proc.returncode == 2 and "unknown preset 'nope'" in proc.stderr


def test_user_preset_dir(tmp_path: Path, monkeypatch: object) -> None:
    home = Path(os.environ["MOAKIT_HOME"])
    (home / "presets").mkdir(parents=True)
    (home / "presets" / "mine.yaml").write_text(
        "layers:\n  - [{model: a}]\naggregator: {model: b}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "moakit.cli.main", "presets"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "mine" in proc.stdout


def test_all_proposers_failing_exits_nonzero(tmp_path: Path) -> None:
    cfg = tmp_path / "dead.toml"
    cfg.write_text(
        '[defaults]\nbase_url = "http://127.0.0.1:9/v1"\nretries = 0\n'
        '[[layers]]\nmembers = [{ model = "a" }]\n[aggregator]\nmodel = "b"\n'
    )
    proc = moa("ask", "--config", str(cfg), "hi")
    assert proc.returncode == 3
    assert "layer 1: 0 of 1 members answered" in proc.stderr
