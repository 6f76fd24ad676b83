"""``moa eval run``: compare systems (single model, MoA stacks, baselines) on a benchmark or on
your own JSONL, with CIs, cost and latency; writes records, ``summary.json``, ``report.md`` and
plots into ``--out``. Re-running the same command resumes."""

from __future__ import annotations

import asyncio
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import click

from moakit.cli.eval_route import route_cmd
from moakit.config import MemberSpec
from moakit.errors import ConfigError


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


@click.group("eval")
def eval_group() -> None:
    """Measure MoA against single models on benchmarks or your own data."""


eval_group.add_command(route_cmd)


@eval_group.command("run")
@click.option(
    "--dataset",
    "-d",
    default=None,
    help="gsm8k, humaneval, mt-bench, alpaca-eval, flask-hard, a plugin's dataset (moa plugins), "
    "or a .jsonl file with 'prompt' (+ 'answer'). "
    "Required, except with --report-only.",
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
    help="Benchmark files (default: $MOAKIT_EVAL_DATA, else the copies shipped with moakit).",
)
@click.option(
    "--scorer",
    default=None,
    help="Scorer name or module:function (default: the dataset's own; for your JSONL, "
    "'number' when every answer is a number, else 'exact').",
)
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
@click.option(
    "--default-endpoint-limit",
    type=int,
    default=8,
    show_default=True,
    help="Calls in flight to an endpoint --endpoint-limit does not name (with --executor "
    "ray: for all workers together).",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where items run: this process, or Ray actors (moakit[ray]; --parallel is then "
    "items in flight per actor).",
)
@click.option(
    "--ray-address",
    default=None,
    help="Ray cluster to join (default: RAY_ADDRESS, else a local one is started).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Ray actors with --executor ray, each with its own stacks and models.",
)
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
    help="Rewrite the report from what --out holds (its systems, dataset and scores); run nothing.",
)
@click.option(
    "--progress-every",
    type=float,
    default=None,
    help="Seconds between progress lines when stderr is not a terminal (default 5).",
)
def eval_run_cmd(**opts: Any) -> None:
    """Run SYSTEMS on a DATASET and write a report."""
    from moakit.cli.eval_progress import progress_for
    from moakit.eval.session import EvalSession, EvalSettings

    limits = {}
    for item in opts["endpoint_limit"]:
        key, eq, value = item.rpartition("=")
        if not eq or not value.isdigit():
            raise ConfigError(
                f"--endpoint-limit {item!r}: expected ENDPOINT=N", field="endpoint-limit"
            )
        limits[key] = int(value)
    out_dir: Path = opts["out_dir"]
    judge = _judge_spec(
        opts["judge"], opts["judge_preset"], opts["judge_base_url"], opts["judge_api_key_env"]
    )
    settings = EvalSettings(
        out_dir=out_dir,
        dataset=opts["dataset"],
        systems=list(opts["system_specs"]),
        preset=opts["preset"],
        data_dir=opts["data_dir"],
        limit=opts["limit"],
        offset=opts["offset"],
        max_tokens=opts["max_tokens"],
        timeout_s=opts["timeout_s"],
        scorer=opts["scorer"],
        judge=judge,
        judge_price=_price_pair(opts["judge_price"], "judge-price")
        if opts["judge_price"]
        else None,
        baseline=opts["baseline"],
        baseline_key=opts["baseline_key"],
        prices=_prices(opts["prices"]),
        cache_path=opts["cache_path"],
        parallel=opts["parallel"],
        endpoint_limits=limits,
        default_endpoint_limit=opts["default_endpoint_limit"],
        reference=opts["reference"],
        score_layers=opts["score_layers"],
        plots=opts["plots"],
        report_only=opts["report_only"],
        executor=opts["executor"],
        ray_address=opts["ray_address"],
        workers=opts["workers"],
    )
    with progress_for(sys.stderr, every_s=opts["progress_every"]) as progress:
        session = EvalSession(settings, progress=progress)
        started = time.monotonic()
        asyncio.run(session.run())
        wall = time.monotonic() - started
        summary = session.write_report(None if settings.report_only else wall)
    click.echo(f"wrote {out_dir / 'report.md'} ({wall:.0f} s)", err=True)
    for row in summary["systems"]:
        s = row["score"]
        click.echo(
            f"{row['name']}: {_num(s['mean'])} [{_num(s['low'])}, {_num(s['high'])}] "
            f"n={row['scored']}"
        )


def _num(value: float) -> str:
    return "–" if value != value else f"{value:.3f}"  # NaN: nothing scored yet
