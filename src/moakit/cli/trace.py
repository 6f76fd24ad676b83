"""``moa trace``: list, show, export and prune recorded queries.

Model outputs, questions, labels and upstream errors are untrusted: they are printed as
``rich.text.Text`` objects, which Rich never parses for markup, so ``[bold]`` or ``[/INST]`` in an
answer is shown as those characters; and their control characters (ANSI escapes that recolour,
retitle the window or clear the screen) are written as visible escapes, as ``moa ask`` does. JSON
output escapes them too (the same data, safe on a terminal).
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from moakit.cli.literal import json_literal, literal, one_line
from moakit.trace.base import BaseTraceStore
from moakit.trace.open import is_postgres_url, open_trace_store
from moakit.trace.records import QUERY_STATUSES, CallRecord, TraceRecord
from moakit.trace.store import default_trace_path

MAX_LIST = 100_000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``15m``, ``90s``, ``2w`` -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise click.BadParameter(f"expected a duration like 30d, 12h, 15m (got {text!r})")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_since(text: str) -> float:
    """A duration ago (``1h``) or an ISO date/time (``2026-12-01``, ``2026-12-01T08:00``)."""
    if _DURATION.match(text):
        return time.time() - parse_duration(text)
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise click.BadParameter(
            f"expected a duration (1h, 7d) or an ISO date (2026-12-01), got {text!r}"
        ) from None


db_option = click.option(
    "--db",
    "db_path",
    default=None,
    help="Trace store: a SQLite file or a postgresql:// URL (default: $MOAKIT_TRACE_DB, "
    "$MOAKIT_HOME/traces.db, or the data dir).",
)


def _console() -> Console:
    # highlight=False: Rich's repr highlighter would colour numbers and URLs inside answers.
    return Console(highlight=False)


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _cost(cost: float | None) -> str:
    return "-" if cost is None else f"${cost:.4f}"


def _record(store: BaseTraceStore, query_id: str) -> TraceRecord:
    full = store.resolve(query_id)
    record = store.get(full) if full else None
    if record is None:
        raise click.ClickException(f"no trace with id {query_id!r} (or the prefix is ambiguous)")
    return record


def _open(db_path: str | None) -> BaseTraceStore:
    """The store to read, or a one-line error naming it. Reading never creates a SQLite file
    (a PostgreSQL URL names a server, which is opened as it is)."""
    if db_path is not None and is_postgres_url(db_path):
        return open_trace_store(db_path)
    path = Path(db_path) if db_path is not None else default_trace_path()
    if not path.exists():
        raise click.ClickException(f"no trace store at {path} (nothing has been recorded there)")
    return open_trace_store(str(path))  # not a trace store: TraceStoreError, one line


@click.group("trace")
def trace_group() -> None:
    """Recorded queries: who said what, what it cost, how long each step took."""


@trace_group.command("list")
@db_option
@click.option("--stack", default=None, help="Only this stack.")
@click.option("--status", type=click.Choice(QUERY_STATUSES), default=None, help="Only this status.")
@click.option("--since", default=None, help="Started within a duration (1h, 7d) or since a date.")
@click.option(
    "--limit", "-n", default=20, show_default=True, type=click.IntRange(min=1, max=MAX_LIST)
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_cmd(
    db_path: str | None,
    stack: str | None,
    status: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Recent queries, newest first."""
    with _open(db_path) as store:
        total = store.stats().queries
        rows = store.list_queries(
            stack=stack,
            status=status,
            since=parse_since(since) if since else None,
            limit=limit,
        )
    if as_json:
        for q in rows:
            click.echo(json_literal(TraceRecord(q).to_json()["query"]))
        return
    table = Table(box=None, pad_edge=False)
    for name in ("id", "time", "stack", "status", "latency", "tokens", "cost"):
        table.add_column(name, justify="right" if name in ("latency", "tokens", "cost") else "left")
    for q in rows:
        style = {"complete": "green", "failed": "red", "cancelled": "yellow"}.get(q.status, "")
        table.add_row(
            Text(one_line(q.id[:12])),
            Text(_when(q.start_time)),
            Text(one_line(q.stack_name)),
            Text(one_line(q.status), style=style),
            Text("-" if q.latency_s is None else f"{q.latency_s:.2f}s"),
            Text(str(q.total_tokens)),
            Text(_cost(q.cost_usd)),
        )
    console = _console()
    given = (("stack", stack), ("status", status), ("since", since))
    filters = [f"--{name} {value}" for name, value in given if value]
    if rows:
        console.print(table)
    elif total and filters:
        shown = one_line(" ".join(filters))
        console.print(Text(f"no traces match {shown} ({total} recorded in all)", style="dim"))
    else:
        console.print(Text("no traces recorded yet", style="dim"))


