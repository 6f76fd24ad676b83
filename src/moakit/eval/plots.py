"""PNG plots of a summary (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moakit.eval import frontier

if TYPE_CHECKING:
    from moakit.eval.records import EvalRecord


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(
    summary: dict[str, Any], records: Mapping[str, Sequence[EvalRecord]], out_dir: Path
) -> list[Path]:
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    # Layer curve: mean proposal score per layer, then the final answer.
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, a in summary["analyses"].items():
        curve = a.get("layer_curve", [])
        if curve:
            ax.plot(
                [str(c["layer"]) for c in curve], [c["mean"] for c in curve], marker="o", label=name
            )
    ax.set_xlabel("layer")
    ax.set_ylabel(f"mean score ({summary['scorer']})")
    ax.set_title("Layer curve")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    written.append(_save(fig, out_dir / "layer_curve.png", plt))

    # Cost (or tokens where no price is known) vs. quality, with the Pareto front.
    rows = [r for r in summary["systems"] if r["score"]["mean"] == r["score"]["mean"]]
    use_cost = rows and all(r["cost_usd"] for r in rows)
    xs = [float(r["cost_usd"] if use_cost else r["tokens_in"] + r["tokens_out"]) for r in rows]
    ys = [float(r["score"]["mean"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(xs, ys)
    for x, y, r in zip(xs, ys, rows, strict=True):
        ax.annotate(r["name"], (x, y), fontsize=7)
    front = _pareto(list(zip(xs, ys, strict=True)))
    if front:
        ax.plot([p[0] for p in front], [p[1] for p in front], linestyle="--", alpha=0.6)
    ax.set_xlabel("estimated cost (USD)" if use_cost else "tokens (in + out)")
    ax.set_ylabel("mean score")
    ax.set_title("Cost vs. quality")
    written.append(_save(fig, out_dir / "cost_quality.png", plt))

    # Error correlation of the first system that has one.
    fig, ax = plt.subplots(figsize=(5, 4))
    ec = next(
        (
            a["error_correlation"]
            for a in summary["analyses"].values()
            if a.get("error_correlation")
        ),
        None,
    )
    if ec:
        matrix = [[float("nan") if v is None else v for v in row] for row in ec["matrix"]]
        im = ax.imshow(matrix, vmin=-1, vmax=1, cmap="coolwarm")
        ax.set_xticks(range(len(ec["labels"])), ec["labels"], rotation=45, fontsize=7)
        ax.set_yticks(range(len(ec["labels"])), ec["labels"], fontsize=7)
        fig.colorbar(im)
    else:
        ax.text(0.5, 0.5, "no closed-form proposer data", ha="center")
    ax.set_title("Proposers' error correlation")
    written.append(_save(fig, out_dir / "error_correlation.png", plt))

    # Answer length vs. score, per item, per system.
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, recs in records.items():
        pts = [(r.answer_words, r.value) for r in recs if r.value is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=10, alpha=0.6, label=name)
    ax.set_xlabel("answer length (words)")
    ax.set_ylabel("score")
    ax.set_title("Length vs. score")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    written.append(_save(fig, out_dir / "length_score.png", plt))
    drawn = frontier.plot(summary, out_dir, plt, _pareto)
    if drawn is not None:
        written.append(drawn)
    return written


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both cost (lower) and score (higher), by cost."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
