"""``docs/eval-local.md`` from the results of ``scripts/eval_local.py``: every number in it is
read from ``results/eval-local/`` (the ``moa eval`` summaries, records and chunk log), none is
written by hand, so re-rendering after more items ran updates all of it. Records are read,
compared and their gaps worded by ``moakit.eval`` itself (``records_of``, ``report.compare``,
``readings``): the page and ``moa eval``'s own report never read the same data differently."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from eval_driver import records_of, warn

from moakit.eval import stats
from moakit.eval.kinds import build_systems
from moakit.eval.readings import difference, direction
from moakit.eval.records import EvalRecord, read_records
from moakit.eval.report import compare

TITLES = {"gsm8k": "GSM8K (exact match on the final number)", "humaneval": "HumanEval (pass@1)"}


def document(
    results: Path,
    full: Mapping[str, int],
    systems: Mapping[str, Sequence[str]],
    runs: Sequence[dict[str, Any]],
    machine: str,
) -> str:
    lines = [
        "# `moa eval` on the embedded model: GSM8K and HumanEval on two CPU cores",
        "",
        "Produced by `make eval-local` (`scripts/eval_local.py`, which runs `moa eval run` in",
        "chunks that alternate between the datasets, then renders this page from",
        "`results/eval-local/`). The run is resumable: the same command continues it. Every",
        "number below is read from the results; none is typed in.",
        "",
        f"- Machine: {machine}.",
        "- Model: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF, in-process llama.cpp (the `local`",
        "  preset: three samples with varied seeds and temperatures, decoded as one batch, then",
        "  one aggregator call; straggler grace 0.25, so the third sample is sometimes cut).",
        "- Systems: " + "; ".join(f"{d}: `{'`, `'.join(s)}`" for d, s in systems.items()) + ".",
        "  `items=N` runs a system on the first N items only; paired comparisons use the items",
        "  both systems have. `ranker` picks among the proposals `moa:local` already made",
        "  (served from the response cache), so its latency is the ranking call's alone;",
        "  `majority` votes over `moa:local`'s recorded proposals and makes no call.",
    ]
    lines += status(results, full, systems, runs)
    for dataset in full:
        summary_path = results / dataset / "summary.json"
        if not summary_path.exists():
            continue
        summary = json.loads(summary_path.read_text())
        lines += ["", f"## {TITLES.get(dataset, dataset)}", ""]
        lines += headline(results / dataset, summary)
        lines += findings(results / dataset, summary)
        report = (results / dataset / "report.md").read_text()
        lines += ["", "### The full `moa eval` report", ""]
        lines += embed(report, f"../results/eval-local/{dataset}")
        plots = sorted((results / dataset / "plots").glob("*.png"))
        for plot in plots:
            lines += ["", f"![{plot.stem}](../results/eval-local/{dataset}/plots/{plot.name})"]
    return "\n".join(lines) + "\n"


def full_names(specs: Sequence[str]) -> set[str]:
    """Report names of the systems that run on every item (no ``items=``), as ``moa eval``
    itself names them (a collab spec expands to one system per member)."""
    return {s.name for s in build_systems(list(specs)) if s.max_items is None}


def status(
    results: Path,
    full: Mapping[str, int],
    systems: Mapping[str, Sequence[str]],
    runs: Sequence[dict[str, Any]],
) -> list[str]:
    lines = ["", "## Status and wall time", ""]
    for dataset, target in full.items():
        summary_path = results / dataset / "summary.json"
        if not summary_path.exists():
            lines.append(f"- {dataset}: not started (target {target} items).")
            continue
        rows = json.loads(summary_path.read_text())["systems"]
        names = full_names(systems.get(dataset, ()))
        core = [r for r in rows if r["name"] in names]
        done = min((r["scored"] for r in core), default=0)
        state = "complete" if done >= target else "**partial**"
        line = f"- {dataset}: {done} of {target} items scored by every full system ({state})"
        if done < target and len({r["scored"] for r in core}) > 1:
            line += ": " + ", ".join(f"`{r['name']}` {r['scored']}" for r in core)
        lines.append(line + ".")
    worked = [r for r in runs if r.get("new_records", 1)]
    compute = sum(item_seconds(results / d) for d in full)
    lines += [
        f"- Time spent answering and scoring items so far: {compute / 3600:.2f} h (the sum of "
        "every record's start-to-finish time, failed attempts included; items run one at a "
        "time, so this is wall time less model loading and report writing).",
        "- Embedded calls: until 2026-12-01 14:08 UTC (record timestamps) the eval put "
        "its own limit of one call at a time on the embedded model, so the three samples of "
        "`local` ran one after another and the preset's straggler policy (once two answered, "
        "wait a quarter as long again) usually cut the third; since then they are decoded as "
        "one batch and all three usually answer. Each sample's answer is the same either way "
        "(batched decoding is bit-for-bit equal); what changed is how many reached the "
        "aggregator: " + proposals_per_item(results, full) + ".",
        f"- Chunks logged by the driver ({len(worked)} that ran items, from "
        "`results/eval-local/runs.jsonl`; each includes loading the model):",
        "",
        "| chunk | dataset | up to item | wall s | new records | interrupted |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(worked, 1):
        lines.append(
            f"| {i} | {r['dataset']} | {r['limit']} | {float(r['wall_s']):.0f} | "
            f"{r.get('new_records', '–')} | {'yes' if r.get('interrupted') else 'no'} |"
        )
    return lines


BATCHED_SINCE = 1796134116  # 2026-12-01 14:08:36 UTC: the eval stopped serializing local calls


def proposals_per_item(results: Path, full: Mapping[str, int]) -> str:
    """Mean answered first-layer proposals per `moa:local` item, before and after."""
    parts = []
    for dataset in full:
        for path in (results / dataset / "records").glob("moa_local.*.jsonl"):
            before: list[int] = []
            after: list[int] = []
            for rec in read_records(path, warn):
                if rec.error or not rec.layers:
                    continue
                answered = sum(1 for m in rec.layers[0] if m.output and not m.error)
                started = rec.started_at or 0.0
                (before if started < BATCHED_SINCE else after).append(answered)
            cells = [
                f"{label} {sum(xs) / len(xs):.2f} over {len(xs)} items"
                for label, xs in (("before", before), ("after", after))
                if xs
            ]
            parts.append(f"{dataset} `moa:local` proposals per item " + ", ".join(cells))
    return "; ".join(parts) or "no `moa:local` records yet"


def item_seconds(directory: Path) -> float:
    total = 0.0
    for path in (directory / "records").glob("*.jsonl"):
        for rec in read_records(path, warn):
            if rec.finished_at and rec.started_at:
                total += rec.finished_at - rec.started_at
    return total


def paired(a: Mapping[str, EvalRecord], b: Mapping[str, EvalRecord]) -> stats.Comparison | None:
    """``a`` against ``b`` on the items both scored: the comparison ``moa eval``'s report
    makes (exact McNemar, right/wrong)."""
    return compare(list(a.values()), list(b.values()), closed_form=True)


def headline(directory: Path, summary: Mapping[str, Any]) -> list[str]:
    """Each system against the single model, and staircase against standard MoA, paired on
    the items both have (exact McNemar), with latency beside the score."""
    rows = {r["name"]: r for r in summary["systems"]}
    single = next((n for n, r in rows.items() if r["kind"] == "single"), None)
    moa = next((n for n, r in rows.items() if r["kind"] == "moa" and "staircase" not in n), None)
    lines = [
        "| system | score [95% CI] | n | vs. | diff [95% CI] | McNemar p | "
        "mean latency s | mean TTFT s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        if row["kind"] == "collab":
            continue
        against = baseline(row, single, moa)
        cmp_cells = "– | – | –"
        if against and against != name:
            c = paired(records_of(directory, row), records_of(directory, rows[against]))
            test = "– | –"
            if c is not None:
                test = f"{c.diff:+.3f} [{c.low:+.3f}, {c.high:+.3f}] (n={c.n}) | {c.p_value:.3f}"
            cmp_cells = f"`{against}` | {test}"
        s = row["score"]
        lines.append(
            f"| `{name}` | {_f(s['mean'])} [{_f(s['low'])}, {_f(s['high'])}] | {row['scored']} | "
            f"{cmp_cells} | {_f(row['latency_s_mean'], 1)} | {_f(row['ttft_s_mean'], 1)} |"
        )
    return lines


def baseline(row: Mapping[str, Any], single: str | None, moa: str | None) -> str | None:
    """What a system is measured against: the strategies that change how MoA combines the
    same proposals (staircase timing, the ranker's picking) against standard MoA, so the gap
    is the strategy's own; everything else against the single model."""
    return moa if row["kind"] == "ranker" or "staircase" in row["name"] else single


def embed(report: str, base: str) -> list[str]:
    """The report one heading level down, its relative plot paths made relative to docs/."""
    out = []
    for line in report.splitlines():
        if line.startswith("#"):
            line = "###" + line.lstrip("#") if line.startswith("# ") else "#" * 2 + line
        out.append(re.sub(r"`plots/([^`]+)`", rf"`{base}/plots/\1`", line))
    return out


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{float(value):.{digits}f}"


# -- what the run shows, in words decided by the numbers ------------------------------------


def findings(directory: Path, summary: Mapping[str, Any]) -> list[str]:
    """The answer to "does MoA pay off here?" and what the MoA analyses say, for one dataset.
    Every verdict below is chosen by a number from the results, never typed in."""
    rows = {r["name"]: r for r in summary["systems"]}
    single = next((n for n, r in rows.items() if r["kind"] == "single"), None)
    moa = next((n for n, r in rows.items() if r["kind"] == "moa" and "staircase" not in n), None)
    if not single or not moa or not rows[moa]["scored"]:
        return []
    outcomes = {n: records_of(directory, r) for n, r in rows.items()}
    lines = ["", "What the run shows:", ""]
    lines.append(verdict(moa, single, rows, outcomes))
    for name, row in rows.items():
        if name in (single, moa) or row["kind"] == "collab" or not row["scored"]:
            continue
        against = baseline(row, single, moa)
        assert against is not None  # findings() returned early without both
        c = paired(outcomes[name], outcomes[against])
        if c is not None:
            lines.append(f"- `{name}` against `{against}`: {difference(c)}.")
    analyses = summary.get("analyses", {}).get(moa, {})
    lines += aggregator_lines(moa, analyses)
    collab = [c for c in summary.get("collaborativeness", []) if c["n"]]
    if collab:
        helped = [c for c in collab if c["with_references"] > c["alone"]]
        gain = fmean([c["with_references"] - c["alone"] for c in collab])
        lines.append(
            f"- Collaborativeness: {len(helped)} of {len(collab)} members scored higher when "
            f"given the others' answers than alone (mean {100 * gain:+.0f} pp, on "
            f"{span(c['n'] for c in collab)} items); the paper's Figure 1 reports a gain for "
            "every model it tried."
        )
    return lines


def verdict(
    moa: str,
    single: str,
    rows: Mapping[str, Mapping[str, Any]],
    outcomes: Mapping[str, Mapping[str, EvalRecord]],
) -> str:
    c = paired(outcomes[moa], outcomes[single])
    if c is None:
        return f"- `{moa}` and `{single}` share no scored item yet."

    def per_item(row: Mapping[str, Any], key: str) -> float:
        return float(row[key]) / max(1, int(row["scored"]))

    m, s = rows[moa], rows[single]
    tokens = (per_item(m, "tokens_in") + per_item(m, "tokens_out")) / max(
        1e-9, per_item(s, "tokens_in") + per_item(s, "tokens_out")
    )
    latency = float(m["latency_s_mean"] or 0) / max(1e-9, float(s["latency_s_mean"] or 0))
    cost = f"{tokens:.1f}× the tokens and {latency:.1f}× the latency per item"
    way, agreed = direction(c)
    if way == "ahead" and agreed:
        answer = f"**yes**: MoA is ahead of the single model, at {cost}"
    elif way == "behind" and agreed:
        answer = f"**no**: MoA is behind the single model, at {cost}"
    elif way == "behind":
        answer = f"**no**: MoA is not ahead, and leans behind the single model, at {cost}"
    elif way == "ahead":
        answer = f"**not shown** on {c.n} items: MoA leans ahead, while it costs {cost}"
    else:
        answer = (
            f"**not shown** on {c.n} items: the gap's 95% CI includes 0, while MoA costs {cost}"
        )
    return f"- Does MoA pay off here? {answer}. `{moa}` vs `{single}`: {difference(c)}."


def aggregator_lines(moa: str, analyses: Mapping[str, Any]) -> list[str]:
    """How much of what the proposals knew reached the final answer."""
    lines = []
    curve = {str(c["layer"]): c for c in analyses.get("layer_curve", [])}
    first, final = curve.get("1"), curve.get("final")
    if first and final and first.get("best_of_layer") is not None:
        avg, oracle, got = first["mean"], first["best_of_layer"], final["mean"]
        if got >= oracle:
            where = "at or above the best proposal"
        elif got > avg:
            where = f"{(got - avg) / (oracle - avg):.0%} of the way from the average to the best"
        else:
            where = "at or below the average proposal: the aggregator adds nothing here"
        lines.append(
            f"- Aggregation in `{moa}`: the proposals are right {100 * avg:.0f}% of the time on "
            f"average and at least one is right on {100 * oracle:.0f}% of items; the final "
            f"answer is right on {100 * got:.0f}%, {where}."
        )
    mm = analyses.get("minority_majority")
    if mm and (mm["minority_items"] or mm["majority_items"]):
        lines.append(
            f"- When only a minority of proposals was right, the final kept it on "
            f"{mm['minority_preserved']} of {mm['minority_items']} items; a right majority was "
            f"overturned on {mm['majority_overturned']} of {mm['majority_items']}."
        )
    ec = analyses.get("error_correlation")
    if ec:
        n = len(ec["matrix"])
        off = [
            float(ec["matrix"][i][j])
            for i in range(n)
            for j in range(i + 1, n)
            if ec["matrix"][i][j] is not None and ec["matrix"][i][j] == ec["matrix"][i][j]
        ]
        if off:
            r = fmean(off)
            kind = (
                "mostly the same bet"
                if r >= 0.5
                else "partly independent"
                if r > 0.2
                else ("close to independent")
            )
            lines.append(
                f"- The proposers' errors correlate at {r:+.2f} on average (pairs of "
                f"first-layer samples): {kind}."
            )
    return lines


def span(counts: Iterable[int]) -> str:
    low, high = min(counts := list(counts)), max(counts)
    return str(low) if low == high else f"{low}–{high}"
