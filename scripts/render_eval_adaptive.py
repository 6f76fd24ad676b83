"""``docs/eval-adaptive.md`` from ``results/eval-adaptive/`` (called by
``scripts/eval_adaptive.py``). Every number is read from the run's summaries; the prose around
them is fixed, and each target's reading is computed, never typed in."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eval_driver import load_jsonl, records_of

from moakit.answers import extract_stated_answer
from moakit.config import load_preset
from moakit.eval.datasets import load_dataset
from moakit.eval.routing import examples, judge
from moakit.routing import KnnRouter

FULL = "moa:diverse"  # the adaptive systems' full form (as in eval_adaptive.py)

INTRO = """\
# Adaptive compute on the embedded model: the grid, the chosen `local` policy, the frontier

The sharpest objection to MoA is its bill: every query pays the whole panel. moakit's early
exit and cascades (README, "Adaptive compute") spend the panel only when the first answers
disagree. This page measures them on the embedded Qwen2.5-Coder-0.5B (no network, no key) and
chooses the `local` preset from the grid.

Produced by `make eval-adaptive` (`scripts/eval_adaptive.py`: the `choose` phase, then the
`report` phase, then this page; the same command resumes a stopped run). Every number below is
read from `results/eval-adaptive/`; none is typed in.
"""

HOW = """\
## What is measured, and how

- **Choosing and reporting are kept apart.** The candidates were chosen by a rule written
  before anything ran (quoted below), applied to the train summary alone (GSM8K train items
  0-39). The report items (GSM8K items 1000-1199 of the same file, and the first 40 HumanEval
  problems) were not run, nor looked at, until the choice was saved in `choice.json`.
