"""``moa eval run``: compare systems (single model, MoA stacks, baselines) on a benchmark or on
your own JSONL, with CIs, cost and latency; writes records, ``summary.json``, ``report.md`` and
plots into ``--out``. Re-running the same command resumes."""

from __future__ import annotations

import asyncio
import json
import time
import tomllib
from pathlib import Path
from typing import Any

import click

from moakit.config import MemberSpec
from moakit.errors import ConfigError
from moakit.eval.datasets import DATASET_NAMES, default_data_dir, load_alpaca_reference_outputs
from moakit.eval.systems import DEFAULT_KINDS, System, build_systems


def _price_pair(text: str, what: str) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(
            f"{what}: expected IN,OUT dollars per million tokens (got {text!r})", field=what
        ) from None
    return a, b


def _prices(path: Path | None) -> dict[str, tuple[float, float]]:
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"--prices {path}: {exc}", field="prices") from None
    out = {}
    for model, pair in data.get("models", {}).items():
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ConfigError(f"--prices {path}: models.{model} must be [in, out]", field="prices")
        out[str(model)] = (float(pair[0]), float(pair[1]))
    return out


def _judge_spec(
    judge: str | None, judge_preset: str | None, base_url: str | None, key_env: str | None
) -> MemberSpec | None:
    if judge_preset:
        from moakit.eval.systems import load_stack

        return load_stack(judge_preset).aggregators()[0].model_copy(update={"fallbacks": []})
    if not judge:
        return None
    provider, sep, model = judge.partition(":")
    if not sep or not model:
        raise ConfigError(f"--judge: expected PROVIDER:MODEL (got {judge!r})", field="judge")
    return MemberSpec(
        provider=provider,
        model=model,
        base_url=base_url,
        api_key_env=key_env,
        max_tokens=2048,
        temperature=0.0,
    )


def _baseline(path: Path | None, key: str, dataset: str, data_dir: Path) -> dict[str, str] | None:
    if path is None and dataset == "alpaca-eval":
        path = data_dir / "alpaca_eval_moa_reference_outputs.jsonl"
    if path is None:
        return None
    if path.suffix == ".json":  # alpaca_eval's model_outputs format
        rows = json.loads(path.read_text(encoding="utf-8"))
        return {r["instruction"]: r["output"] for r in rows}
    return load_alpaca_reference_outputs(path, key)


@click.group("eval")
def eval_group() -> None:
    """Measure MoA against single models on benchmarks or your own data."""


@eval_group.command("run")
@click.option(
    "--dataset",
    "-d",
    required=True,
    help=f"{', '.join(DATASET_NAMES)}, or a .jsonl file with 'prompt' (+ 'answer').",
)
@click.option(
    "--out",
    "-o",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Results directory (re-run to resume).",
)
@click.option(
    "--system",
    "-s",
    "system_specs",
    multiple=True,
    help="KIND:STACK[,key=value]; KIND in single, moa, ranker, self-moa, majority, "
    "sweep, collab. Repeat. Default: single, moa, ranker, self-moa, majority "
    "on --preset.",
)
@click.option(
    "--preset", "-p", default="local", show_default=True, help="Stack for the default systems."
)
@click.option("--limit", "-n", type=int, default=None, help="First N items.")
@click.option(
    "--max-tokens",
    type=int,
    default=None,
    help="Token budget for every member and aggregator (overrides the stacks').",
)
@click.option(
    "--timeout-s",
    type=float,
    default=None,
    help="Timeout of every call in seconds (overrides the stacks').",
)
@click.option("--offset", type=int, default=0, help="Skip the first N items.")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Benchmark files (default: $MOAKIT_EVAL_DATA or ../shared/data).",
)
@click.option("--scorer", default=None, help="Scorer name or module:function.")
@click.option("--judge", default=None, help="Judge as PROVIDER:MODEL, e.g. openai:gpt-4o.")
@click.option("--judge-preset", default=None, help="Use this stack's aggregator as the judge.")
@click.option("--judge-base-url", default=None)
@click.option("--judge-api-key-env", default=None, help="Environment variable with its key.")
@click.option("--judge-price", default=None, help="Judge price IN,OUT in $ per Mtok.")
@click.option(
    "--baseline",
    type=click.Path(path_type=Path),
    default=None,
    help="Baseline outputs for pairwise judging (JSONL or alpaca_eval JSON).",
)
@click.option(
    "--baseline-key",
    default="round1_output",
    show_default=True,
    help="Field of the baseline JSONL holding the output.",
)
@click.option(
    "--prices",
    type=click.Path(path_type=Path),
    default=None,
    help='TOML price table: [models] "name" = [in, out] ($ per Mtok).',
)
@click.option(
    "--cache",
    "cache_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Response cache (default: OUT/cache.sqlite; share it across runs).",
)
@click.option(
    "--parallel",
    type=int,
    default=None,
    help="Items of a system in flight at once (default: 1 on the embedded model, else 4).",
)
@click.option(
    "--endpoint-limit",
    multiple=True,
    help="ENDPOINT=N calls in flight (e.g. 'openai:https://api.together.xyz/v1=8').",
)
@click.option("--default-endpoint-limit", type=int, default=8, show_default=True)
@click.option("--reference", default=None, help="System the others are compared against.")
@click.option(
    "--score-layers/--no-score-layers",
    default=None,
    help="Score every proposal (default: on for closed-form tasks).",
)
@click.option("--plots/--no-plots", default=True)
@click.option(
    "--report-only",
    is_flag=True,
    help="Rewrite the report from the records already in --out; run nothing.",
)
def eval_run_cmd(**opts: Any) -> None:
    """Run SYSTEMS on a DATASET and write a report."""
    from moakit.eval.datasets import load_dataset

    data_dir: Path = opts["data_dir"] or default_data_dir()
    dataset = load_dataset(
        opts["dataset"],
        data_dir=data_dir,
        limit=opts["limit"],
        offset=opts["offset"],
        scorer=opts["scorer"],
    )
    specs = list(opts["system_specs"]) or [f"{k}:{opts['preset']}" for k in DEFAULT_KINDS]
    systems = build_systems(specs, max_tokens=opts["max_tokens"], timeout_s=opts["timeout_s"])
    limits = {}
    for item in opts["endpoint_limit"]:
        key, eq, value = item.rpartition("=")
        if not eq or not value.isdigit():
            raise ConfigError(
                f"--endpoint-limit {item!r}: expected ENDPOINT=N", field="endpoint-limit"
            )
        limits[key] = int(value)
    judge_price = _price_pair(opts["judge_price"], "judge-price") if opts["judge_price"] else None
    out_dir: Path = opts["out_dir"]
    started = time.monotonic()
    summary = asyncio.run(
        _run(
            dataset=dataset,
            systems=systems,
            out_dir=out_dir,
            data_dir=data_dir,
            opts=opts,
            limits=limits,
            judge_price=judge_price,
            specs=specs,
        )
    )
    wall = time.monotonic() - started
    click.echo(f"wrote {out_dir / 'report.md'} ({wall:.0f} s)", err=True)
    for row in summary["systems"]:
        s = row["score"]
        click.echo(
            f"{row['name']}: {s['mean']:.3f} [{s['low']:.3f}, {s['high']:.3f}] n={row['scored']}"
        )


