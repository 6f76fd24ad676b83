"""``moa eval run`` end to end on the real embedded model: two GSM8K items, single model vs. a
one-layer MoA, tiny token budgets. Checks the pipeline, not the (tiny) model's accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from moakit.cli.main import cli

pytestmark = pytest.mark.embedded

DATA = Path(__file__).parent / "data"
TINY = """
name = "tiny"
[defaults]
provider = "local"
max_tokens = 8
[[layers]]
members = [{ model = "smollm2-135m", n = 2, seed = 1 }]
[aggregator]
model = "smollm2-135m"
seed = 7
max_tokens = 8
"""


def test_eval_run_on_the_embedded_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One llama.cpp thread: on a shared, oversubscribed CPU, threads spinning at llama.cpp's
    # barriers can make calls much slower (takes effect only if this test loads the model).
    monkeypatch.setenv("MOAKIT_LLAMA_THREADS", "1")
    stack = tmp_path / "tiny.toml"
    stack.write_text(TINY)
    out = tmp_path / "out"
    args = [
        "eval",
        "run",
        "--dataset",
        "gsm8k",
        "--data-dir",
        str(DATA),
        "--limit",
        "2",
        "--out",
        str(out),
        "--system",
        f"single:{stack}",
        "--system",
        f"moa:{stack}",
        "--no-plots",
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    single, moa = summary["systems"]
    assert (single["items"], moa["items"]) == (2, 2) and single["errors"] == moa["errors"] == 0
    assert moa["tokens_out"] > single["tokens_out"] > 0
    assert moa["cost_usd"] == 0.0  # the embedded provider is free, and says so
    records = [
        json.loads(x) for x in next((out / "records").glob("moa_tiny.*")).read_text().splitlines()
    ]
    assert all(len(r["layers"][0]) == 2 and r["final"] for r in records)
    assert all(m["correct"] is not None for r in records for m in r["layers"][0])
    # Re-running resumes: every item is done, so no model is called again.
    again = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert again.exit_code == 0
    assert json.loads((out / "summary.json").read_text())["run"]["cache"]["misses"] == 0
