"""The accuracy-vs-cost frontier of an eval: what each system spends per item (calls, tokens,
estimated dollars, latency), what adaptive systems saved, and paired tests of each adaptive
system against every full (non-adaptive) MoA system. ``report.summarize`` adds it; the
markdown report and ``frontier.png`` show it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from moakit.eval.readings import side
from moakit.eval.records import EvalRecord
from moakit.eval.stats import Comparison
from moakit.eval.systems import SystemInfo

Compare = Callable[[Sequence[EvalRecord], Sequence[EvalRecord]], Comparison | None]


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def per_item(records: Sequence[EvalRecord]) -> dict[str, Any]:
    """Mean spend per item, and the adaptive decisions' tally."""
    costs = [r.cost_usd for r in records]
    decisions = [d for r in records for d in r.decisions]
    return {
        "calls_mean": _mean([float(r.calls) for r in records]),
        "tokens_mean": _mean([float(r.usage.total_tokens) for r in records]),
        "cost_usd_mean": None
        if not records or any(c is None for c in costs)
        else sum(c or 0.0 for c in costs) / len(records),
        "latency_s_mean": _mean([float(r.latency_s) for r in records if r.latency_s is not None]),
        "early_exits": sum(1 for d in decisions if d.kind == "early_exit"),
        "escalations": sum(1 for d in decisions if d.kind == "escalate"),
        "budget_cuts": sum(1 for d in decisions if d.kind == "budget"),
        "calls_saved": sum(d.calls_saved for d in decisions),
    }


def frontier(
    systems: Sequence[SystemInfo],
    records: Mapping[str, Sequence[EvalRecord]],
    compare: Compare,
) -> dict[str, Any]:
    rows = {s.name: per_item(records.get(s.name, [])) for s in systems}
    full = [s for s in systems if s.kind == "moa" and not s.adaptive]
    tests = []
    for s in systems:
        if not s.adaptive:
            continue
        for other in full:
            c = compare(records.get(s.name, []), records.get(other.name, []))
            if c is not None:
                tests.append(
                    {"system": s.name, "reference": other.name, **c.to_json(), "reading": side(c)}
                )
    return {"per_item": rows, "adaptive_vs_full": tests}


def markdown(
    summary: Mapping[str, Any], fmt: Callable[..., str], cell: Callable[[str], str]
) -> list[str]:
    front = summary.get("frontier")
    if not front:
        return []
    lines = [
        "",
        "## Spend per item (the frontier)",
        "",
        "| system | accuracy | calls | tokens | cost $ | latency s | early exits | calls saved |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["systems"]:
        p = front["per_item"].get(r["name"], {})
        lines.append(
            f"| {cell(r['name'])} | {fmt(r['score']['mean'])} | {fmt(p.get('calls_mean'), 2)} | "
            f"{fmt(p.get('tokens_mean'), 0)} | {fmt(p.get('cost_usd_mean'), 5)} | "
            f"{fmt(p.get('latency_s_mean'), 2)} | {p.get('early_exits', 0)} | "
            f"{p.get('calls_saved', 0)} |"
        )
    if front["adaptive_vs_full"]:
        lines += [
            "",
            "Adaptive systems against full MoA (paired):",
            "",
            "| system | full MoA | diff [95% CI] | p | n | reading |",
            "|---|---|---|---|---|---|",
        ]
        for c in front["adaptive_vs_full"]:
            lines.append(
                f"| {cell(c['system'])} | {cell(c['reference'])} | {fmt(c['diff'])} "
                f"[{fmt(c['low'])}, {fmt(c['high'])}] | {fmt(c['p_value'])} | {c['n']} | "
                f"{c['reading']} |"
            )
    return lines


def plot(
    summary: Mapping[str, Any], out_dir: Path, plt: Any, pareto: Callable[..., Any]
) -> Path | None:
    """``frontier.png``: mean score against mean calls per item, and against mean latency,
    each with its Pareto front."""
    front = summary.get("frontier")
    if not front:
        return None
    rows = [r for r in summary["systems"] if r["score"]["mean"] == r["score"]["mean"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in (
        (axes[0], "calls_mean", "mean calls per item"),
        (axes[1], "latency_s_mean", "mean latency per item (s)"),
    ):
        points = [
            (float(front["per_item"][r["name"]][key]), float(r["score"]["mean"]), r["name"])
            for r in rows
            if front["per_item"].get(r["name"], {}).get(key) is not None
        ]
        ax.scatter([p[0] for p in points], [p[1] for p in points])
        for x, y, name in points:
            ax.annotate(name, (x, y), fontsize=7)
        best = pareto([(x, y) for x, y, _ in points])
        if best:
            ax.plot([p[0] for p in best], [p[1] for p in best], linestyle="--", alpha=0.6)
        ax.set_xlabel(label)
        ax.set_ylabel("mean score")
    fig.suptitle("Accuracy vs. cost")
    path = out_dir / "frontier.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["frontier", "markdown", "per_item", "plot"]
