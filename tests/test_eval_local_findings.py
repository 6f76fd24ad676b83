"""The computed "what the run shows" lines of docs/eval-local.md, on hand-built results whose
answers are known: the verdict must follow the numbers, whichever way they go."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from render_eval_local import aggregator_lines, findings, status

from moakit.eval.stats import mcnemar


def _results(tmp_path: Path, right: dict[str, list[bool]]) -> tuple[Path, dict[str, Any]]:
    """A results directory with one closed-form record per item per system."""
    (tmp_path / "records").mkdir()
    rows = []
    for index, (name, outcomes) in enumerate(right.items()):
        kind = name.split(":")[0]
        digest = f"{index:012d}"
        lines = [
            json.dumps(
                {
                    "item_id": f"q{i}",
                    "system": name,
                    "error": None,
                    "score": {"value": float(ok), "correct": ok},
                }
            )
            for i, ok in enumerate(outcomes)
        ]
        (tmp_path / "records" / f"{kind}.{digest}.jsonl").write_text("\n".join(lines) + "\n")
        n = len(outcomes)
        rows.append(
            {
                "name": name,
                "kind": kind,
                "hash": digest,
                "scored": n,
                "tokens_in": 100 * n if kind == "single" else 400 * n,
                "tokens_out": 100 * n if kind == "single" else 400 * n,
                "latency_s_mean": 10.0 if kind == "single" else 30.0,
            }
        )
    return tmp_path, {"systems": rows, "analyses": {}, "collaborativeness": []}


@pytest.mark.parametrize(
    ("moa_right", "answer", "side"),
    [
        (30, "**yes**", "ahead"),
        (0, "**no**", "behind"),
        (15, "**not shown** on 30 items", "no measurable difference"),
    ],
)
def test_the_verdict_follows_the_paired_test(
    tmp_path: Path, moa_right: int, answer: str, side: str
) -> None:
    # single is right on items 0-14; moa on the first `moa_right` items of a shuffled order.
    single = [i < 15 for i in range(30)]
    order = [(7 * i) % 30 for i in range(30)]
    moa = [False] * 30
    for i in order[:moa_right]:
        moa[i] = True
    if moa_right == 15:
        moa = single[:]  # the same answers: a gap of exactly 0
    directory, summary = _results(tmp_path, {"single:s": single, "moa:s": moa})
    lines = findings(directory, summary)
    verdict = next(line for line in lines if line.startswith("- Does MoA pay off here?"))
    assert answer in verdict
    assert verdict.endswith(f"{side}.")
    assert "4.0× the tokens and 3.0× the latency" in verdict


def test_a_gap_only_the_bootstrap_ci_calls_is_a_lean_not_a_finding(tmp_path: Path) -> None:
    # The committed GSM8K shape: of 100 items, 8 only MoA got right and 18 only single did.
    # The paired bootstrap CI then excludes 0 while the exact McNemar p is about 0.08.
    # Both right on 10 more, in a shuffled order (the bootstrap's resamples follow positions).
    order = [(11 * i) % 100 for i in range(100)]
    single = [False] * 100
    moa = [False] * 100
    for i in order[:18]:
        single[i] = True
    for i in order[18:26]:
        moa[i] = True
    for i in order[26:36]:
        single[i] = moa[i] = True
    # Items in the order the report pairs them (sorted ids: the bootstrap follows positions).
    ids = sorted(range(100), key=lambda i: f"q{i}")
    c = mcnemar([moa[i] for i in ids], [single[i] for i in ids])
    assert c.high < 0 < c.p_value - 0.05  # the premise: the two tests disagree
    directory, summary = _results(tmp_path, {"single:s": single, "moa:s": moa})
    verdict = next(
        line for line in findings(directory, summary) if line.startswith("- Does MoA pay off")
    )
    assert "leans behind" in verdict
    assert "MoA is behind" not in verdict
    assert verdict.endswith("McNemar p ≥ 0.05: not significant).")


def test_no_verdict_without_a_scored_moa_system(tmp_path: Path) -> None:
    directory, summary = _results(tmp_path, {"single:s": [True, False]})
    assert findings(directory, summary) == []


def test_aggregation_is_placed_between_the_average_and_the_best_proposal() -> None:
    curve = [
        {"layer": 1, "mean": 0.2, "best_of_layer": 0.6, "n": 30},
        {"layer": "final", "mean": 0.4, "best_of_layer": None, "n": 10},
    ]
    matrix = [[1.0, 0.8, 0.6], [0.8, 1.0, 0.7], [0.6, 0.7, 1.0]]
    lines = aggregator_lines(
        "moa:s",
        {
            "layer_curve": curve,
            "minority_majority": {
                "minority_items": 4,
                "minority_preserved": 1,
                "majority_items": 5,
                "majority_overturned": 2,
            },
            "error_correlation": {"labels": ["a", "b", "c"], "matrix": matrix},
        },
    )
    assert (
        "the final answer is right on 40%, 50% of the way from the average to the best"
        in (lines[0])
    )
    assert "kept it on 1 of 4 items; a right majority was overturned on 2 of 5" in lines[1]
    assert "+0.70 on average" in lines[2] and "mostly the same bet" in lines[2]
    worse = [dict(curve[0]), {**curve[1], "mean": 0.1}]
    assert "the aggregator adds nothing here" in aggregator_lines("m", {"layer_curve": worse})[0]


def test_status_counts_every_full_system_not_only_single_and_moa(tmp_path: Path) -> None:
    """The status line once took the minimum over single and MoA alone, so a run where the
    ranker lagged behind read as further along than it was."""
    rows = [
        {"name": "single:local", "scored": 100},
        {"name": "moa:local", "scored": 90},
        {"name": "ranker:local", "scored": 80},
        {"name": "moa:local-staircase", "scored": 20},
        {"name": "collab:local:qwen#1", "scored": 20},
    ]
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "summary.json").write_text(json.dumps({"systems": rows}))
    specs = {
        "gsm8k": [
            "single:local",
            "moa:local,cache=off",
            "moa:local-staircase,items=20",
            "ranker:local",
            "collab:local,items=20",
        ]
    }
    lines = status(tmp_path, {"gsm8k": 100}, specs, [])
    line = next(x for x in lines if x.startswith("- gsm8k"))
    assert line.startswith("- gsm8k: 80 of 100 items scored by every full system (**partial**)")
    assert "`ranker:local` 80" in line and "staircase" not in line and "collab" not in line


def test_the_report_and_the_page_read_one_gap_alike(tmp_path: Path) -> None:
    """``moa eval``'s report and the page word the same records the same way: the lean of the
    committed GSM8K shape is a lean in both (one rule, ``moakit.eval.readings``)."""
    from eval_driver import records_of

    from moakit.eval.report import summarize
    from moakit.eval.systems import SystemInfo

    order = [(11 * i) % 100 for i in range(100)]
    single, moa = [False] * 100, [False] * 100
    for i in order[:18]:
        single[i] = True
    for i in order[18:26]:
        moa[i] = True
    directory, summary = _results(tmp_path, {"single:s": single, "moa:s": moa})
    infos = [SystemInfo(name=r["name"], kind=r["kind"], hash=r["hash"]) for r in summary["systems"]]
    records = {i.name: list(records_of(directory, i.model_dump()).values()) for i in infos}
    report = summarize(
        infos, records, dataset="d", scorer="number", closed_form=True, scale=(0.0, 1.0)
    )
    (row,) = report["comparisons"]
    assert row["reading"].startswith("leaning behind")
    verdict = next(
        line for line in findings(directory, summary) if line.startswith("- Does MoA pay off")
    )
    assert verdict.endswith(f": {row['reading']}.")