def _call_line(call: CallRecord) -> Text:
    mark, style = ("✓", "green") if call.ok else ("✗", "red")
    if call.cancelled:
        mark, style = "⏹", "yellow"
    line = Text()
    line.append(f"{mark} ", style=style)
    line.append(one_line(call.label), style="bold")
    line.append(one_line(f"  {call.provider}/{call.model_name}"), style="dim")
    line.append(f"  {call.latency_s:.2f}s")
    if call.ttft_s is not None:
        line.append(f" (ttft {call.ttft_s:.2f}s)", style="dim")
    line.append(f"  {call.prompt_tokens}+{call.completion_tokens} tok")
    if len(call.attempts) > 1:
        line.append(f"  {len(call.attempts)} attempts", style="yellow")
    if call.truncated:
        line.append("  truncated", style="yellow")
    return line


def _body(text: str | None, full: bool, width: int = 400) -> Text:
    text = text or ""
    if not full and len(text) > width:
        text = text[:width] + f"… ({len(text) - width} more chars; --full shows all)"
    return Text(literal(text))


def render_trace(record: TraceRecord, *, full: bool = False) -> Tree:
    """The tree ``moa trace show`` prints: layers -> members -> outputs."""
    q = record.query
    head = Text()
    head.append(f"query {one_line(q.id)}", style="bold")
    head.append(f"  {one_line(q.stack_name)}  ")
    status_style = {"complete": "green", "incomplete": "yellow"}.get(q.status, "red")
    head.append(one_line(q.status), style=status_style)
    head.append(f"  {_when(q.start_time)}")
    if q.latency_s is not None:
        head.append(f"  {q.latency_s:.2f}s")
    head.append(f"  {q.prompt_tokens}+{q.completion_tokens} tok  {_cost(q.cost_usd)}")
    tree = Tree(head)
    if q.input is not None:
        question = tree.add(Text("input", style="bold"))
        for message in q.input:
            question.add(_message(message, full))
    elif q.input_hash:
        tree.add(Text(one_line(f"input: not stored ({q.input_hash})"), style="dim"))
    for layer, calls in record.layers().items():
        aggregator = all(c.role == "aggregator" for c in calls)
        answered = sum(1 for c in calls if c.ok)
        title = "aggregator" if aggregator else f"layer {layer}"
        node = tree.add(Text(f"{title}  {answered}/{len(calls)} answered", style="bold"))
        for call in calls:
            member = node.add(_call_line(call))
            if call.references:
                member.add(Text(f"shown {len(call.references)} references", style="dim"))
            # One attempt's error is the call's error: list attempts only when it retried.
            for attempt in call.attempts if len(call.attempts) > 1 else []:
                if attempt.error:
                    member.add(
                        Text(one_line(f"attempt {attempt.number}: {attempt.error}"), style="red")
                    )
            if call.status_message is not None:
                member.add(Text(one_line(call.status_message), style="red"))
            if call.output:
                member.add(_body(call.output, full))
            for tool_call in call.tool_calls:
                member.add(tool_call_text(tool_call.name, tool_call.arguments, full))
    if q.status_message:
        tree.add(Text(one_line(f"error: {q.status_message}"), style="red"))
    if q.advice is not None:
        advice = f"advice: {q.advice}"
        if q.advice_from:
            advice += f" (written by run {q.advice_from})"
        tree.add(Text(one_line(advice), style="dim"))
    for d in q.decisions:
        skipped = d.get("skipped") or []
        saved = f"; skipped {', '.join(map(str, skipped))}" if skipped else ""
        line = f"decision: {d.get('kind')} after layer {d.get('layer')}: {d.get('detail')}{saved}"
        tree.add(Text(one_line(line), style="yellow"))
    if q.output is not None or q.tool_calls:
        final = tree.add(Text("final answer", style="bold"))
        if q.output is not None:
            final.add(_body(q.output, True))
        for tool_call in q.tool_calls:
            final.add(tool_call_text(tool_call.name, tool_call.arguments, True))
    return tree


