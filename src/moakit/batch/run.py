"""``run_batch``: answer a batch file into an output file, resumably, on any executor.

    summary = await run_batch("in.jsonl", "out.jsonl", default_model="local")
    summary = await run_batch(..., executor=RayExecutor(workers=4), max_cost_usd=5.0)

The output file is appended to as answers arrive (a crash loses only what was in flight) and,
when the run ends, rewritten with exactly one line per ``custom_id`` in input order (what
existing Batch tooling expects). A rerun skips every ``custom_id`` answered with status 200,
retries the others, and refuses to run when a stack's configuration changed since those answers
were written (their ``system_fingerprint``): a file never mixes two configurations of a stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from moakit.batch.formats import (
    Existing,
    InputLine,
    error_line,
    fingerprint,
    is_success,
    line_fingerprint,
    read_input,
    read_output,
    response_line,
)
from moakit.batch.worker import BatchAnswer, BatchRequest, BatchWorkerSpec
from moakit.config import StackConfig, load_preset, preset_names
from moakit.engine import Stack
from moakit.errors import ConfigError
from moakit.executors.base import Executor, Outcome, WorkerFactory
from moakit.executors.local import LocalExecutor
from moakit.server.errors import ApiError


@dataclass
class BatchProgress:
    """Where a batch run stands. Counts are of this run, except ``total`` (every line of the
    input) and ``resumed`` (answered by an earlier run, skipped)."""

    total: int
    resumed: int = 0
    done: int = 0  # lines written by this run (answers and errors)
    errors: int = 0
    cost_usd: float = 0.0
    unpriced_calls: int = 0
    calls: int = 0
    started: float = field(default_factory=time.monotonic)
    stopped: str | None = None  # why the run stopped early (the cost cap), None otherwise

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    @property
    def remaining(self) -> int:
        return self.total - self.resumed - self.done

    @property
    def rate(self) -> float:
        """Lines written per second, this run."""
        elapsed = self.elapsed_s
        return self.done / elapsed if elapsed > 0 and self.done else 0.0

    @property
    def eta_s(self) -> float | None:
        rate = self.rate
        return self.remaining / rate if rate else None

    def line(self) -> str:
        eta = self.eta_s
        parts = [
            f"batch {self.resumed + self.done}/{self.total}",
            f"{self.errors} errors",
            f"{self.rate:.2f} items/s",
            f"ETA {_duration(eta)}" if eta is not None else "ETA -",
            f"cost ${self.cost_usd:.4f}",
        ]
        if self.unpriced_calls:
            parts.append(f"+{self.unpriced_calls} unpriced calls")
        if self.resumed:
            parts.append(f"{self.resumed} resumed")
        return "  ".join(parts)


@dataclass(frozen=True)
class BatchSummary:
    progress: BatchProgress
    output: Path
    not_started: int  # lines neither answered before nor by this run (cost cap)

    @property
    def complete(self) -> bool:
        return self.not_started == 0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


async def _resolve_stacks(
    lines: list[InputLine], configs: Mapping[str, StackConfig]
) -> tuple[dict[str, StackConfig], dict[str, str]]:
    """The configs and config hashes of every stack the input names; lines naming an unknown
    stack get a 404 error. A stack that cannot run here (a missing key) refuses the batch."""
    found: dict[str, StackConfig] = {}
    unknown: set[str] = set()
    for line in lines:
        name = line.model
        if line.error is not None or name is None or name in found or name in unknown:
            continue
        if name in configs:
            found[name] = configs[name]
            continue
        try:
            found[name] = load_preset(name)
        except ConfigError:
            unknown.add(name)
    known = ", ".join(sorted({*configs, *preset_names()}))
    for line in lines:
        if line.error is None and line.model in unknown:
            line.error = ApiError(
                404,
                f"The model {line.model!r} does not exist (stacks: {known})",
                param="body.model",
                code="model_not_found",
            )
    hashes: dict[str, str] = {}
    for name, config in found.items():
        async with Stack(config) as stack:  # refuses now a stack that could not run
            hashes[name] = stack.config_hash
    return found, hashes


def _check_fingerprints(
    existing: Mapping[str, dict[str, Any]], hashes: Mapping[str, str], output: Path
) -> None:
    for custom_id, row in existing.items():
        if not is_success(row):
            continue
        body = row["response"].get("body") or {}
        name = body.get("model") if isinstance(body, dict) else None
        if not isinstance(name, str) or name not in hashes:
            continue
        if line_fingerprint(row) != fingerprint(hashes[name]):
            raise ConfigError(
                f"{output} holds answers of stack {name!r} from another configuration "
                f"({custom_id!r}: {line_fingerprint(row)}, now {fingerprint(hashes[name])}); "
                "write to a new output file, or pass --overwrite to start this one again",
                field="output",
            )


def _write(fh: IO[str], row: dict[str, Any]) -> None:
    fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
    fh.flush()


def _existing(output: Path, overwrite: bool) -> Existing:
    if overwrite and output.exists():
        output.unlink()
    return read_output(output)


def _append(output: Path, valid_bytes: int) -> IO[str]:
    """The output file for appending, cut after its last complete line (a crash may have cut
    the one after it short)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("a+b") as raw:
        raw.truncate(valid_bytes)
    return output.open("a", encoding="utf-8")