async def _run(
    *,
    dataset: Any,
    systems: list[System],
    out_dir: Path,
    data_dir: Path,
    opts: dict[str, Any],
    limits: dict[str, int],
    judge_price: tuple[float, float] | None,
    specs: list[str],
) -> dict[str, Any]:
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from moakit.eval.cache import ResponseCache
    from moakit.eval.calls import ModelFactory
    from moakit.eval.runner import Runner
    from moakit.eval.scorers import build_scorer

    cache = ResponseCache(opts["cache_path"] or out_dir / "cache.sqlite")
    factory = ModelFactory(cache, limits, opts["default_endpoint_limit"])
    judge_spec = _judge_spec(
        opts["judge"], opts["judge_preset"], opts["judge_base_url"], opts["judge_api_key_env"]
    )
    judge = factory.direct_model_for(judge_spec) if judge_spec else None
    if judge_price is None and judge_spec and judge_spec.price_in_per_mtok is not None:
        judge_price = (judge_spec.price_in_per_mtok, judge_spec.price_out_per_mtok or 0.0)
    baseline = _baseline(opts["baseline"], opts["baseline_key"], opts["dataset"], data_dir)
    scorer = build_scorer(dataset.scorer, judge=judge, baseline=baseline)
    started = time.monotonic()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                # Names are labels from stack files: shown as text, never as rich markup.
                tasks[name] = progress.add_task(escape(name), total=total)
            progress.update(tasks[name], completed=done)

        runner = Runner(
            scorer,
            factory,
            out_dir,
            parallel=opts["parallel"],
            score_layers=opts["score_layers"],
            prices=_prices(opts["prices"]),
            on_progress=on_progress,
        )
        for system in systems:
            for stale in runner.stale_files(system):
                progress.console.print(
                    f"note: {system.name} changed since {stale.name}; those results are "
                    "kept apart, not reused",
                    markup=False,
                    highlight=False,
                )
        try:
            if not opts["report_only"]:
                await runner.run(systems, dataset.items)
        finally:
            await factory.aclose()
    wall = time.monotonic() - started
    summary = _write_outputs(runner, systems, dataset, scorer, opts, judge_price, specs, wall)
    summary["run"]["cache"] = {
        "hits": cache.hits,
        "misses": cache.misses,
        "failures": cache.failures,
        "stored": len(cache),
    }
    cache.close()
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def _write_outputs(
    runner: Any,
    systems: list[System],
    dataset: Any,
    scorer: Any,
    opts: dict[str, Any],
    judge_price: tuple[float, float] | None,
    specs: list[str],
    wall: float,
) -> dict[str, Any]:
    from moakit.eval import plots, report

    out_dir: Path = opts["out_dir"]
    ids = {item.id for item in dataset.items}
    records = {
        s.name: [r for r in runner.load_records(s).values() if r["item_id"] in ids] for s in systems
    }
    summary = report.summarize(
        systems,
        records,
        dataset=dataset.name,
        scorer=scorer.name,
        closed_form=scorer.closed_form,
        scale=scorer.scale,
        reference=opts["reference"],
        judge_price=judge_price,
    )
    summary["run"] = {"systems": specs, "items": len(dataset.items), "wall_s": round(wall, 1)}
    # A --report-only pass answered nothing: its seconds would read as the results' cost.
    shown_wall = None if opts["report_only"] else wall
    (out_dir / "report.md").write_text(
        report.markdown(summary, wall_s=shown_wall), encoding="utf-8"
    )
    exports = out_dir / "model_outputs"
    exports.mkdir(exist_ok=True)
    by_id = {item.id: item for item in dataset.items}
    for s in systems:  # alpaca_eval's input format, for its official CLI where the hub is reachable
        rows = [
            {"instruction": by_id[r["item_id"]].prompt, "output": r["final"], "generator": s.name}
            for r in records[s.name]
        ]
        slug = s.name.replace("/", "_").replace(":", "_")
        (exports / f"{slug}.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    if opts["plots"]:
        plots.write_plots(summary, records, out_dir / "plots")
    return summary
