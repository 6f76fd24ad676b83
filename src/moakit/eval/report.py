"""From records to numbers: ``summarize`` builds ``summary.json``; ``markdown`` renders it;
``write_outputs`` writes both, the exported outputs and the plots.

Per system: score with a 95% bootstrap CI, paired comparison against the reference system
(exact McNemar on closed-form tasks, paired bootstrap otherwise, read by the one rule of
``moakit.eval.readings``), win rate and LC win rate on pairwise tasks, tokens, estimated cost
(judge included, shown apart), wall time, TTFT, answer length, truncated answers, cache hits.
Then the MoA analyses for every system that has proposer layers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moakit.eval import analyses, frontier, stats
from moakit.eval.readings import side
from moakit.eval.records import EvalRecord
from moakit.eval.systems import SystemInfo

if TYPE_CHECKING:
    from moakit.eval.results import Manifest

Records = Mapping[str, Sequence[EvalRecord]]  # system name -> its records


def _values(records: Sequence[EvalRecord]) -> dict[str, float]:
    return {
        r.item_id: float(r.score.value) for r in records if r.score and r.score.value is not None
    }


def _mean(xs: Sequence[float]) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


def system_row(
    system: SystemInfo,
    records: Sequence[EvalRecord],
    closed_form: bool,
    judge_price: tuple[float, float] | None,
) -> dict[str, Any]:
    values = list(_values(records).values())
    ci = stats.bootstrap_ci(values)
    judge_in = sum(r.score.judge_usage.prompt_tokens for r in records if r.score)
    judge_out = sum(r.score.judge_usage.completion_tokens for r in records if r.score)
    costs = [r.cost_usd for r in records]
    cost = None if any(c is None for c in costs) else float(sum(c for c in costs if c))
    latencies = [float(r.latency_s) for r in records if r.latency_s is not None]
    ttfts = [float(r.ttft_s) for r in records if r.ttft_s is not None]
    spans = [(r.started_at or 0.0, r.finished_at) for r in records if r.finished_at]
    known = [r.truncated for r in records if r.truncated is not None]
    row: dict[str, Any] = {
        "name": system.name,
        "kind": system.kind,
        "hash": system.hash,
        "items": len(records),
        "scored": len(values),
        "errors": sum(1 for r in records if r.error),
        "score": ci.to_json(),
        "tokens_in": sum(r.usage.prompt_tokens for r in records),
        "tokens_out": sum(r.usage.completion_tokens for r in records),
        "cost_usd": cost,
        "judge_tokens_in": judge_in,
        "judge_tokens_out": judge_out,
        "judge_cost_usd": (judge_in * judge_price[0] + judge_out * judge_price[1]) / 1e6
        if judge_price
        else None,
        "wall_s_total": float(sum(latencies)),
        "latency_s_mean": _mean(latencies),
        # First start to last finish of this system's items in the runs that produced them.
        "span_s": float(max(b for _, b in spans) - min(a for a, _ in spans)) if spans else None,
        "ttft_s_mean": _mean(ttfts),
        "answer_chars_mean": _mean([float(r.answer_chars) for r in records]),
        "answer_words_mean": _mean([float(r.answer_words) for r in records]),
        "calls": sum(r.calls for r in records),
        "cache_hits": sum(r.cache_hits for r in records),
        # Final answers cut at their token budget; None when no record says (older records).
        "truncated": sum(known) if known else None,
    }
    if closed_form:
        row["accuracy"] = ci.mean if values else None
    details = [r.score.detail for r in records if r.score]
    if details and all("baseline_len" in d for d in details) and values:
        scored = [r.score for r in records if r.score and r.score.value is not None]
        row |= stats.win_rates(
            [float(s.value or 0.0) for s in scored],
            [int(s.detail["output_len"]) for s in scored],
            [int(s.detail["baseline_len"]) for s in scored],
        )
    return row


def compare(
    a: Sequence[EvalRecord], b: Sequence[EvalRecord], closed_form: bool
) -> stats.Comparison | None:
    """``a`` against ``b`` on the items both scored: exact McNemar on right/wrong scores,
    the paired bootstrap on judged ones."""
    va, vb = _values(a), _values(b)
    common = sorted(set(va) & set(vb))
    if not common:
        return None
    if closed_form:
        return stats.mcnemar([va[k] >= 0.5 for k in common], [vb[k] >= 0.5 for k in common])
    return stats.paired_bootstrap([va[k] for k in common], [vb[k] for k in common])


def moa_analyses(records: Sequence[EvalRecord], closed_form: bool) -> dict[str, Any]:
    with_layers = [r for r in records if r.layers]
    if not with_layers:
        return {}
    out: dict[str, Any] = {"layer_curve": analyses.layer_curve(with_layers)}
    # Members by label: a sample the straggler policy cut, or one that failed, is missing from
    # that item only (the first record need not have every member).
    fullest = max(with_layers, key=lambda r: len(r.layers[0]))  # the stack's member order
    labels = list(dict.fromkeys(m.label for r in [fullest, *with_layers] for m in r.layers[0]))
    if closed_form:
        grid = []
        for r in with_layers:
            by_label = {m.label: m.correct for m in r.layers[0]}
            grid.append([by_label.get(label) for label in labels])
        # Minority/majority among the proposals the aggregator actually had.
        scored = [i for i, r in enumerate(with_layers) if r.score and r.score.correct is not None]
        rows = [[c for c in grid[i] if c is not None] for i in scored]
        finals = [bool(with_layers[i].right) for i in scored]
        out["error_correlation"] = {
            "labels": labels,
            "matrix": analyses.error_correlation(grid, len(labels)),
        }
        out["minority_majority"] = analyses.minority_majority(rows, finals)
    triples = []
    for r in with_layers:
        last = [m for m in r.layers[-1] if m.output and m.value is not None]
        if len(last) >= 2 and r.final:
            triples.append(
                (r.final, [m.output or "" for m in last], [float(m.value or 0.0) for m in last])
            )
    if triples:
        out["similarity_quality"] = analyses.similarity_quality(triples)
    return out


def summarize(
    systems: Sequence[SystemInfo],
    records: Records,
    *,
    dataset: str,
    scorer: str,
    closed_form: bool,
    scale: tuple[float, float],
    reference: str | None = None,
    judge_price: tuple[float, float] | None = None,
) -> dict[str, Any]:
    ref = reference or next((s.name for s in systems if s.kind == "single"), systems[0].name)
    rows = [system_row(s, records.get(s.name, []), closed_form, judge_price) for s in systems]
    comparisons = []
    for s in systems:
        if s.name == ref:
            continue
        c = compare(records.get(s.name, []), records.get(ref, []), closed_form)
        if c is not None:
            comparisons.append({"system": s.name, "reference": ref, **c.to_json()})
            comparisons[-1]["reading"] = side(c)
    per_system = {
        s.name: moa_analyses(records.get(s.name, []), closed_form)
        for s in systems
        if s.kind in ("moa", "ranker", "self-moa", "sweep")
    }
    collab = analyses.collaborativeness(
        {s.name: records.get(s.name, []) for s in systems if s.kind == "collab"}
    )
    front = frontier.frontier(systems, records, lambda a, b: compare(a, b, closed_form))
    return {
        "dataset": dataset,
        "scorer": scorer,
        "closed_form": closed_form,
        "scale": list(scale),
        "reference": ref,
        "systems": rows,
        "comparisons": comparisons,
        "analyses": {k: v for k, v in per_system.items() if v},
        "collaborativeness": collab,
        "frontier": front,
    }


def write_outputs(
    out_dir: Path,
    manifest: Manifest,
    records: Records,
    prompts: Mapping[str, str],
    *,
    dataset_name: str,
    specs: Sequence[str],
    items: int,
    wall_s: float | None,
    plots: bool,
) -> dict[str, Any]:
    """``report.md``, ``model_outputs/`` and plots from ``records``; the summary (the caller
    adds what only it knows and writes ``summary.json``)."""
    summary = summarize(
        manifest.systems,
        records,
        dataset=dataset_name,
        scorer=manifest.scorer,
        closed_form=manifest.closed_form,
        scale=manifest.scale,
        reference=manifest.reference,
        judge_price=manifest.judge_price,
    )
    summary["run"] = {"systems": list(specs), "items": items, "wall_s": round(wall_s or 0.0, 1)}
    # A --report-only pass answered nothing: its seconds would read as the results' cost.
    (out_dir / "report.md").write_text(markdown(summary, wall_s=wall_s), encoding="utf-8")
    exports = out_dir / "model_outputs"
    exports.mkdir(exist_ok=True)
    for info in manifest.systems:  # alpaca_eval's input format, for its official CLI
        rows = [
            {"instruction": prompts[r.item_id], "output": r.final, "generator": info.name}
            for r in records.get(info.name, [])
        ]
        slug = info.name.replace("/", "_").replace(":", "_")
        (exports / f"{slug}.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    if plots:
        from moakit.eval import plots as plotting

        plotting.write_plots(summary, records, out_dir / "plots")
    return summary


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        # A system with no scored item yet has a NaN mean; a dash reads as "nothing yet".
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cell(text: str) -> str:
    # Names come from the operator's command line; keep table syntax intact all the same.
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(summary: dict[str, Any], *, wall_s: float | None = None) -> str:
    lines = [f"# moa eval: {summary['dataset']} ({summary['scorer']})", ""]
    if wall_s is not None:
        # A resumed run does only the items left, so this is not the results' total cost.
        lines += [f"Wall time of this invocation: {wall_s:.0f} s.", ""]
    lines += [
        "| system | n | score [95% CI] | tokens in/out | cost $ (judge $) | "
        "mean latency s | TTFT s | answer words | cache hits/calls |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["systems"]:
        s = r["score"]
        lines.append(
            f"| {_cell(r['name'])} | {r['scored']}/{r['items']} | {_fmt(s['mean'])} "
            f"[{_fmt(s['low'])}, {_fmt(s['high'])}] | {r['tokens_in']}/{r['tokens_out']} | "
            f"{_fmt(r['cost_usd'], 4)} ({_fmt(r['judge_cost_usd'], 4)}) | "
            f"{_fmt(r['latency_s_mean'], 1)} | {_fmt(r['ttft_s_mean'], 1)} | "
            f"{_fmt(r['answer_words_mean'], 0)} | {r['cache_hits']}/{r['calls']} |"
        )
    cut = [r for r in summary["systems"] if r.get("truncated")]
    if cut:
        lines += [
            "",
            "Final answers truncated at their token budget (finish reason `length`): "
            + "; ".join(f"{_cell(r['name'])} {r['truncated']} of {r['items']}" for r in cut)
            + ".",
        ]
    if any("win_rate" in r for r in summary["systems"]):
        lines += ["", "| system | win rate % | LC win rate % |", "|---|---|---|"]
        for r in summary["systems"]:
            if "win_rate" in r:
                lines.append(
                    f"| {_cell(r['name'])} | {_fmt(r['win_rate'], 1)} | "
                    f"{_fmt(r['length_controlled_winrate'], 1)} |"
                )
    if summary["comparisons"]:
        lines += [
            "",
            f"## Paired comparisons against `{summary['reference']}`",
            "",
            "| system | test | diff [95% CI] | p | n | only system right / only reference "
            "| reading |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in summary["comparisons"]:
            lines.append(
                f"| {_cell(c['system'])} | {c['test']} | {_fmt(c['diff'])} "
                f"[{_fmt(c['low'])}, {_fmt(c['high'])}] | {_fmt(c['p_value'])} | "
                f"{c['n']} | {c['a_only']}/{c['b_only']} | {c.get('reading', '–')} |"
            )
        lines += [
            "",
            "Reading: a direction is claimed only when the 95% CI excludes 0 and p < 0.05; "
            "when only the CI does, the gap is a lean, not a finding.",
        ]
    for name, a in summary["analyses"].items():
        lines += ["", f"## MoA analyses: `{_cell(name)}`", ""]
        curve = a.get("layer_curve", [])
        if curve:
            lines += [
                "Layer curve (mean proposal score per layer, best proposal, final):",
                "",
                "| layer | mean | best of layer | n |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {c['layer']} | {_fmt(c['mean'])} | {_fmt(c['best_of_layer'])} | {c['n']} |"
                for c in curve
            ]
        mm = a.get("minority_majority")
        if mm:
            lines += [
                "",
                f"Minority-but-correct preserved: {mm['minority_preserved']}/"
                f"{mm['minority_items']} ({_fmt(mm['minority_preservation_rate'])}); "
                f"right majority overturned: {mm['majority_overturned']}/"
                f"{mm['majority_items']} ({_fmt(mm['majority_overturn_rate'])}).",
            ]
        ec = a.get("error_correlation")
        if ec:
            lines += [
                "",
                "Proposers' error correlation (first layer):",
                "",
                "| | " + " | ".join(_cell(x) for x in ec["labels"]) + " |",
                "|---" * (len(ec["labels"]) + 1) + "|",
            ]
            for label, row in zip(ec["labels"], ec["matrix"], strict=True):
                lines.append(f"| {_cell(label)} | " + " | ".join(_fmt(v, 2) for v in row) + " |")
        sq = a.get("similarity_quality")
        if sq:
            lines += [
                "",
                "Similarity-to-final vs. proposal score (Spearman):",
                "",
                "| measure | mean within item | items | pooled |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {k} | {_fmt(v['mean_within_item'])} | {v['items']} | {_fmt(v['pooled'])} |"
                for k, v in sq.items()
            ]
    if summary["collaborativeness"]:
        lines += [
            "",
            "## Collaborativeness (each member alone vs. given the others' answers)",
            "",
            "| system | alone | with references | n |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {_cell(c['system'])} | {_fmt(c['alone'])} | {_fmt(c['with_references'])} "
            f"| {c['n']} |"
            for c in summary["collaborativeness"]
        ]
    lines += frontier.markdown(summary, _fmt, _cell)
    lines += [
        "",
        "Plots: `plots/layer_curve.png`, `plots/cost_quality.png`, "
        "`plots/error_correlation.png`, `plots/length_score.png`, `plots/frontier.png`.",
        "",
    ]
    return "\n".join(lines)