def _compact(output: Path, order: list[str]) -> None:
    """One line per custom_id (the last one written), input order first, atomically."""
    rows = read_output(output).lines
    tmp = output.with_name(output.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for custom_id in [*order, *(k for k in rows if k not in set(order))]:
            if custom_id in rows:
                _write(fh, rows[custom_id])
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, output)


async def run_batch(
    input_path: str | Path,
    output_path: str | Path,
    *,
    default_model: str = "local",
    configs: Mapping[str, StackConfig] | None = None,
    executor: Executor | None = None,
    max_cost_usd: float | None = None,
    trace_db: str | None = None,
    store_prompts: bool = True,
    overwrite: bool = False,
    on_progress: Callable[[BatchProgress], None] | None = None,
    tick_s: float = 1.0,
) -> BatchSummary:
    """Answer every line of ``input_path`` into ``output_path`` (see the module docstring).

    ``configs``: stacks by name (a line's ``body.model``, or ``default_model``), next to the
    presets. ``executor``: ``LocalExecutor()`` by default. ``max_cost_usd``: once this run's
    priced calls cost that much, no new line starts; those in flight finish and are written.
    ``trace_db``: record every query there (a path or ``postgresql://`` URL). ``on_progress``
    is called after every line and every ``tick_s`` seconds."""
    output = Path(output_path)
    lines = read_input(input_path, default_model)
    stacks, hashes = await _resolve_stacks(lines, configs or {})
    existing = _existing(output, overwrite)
    _check_fingerprints(existing.lines, hashes, output)
    progress = BatchProgress(total=len(lines))
    todo: list[InputLine] = []
    for line in lines:
        if line.custom_id in existing.lines and is_success(existing.lines[line.custom_id]):
            progress.resumed += 1
        else:
            todo.append(line)
    executor = executor or LocalExecutor()
    spec: WorkerFactory[BatchRequest, BatchAnswer] = BatchWorkerSpec(
        stacks, trace_db=trace_db, store_prompts=store_prompts
    )

    def report() -> None:
        if on_progress is not None:
            on_progress(progress)

    async def payloads(fh: IO[str]) -> AsyncIterator[tuple[str, BatchRequest]]:
        for line in todo:
            if max_cost_usd is not None and progress.cost_usd >= max_cost_usd:
                progress.stopped = (
                    f"cost cap reached: ${progress.cost_usd:.4f} of ${max_cost_usd:.4f}"
                )
                return
            if line.error is not None or line.request is None or line.model is None:
                err = line.error or ApiError(400, "invalid request")
                _write(fh, response_line(line.custom_id, err.status, err.body(), ""))
                progress.done += 1
                progress.errors += 1
                report()
                continue
            request = line.request
            yield (
                line.custom_id,
                BatchRequest(
                    line.custom_id, line.model, request.chat_request(), bool(request.moa_details)
                ),
            )

    def record(outcome: Outcome[BatchRequest, BatchAnswer], fh: IO[str]) -> None:
        answer = outcome.result
        if answer is None:
            row = error_line(outcome.key, "worker_failed", outcome.error or "unknown error")
        else:
            row = answer.line
            progress.cost_usd += answer.cost_usd
            progress.unpriced_calls += answer.unpriced_calls
            progress.calls += answer.calls
        _write(fh, row)
        progress.done += 1
        progress.errors += 0 if is_success(row) else 1
        report()

    async def ticker() -> None:
        while True:
            await asyncio.sleep(tick_s)
            report()

    tick = asyncio.create_task(ticker()) if on_progress is not None else None
    try:
        with _append(output, existing.valid_bytes) as fh:
            async for outcome in executor.map(spec, payloads(fh)):
                record(outcome, fh)
    finally:
        if tick is not None:
            tick.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tick
    _compact(output, [line.custom_id for line in lines])
    report()
    return BatchSummary(progress, output, not_started=progress.remaining)
