"""``moa batch``: answer a JSONL file of requests (OpenAI Batch format or plain prompts)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click

if TYPE_CHECKING:
    from moakit.batch.run import BatchProgress
    from moakit.executors.base import Executor

EXIT_ERRORS = 3  # every line was written, some of them as errors
EXIT_STOPPED = 4  # the cost cap stopped the run: rerun to continue


class ProgressPrinter:
    """One status line: redrawn in place on a terminal, or printed every ``every_s`` seconds
    when stderr is a file or a pipe (so a redirected run still shows it is alive)."""

    def __init__(self, stream: TextIO, every_s: float) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.every_s = 0.2 if self.tty else every_s
        self._last = 0.0

    def __call__(self, progress: BatchProgress, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        if self.tty:
            self.stream.write("\r" + progress.line() + "\x1b[K")
        else:
            self.stream.write(progress.line() + "\n")
        self.stream.flush()

    def finish(self, progress: BatchProgress) -> None:
        self(progress, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


@click.command("batch")
@click.argument("input_path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "-o",
    "--output",
    "output_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Output JSONL (OpenAI batch output format). An existing file is resumed.",
)
@click.option(
    "--preset", "-p", default=None, help="Stack for lines that name none (default local)."
)
@click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Stack file: available under its name, and the stack for lines that name none.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where the work runs: this process, or Ray actors (moakit[ray]).",
)
@click.option(
    "--ray-address",
    default=None,
    help="Ray cluster to join (default: RAY_ADDRESS, else a local one is started).",
)
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Ray actors, each holding its own stacks.",
)
@click.option(
    "--concurrency",
    default=4,
    show_default=True,
    type=click.IntRange(min=1),
    help="Lines in flight per worker (the local executor is one worker).",
)
@click.option(
    "--endpoint-concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Calls in flight per remote endpoint for the whole run, all workers together "
    "(members' max_concurrency, where set, is the cap otherwise).",
)
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop starting lines once this run's priced calls cost this many US dollars.",
)
@click.option(
    "--cache",
    "cache_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Response cache file shared by every worker.",
)
@click.option(
    "--trace/--no-trace",
    default=False,
    show_default=True,
    help="Record every query in the trace store.",
)
@click.option(
    "--trace-db", default=None, help="Trace store: a file or a postgresql:// URL (implies --trace)."
)
@click.option("--overwrite", is_flag=True, help="Start the output file again instead of resuming.")
@click.option(
    "--progress-every",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds between progress lines when stderr is not a terminal.",
)
def batch_cmd(
    input_path: Path,
    output_path: Path,
    preset: str | None,
    config_path: Path | None,
    executor: str,
    ray_address: str | None,
    workers: int,
    concurrency: int,
    endpoint_concurrency: int | None,
    max_cost: float | None,
    cache_path: Path | None,
    trace: bool,
    trace_db: str | None,
    overwrite: bool,
    progress_every: float,
) -> None:
    """Answer every line of INPUT into OUTPUT, resumably.

    INPUT lines are OpenAI Batch requests ({"custom_id", "method", "url", "body"}, body.model
    naming the stack) or plain {"prompt": ...} / {"messages": [...]} objects. Exit status: 0
    every line answered, 3 some lines are errors, 4 stopped by --max-cost (rerun to continue).
    """
    from moakit.batch.run import run_batch
    from moakit.config import StackConfig, load_preset, read_config_file
    from moakit.executors.wrappers import stack_limits
    from moakit.trace.defaults import tracing_enabled

    configs: dict[str, StackConfig] = {}
    if config_path is not None:
        cfg = read_config_file(config_path)
        configs[cfg.name] = cfg
        default_model = preset or cfg.name
    else:
        default_model = preset or "local"
    # Limits cover the default stack and the file's; a line naming another preset gets its
    # members' own max_concurrency through the engine.
    limit_configs = list(configs.values())
    if default_model not in configs:
        limit_configs.append(load_preset(default_model))
    limits = stack_limits(limit_configs, endpoint_concurrency)
    runner = _executor(executor, ray_address, workers, concurrency, limits, cache_path)
    store: str | None = None
    if (trace or trace_db) and tracing_enabled():
        from moakit.trace.open import default_target

        store = trace_db or default_target()
    printer = ProgressPrinter(sys.stderr, progress_every)

    async def go() -> int:
        try:
            summary = await run_batch(
                input_path,
                output_path,
                default_model=default_model,
                configs=configs,
                executor=runner,
                max_cost_usd=max_cost,
                trace_db=store,
                overwrite=overwrite,
                on_progress=printer,
            )
        finally:
            await runner.aclose()
        progress = summary.progress
        printer.finish(progress)
        if progress.stopped:
            click.echo(
                f"stopped: {progress.stopped}; {summary.not_started} lines not started "
                f"(run the same command again to continue)",
                err=True,
            )
            return EXIT_STOPPED
        click.echo(f"wrote {output_path} ({progress.errors} errors this run)", err=True)
        return EXIT_ERRORS if progress.errors else 0

    code = asyncio.run(go())
    if code:
        sys.exit(code)


def _executor(
    kind: str,
    address: str | None,
    workers: int,
    concurrency: int,
    limits: dict[str, int],
    cache: Path | None,
) -> Executor:
    if kind == "ray":
        try:
            from moakit.executors.ray import RayExecutor
        except ImportError:
            raise click.ClickException(
                "--executor ray needs Ray: pip install 'moakit[ray]'"
            ) from None
        return RayExecutor(
            workers, concurrency=concurrency, address=address, limits=limits, cache=cache
        )
    from moakit.executors.local import LocalExecutor

    return LocalExecutor(concurrency, limits=limits, cache=cache)