def tool_call_text(name: str, arguments: str | None, full: bool = True) -> Text:
    """``tool call: name({...})``, the name and arguments as literal text (model output:
    never Rich markup, control characters made visible). ``arguments`` None: not stored."""
    line = Text("tool call: ", style="cyan")
    line.append(one_line(name), style="bold")
    if arguments is None:
        line.append("(arguments not stored)", style="dim")
        return line
    return line + Text("(") + _body(arguments, full) + Text(")")


def _message(message: dict[str, Any], full: bool) -> Text:
    """One input message: its role and text, the tool calls an assistant made, or the tool
    result a tool message carries (with the call it answers)."""
    role = str(message.get("role", "?"))
    content = message.get("content")
    if isinstance(content, list):  # text and image parts
        content = " ".join(
            str(p.get("text", "")) if p.get("type") == "text" else f"[{p.get('type')}]"
            for p in content
            if isinstance(p, dict)
        )
    head = f"{role}: "
    if role == "tool":
        head = f"tool result for {message.get('tool_call_id', '?')}: "
    line = Text(one_line(head)) + _body(str(content) if content is not None else "", full)
    for raw in message.get("tool_calls") or ():
        function = raw.get("function") if isinstance(raw, dict) else None
        if isinstance(function, dict):
            arguments = function.get("arguments")
            line.append("\n")
            line.append_text(
                tool_call_text(
                    str(function.get("name", "?")),
                    arguments if isinstance(arguments, str) else None,
                    full,
                )
            )
    return line


@trace_group.command("show")
@click.argument("query_id")
@db_option
@click.option("--full", is_flag=True, help="Print every output in full.")
def show_cmd(query_id: str, db_path: str | None, full: bool) -> None:
    """One query as a tree: layers, members, their outputs; failures in red."""
    with _open(db_path) as store:
        record = _record(store, query_id)
    _console().print(render_trace(record, full=full))


@trace_group.command("export")
@click.argument("query_id")
@db_option
@click.option("--format", "fmt", type=click.Choice(["json"]), default="json", show_default=True)
def export_cmd(query_id: str, db_path: str | None, fmt: str) -> None:
    """One query and all of its calls, as JSON on stdout."""
    with _open(db_path) as store:
        record = _record(store, query_id)
    click.echo(json_literal(record.to_json(), indent=2))


@trace_group.command("prune")
@db_option
@click.option("--older-than", "older_than", required=True, help="A duration: 30d, 12h, 2w.")
@click.option("--vacuum", is_flag=True, help="Also give the freed space back to the disk.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before deleting every query.")
def prune_cmd(db_path: str | None, older_than: str, vacuum: bool, yes: bool) -> None:
    """Delete queries started longer ago than --older-than."""
    seconds = parse_duration(older_than)
    with _open(db_path) as store:
        total = store.stats().queries
        doomed = store.count_older_than(seconds)
        if doomed and doomed == total and not yes:
            click.confirm(
                f"this deletes all {total} recorded queries in {store.location}; go on?",
                abort=True,
            )
        deleted = store.prune(seconds, vacuum=vacuum)
    click.echo(f"deleted {deleted} queries older than {older_than}")


@trace_group.command("stats")
@db_option
@click.option("--json", "as_json", is_flag=True)
def stats_cmd(db_path: str | None, as_json: bool) -> None:
    """How many queries and calls the store holds, and its size on disk."""
    with _open(db_path) as store:
        stats = store.stats()
    if as_json:
        click.echo(json.dumps(stats.__dict__))
        return
    click.echo(f"path:     {stats.path}")
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(stats.by_status.items())) or "none"
    click.echo(f"queries:  {stats.queries}  ({statuses})")
    click.echo(f"calls:    {stats.calls}")
    click.echo(f"configs:  {stats.stack_configs}")
    click.echo(f"size:     {stats.file_bytes / 1e6:.2f} MB")
    click.echo(f"oldest:   {_when(stats.oldest)}")
    click.echo(f"newest:   {_when(stats.newest)}")