- **The grid.** Three low-temperature members with different strategies, each told only to
  end with a line `Answer: X` (general-purpose instructions: no GSM8K format, since the chosen
  policy becomes the `local` preset for any question): *reason* (step by step, greedy),
  *program* (write a Python program and run it with the built-in `python` tool, in the
  HumanEval scorer's sandbox, then answer from its output; greedy; `tool_choice =
  "required"`, since told only in words the 0.5B model wrote programs and imagined their
  output), *check* (solve, then check each step and correct; temperature 0.2). Then an
  aggregator (greedy) that synthesizes. `diverse` runs them all (full MoA); `diverse-exit`
  answers without the aggregator when the three state the same final answer (early exit, the
  `final` answer extractor); `diverse-cascade` starts with reason and program and asks check
  and the aggregator only when those two disagree. The single greedy model
  (`single:greedy`) is the reason member alone.
- **Calls** count every model call of an item (a tool-using member's second request, after
  its tool ran, is a call), cache hits included: the cache only saves this run's compute, and
  every system is charged what it asked for. Tokens likewise. Cost is $0 (embedded).
- **Latency** is per item with two items in flight at once (the embedded scheduler decodes
  their sequences together), on a 2-core machine; compare latencies within a table. In this
  run, the held-out `single:greedy` items 1000-1039 also shared the machine with a test suite,
  and the run was paused for four minutes (a benchmark window) while some were in flight;
  later, HumanEval 0-19 and GSM8K 1060-1099 shared it with short benchmarks and a second test
  suite (10 minutes). Systems after the first are mostly answered from the cache (below). The
  latency plot is not a measurement of speed.
- **Tests.** 95% CIs are percentile bootstraps; paired tests are exact McNemar on the items
  both systems answered (`moa eval`'s own report machinery).
"""


def document(results: Path, rule: str, runs: Sequence[Mapping[str, Any]], machine: str) -> str:
    choice_file = results / "choice.json"
    chosen = json.loads(choice_file.read_text())["chosen"] if choice_file.exists() else None
    out = [INTRO, HOW, _grid(), "## Choosing (GSM8K train items 0-39)", ""]
    train = _summary(results / "train")
    if train is None:
        out.append("Not run yet.")
    else:
        out += _spend_table(train)
        out += ["", "The proposals of `moa:diverse`:", "", *_members(results / "train", train)]
        out += ["", f"The rule: {rule}", ""]
        unfinished = "No choice yet (the train chunk is unfinished)."
        out.append(f"**Chosen: `{chosen}`.**" if chosen else unfinished)
    heldout = _summary(results / "gsm8k-heldout")
    out += ["", "## Report: GSM8K held-out items", ""]
    if heldout is None or chosen is None:
        out.append("Not run yet.")
    else:
        items = max(r["items"] for r in heldout["systems"])
        out += [
            f"Items 1000 to {1000 + items - 1} ({items} of the 200 planned: see the run log).",
            "",
        ]
        out += _spend_table(heldout)
        out += [
            "",
            "The proposals of `moa:diverse`:",
            "",
            *_members(results / "gsm8k-heldout", heldout),
        ]
        out += ["", "### The targets", ""]
        out += _targets(heldout, chosen)
        out += ["", *_plot("gsm8k-heldout")]
    out += ["", "## The router seam: the `knn` router on these records", "", *_router(results)]
    humaneval = _summary(results / "humaneval")
    out += ["", "## Report: HumanEval (first 40 problems)", ""]
    if humaneval is None or chosen is None:
        out.append("Not run (the run's time went to the GSM8K items; see the run log).")
    else:
        out += _spend_table(humaneval)
        out += ["", "The same measures as for GSM8K (the issue sets its targets there):", ""]
        out += _targets(humaneval, chosen)
        out += ["", *_plot("humaneval")]
    out += [
        "",
        "## BFCL",
        "",
        "Not run for this grid (the run's 2 cores went to the items above). What it would "
        "show about spend is known without running: while the caller's tools are in play the "
        "engine never exits early (the answer is the aggregator's to act on), so on a BFCL item "
        "`local` runs as full advisory MoA and makes `moa:diverse`'s calls. "
        "`docs/eval-bfcl.md` measures advisory MoA against the single model on BFCL.",
    ]
    out += ["", "## The run", "", f"Machine: {machine}.", ""]
    out += ["| phase | dataset | started (UTC) | wall s | new records | interrupted |"]
    out += ["|---|---|---|---|---|---|"]
    for row in runs:
        started = datetime.fromtimestamp(row["started"], UTC).strftime("%Y-%m-%d %H:%M")
        out.append(
            f"| {row.get('phase', '')} | {row.get('dataset', 'gsm8k')} | {started} | "
            f"{row['wall_s']:.0f} | {row['new_records']} | "
            f"{'yes' if row['interrupted'] else 'no'} |"
        )
    for name in ("train", "gsm8k-heldout", "humaneval"):
        report = results / name / "report.md"
        if report.exists():
            out += ["", f"## The full `moa eval` report: {name}", ""]
            out += _embed(report.read_text(), f"../results/eval-adaptive/{name}")
    return "\n".join(out) + "\n"


def _grid() -> str:
    lines = ["## The candidates", "", "Members (every candidate has the same three):", ""]
    lines += ["| member | temperature | tools | instruction |", "|---|---|---|---|"]
    for spec in load_preset("diverse").layer_members(0):
        tools = ", ".join(spec.tools) or "–"
        if spec.tools and spec.tool_choice == "required":
            tools += " (must run one program, then answers)"
        lines.append(f"| {spec.label} | {spec.temperature} | {tools} | {spec.system} |")
    lines += ["", "| preset | policy |", "|---|---|"]
    for name in ("diverse", "diverse-exit", "diverse-cascade"):
        lines.append(f"| `{name}` | {_adaptive(load_preset(name).adaptive)} |")
    return "\n".join(lines) + "\n"


def _adaptive(adaptive: Any) -> str:
    if adaptive is None:
        return "none (full MoA)"
    parts = []
    if adaptive.early_exit is not None:
        parts.append(f"early exit: `{adaptive.early_exit.rule}` ({adaptive.early_exit.extractor})")
    if adaptive.cascade is not None:
        parts.append(f"cascade: first {adaptive.cascade.first} ({adaptive.cascade.order})")
    return "; ".join(parts) or "none"


def _summary(directory: Path) -> dict[str, Any] | None:
    path = directory / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def _spend_table(summary: Mapping[str, Any]) -> list[str]:
    spend = summary.get("frontier", {}).get("per_item", {})
    lines = [
        "| system | n | accuracy [95% CI] | calls/item | tokens/item | latency s | cache hits "
        "| early exits | escalations |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["systems"]:
        p = spend.get(row["name"], {})
        s = row["score"]
        lines.append(
            f"| `{row['name']}` | {s['n']} | {s['mean']:.3f} [{s['low']:.3f}, {s['high']:.3f}] | "
            f"{_f(p.get('calls_mean'), 2)} | {_f(p.get('tokens_mean'), 0)} | "
            f"{_f(p.get('latency_s_mean'), 1)} | {row.get('cache_hits', 0)}/{row.get('calls', 0)} "
            f"| {p.get('early_exits', 0)} | {p.get('escalations', 0)} |"
        )
    lines += [
        "",
        "Systems run after `moa:diverse` ask its members' questions again and are answered from "
        "the response cache (answers with tool calls too, since 58f37e5; before it, from the "
        "train items to held-out item 1063, a program-writing member's first round was decoded "
        "again), so their latencies are not what they would take alone; calls and tokens are.",
    ]
    return lines


def _members(directory: Path, summary: Mapping[str, Any]) -> list[str]:
    """What the proposals of full MoA say: each member's accuracy, and how often the cascade's
    first two (reason, program) state the same answer and are then right."""
    row = next((r for r in summary["systems"] if r["name"] == "moa:diverse"), None)
    if row is None:
        return []
    records = list(records_of(directory, row).values())
    layer1 = [r.layers[0] for r in records if r.layers]
    if not layer1:
        return []
    labels = [m.label for m in layer1[0]]
    lines = ["| member | right | stated an answer |", "|---|---|---|"]
    for i, label in enumerate(labels):
        right = sum(1 for ms in layer1 if ms[i].correct)
        stated = sum(1 for ms in layer1 if extract_stated_answer(ms[i].output or "") is not None)
        lines.append(f"| {label} | {right}/{len(layer1)} | {stated}/{len(layer1)} |")
    any_right = sum(1 for ms in layer1 if any(m.correct for m in ms))
    final_right = sum(1 for r in records if r.right)
    agree = [
        ms
        for ms in layer1
        if extract_stated_answer(ms[0].output or "") is not None
        and extract_stated_answer(ms[0].output or "") == extract_stated_answer(ms[1].output or "")
    ]
    agree_right = sum(1 for ms in agree if ms[0].correct)
    lines += [
        "",
        f"- At least one proposal is right on {any_right} of {len(layer1)} items; the "
        f"aggregated answer on {final_right}.",
        f"- {labels[0]} and {labels[1]} state the same final answer on {len(agree)} of "
        f"{len(layer1)} items (the cascade's early exits), and that answer is right on "
        f"{agree_right} of them.",
    ]
    return lines


def _router(results: Path) -> list[str]:
    """The ``knn`` router (issue 24's router seam) trained on the train items' ``moa:diverse``
    records and judged on the held-out ones': which members it would call."""
    splits = []
    for name in ("train", "gsm8k-heldout"):
        summary = _summary(results / name)
        row = next((r for r in (summary or {}).get("systems", []) if r["name"] == FULL), None)
        if row is None:
            return ["Not measured yet (it needs `moa:diverse` records of both splits)."]
        records = records_of(results / name, row)
        items = load_dataset("gsm8k", offset=0 if name == "train" else 1000, limit=200).items
        splits.append(examples(items, records))
    train, held_out = splits
    if not train or not held_out:
        return ["Not measured yet."]
    lines = [
        f"Trained on the {len(train)} train items, judged on the {len(held_out)} held-out items "
        "(`moakit.eval.routing`, as `moa eval route` does within one results directory):",
        "",
        "| k | members called per item (of 3) | a called member right | any member right "
        "| its top member right |",
        "|---|---|---|---|---|",
    ]
    for k in (3, 5, 9):
        j = judge(KnnRouter(train, k=k), held_out)
        lines.append(
            f"| {k} | {j.members_mean:.2f} | {j.any_right_routed:.1%} | {j.any_right_all:.1%} "
            f"| {j.best_routed:.1%} |"
        )
    return lines


def _comparisons(summary: Mapping[str, Any]) -> list[str]:
    lines = ["| system | vs. | diff [95% CI] | McNemar p | only system / only reference right |"]
    lines.append("|---|---|---|---|---|")
    rows = list(summary.get("comparisons", []))
    rows += summary.get("frontier", {}).get("adaptive_vs_full", [])
    for c in rows:
        lines.append(
            f"| `{c['system']}` | `{c['reference']}` | {c['diff'] * 100:+.1f} pp "
            f"[{c['low'] * 100:+.1f}, {c['high'] * 100:+.1f}] (n={c['n']}) | "
            f"{c['p_value']:.3f} | {c['a_only']}/{c['b_only']} |"
        )
    return lines


def _targets(summary: Mapping[str, Any], chosen: str) -> list[str]:
    spend = summary["frontier"]["per_item"]
    full = next(
        (
            c
            for c in summary["frontier"]["adaptive_vs_full"]
            if c["system"] == chosen and c["reference"] == "moa:diverse"
        ),
        None,
    )
    single = next(
        (
            c
            for c in summary.get("comparisons", [])
            if c["system"] == chosen and c["reference"] == "single:greedy"
        ),
        None,
    )
    ratio = spend[chosen]["calls_mean"] / spend["moa:diverse"]["calls_mean"]
    lines = [*_comparisons(summary), ""]
    lines.append(
        f"- **Calls: `{chosen}` makes {ratio:.0%} of full MoA's calls** "
        f"({spend[chosen]['calls_mean']:.2f} vs {spend['moa:diverse']['calls_mean']:.2f} per "
        f"item; target <= 50%: {'met' if ratio <= 0.5 else 'missed'})."
    )
    if full is not None:
        loss = full["diff"] < 0 and full["p_value"] < 0.05
        lines.append(
            f"- **Against full MoA: {full['diff'] * 100:+.1f} pp, "
            f"McNemar p {full['p_value']:.3f}** "
            f"(target: no significant loss: {'missed' if loss else 'met'})."
        )
    if single is not None:
        beats = single["diff"] > 0 and single["p_value"] < 0.05
        lines.append(
            f"- **Against the single greedy model: {single['diff'] * 100:+.1f} pp, McNemar p "
            f"{single['p_value']:.4f}** (target: ahead with p < 0.05: "
            f"{'met' if beats else 'missed'})."
        )
    return lines


def _plot(name: str) -> list[str]:
    return [f"![frontier](../results/eval-adaptive/{name}/plots/frontier.png)"]


def _embed(report: str, base: str) -> list[str]:
    """The report two heading levels down, its plot paths made relative to docs/."""
    out = []
    for line in report.splitlines():
        if line.startswith("#"):
            line = "##" + line
        out.append(re.sub(r"`plots/([^`]+)`", rf"`{base}/plots/\1`", line))
    return out


def _f(value: Any, digits: int) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def render(results: Path, rule: str, doc: Path, machine: str) -> None:
    doc.write_text(document(results, rule, load_jsonl(results / "runs.jsonl"), machine))
