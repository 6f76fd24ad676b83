"""``moa serve``: run the OpenAI-compatible server (one process, or ``--workers N``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from moakit.errors import ConfigError


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to bind.")
@click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Stack config file, served under its name next to the presets.",
)
@click.option(
    "--server-config",
    "server_config",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Server settings (TOML): endpoints and caps for request-supplied stacks.",
)
@click.option(
    "--allow-request-stacks/--no-request-stacks",
    default=None,
    help="Let requests send their own stack (`moa` in the body), limited to the endpoints and "
    "caps of --server-config and the embedded models. Off unless turned on here or there.",
)
@click.option(
    "--max-concurrent",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Queries in flight; more get 429 with Retry-After.",
)
@click.option(
    "--max-body-bytes",
    default=1_000_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Largest request body accepted (413 above).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="info logs one JSON access line per request.",
)
@click.option(
    "--preload/--no-preload",
    default=True,
    show_default=True,
    help="Load embedded models at startup; /ready answers 503 until they are in memory.",
)
@click.option(
    "--trace/--no-trace",
    default=True,
    show_default=True,
    help="Record every query in the trace store and serve the web UI at /ui "
    "(MOAKIT_TRACE=0 also turns recording off).",
)
@click.option(
    "--trace-db",
    default=None,
    help="Trace store: a SQLite file or a postgresql:// URL, which a fleet of servers can "
    "share (default: $MOAKIT_TRACE_DB, else a file under the user data dir).",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Server processes on this port (uvicorn's workers); they share the trace store. "
    "--max-concurrent applies to each.",
)
@click.option(
    "--evals-dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="Directory of `moa eval` results the UI's eval viewer shows.",
)
def serve_cmd(
    host: str,
    port: int,
    config_path: Path | None,
    server_config: Path | None,
    allow_request_stacks: bool | None,
    max_concurrent: int,
    max_body_bytes: int,
    log_level: str,
    preload: bool,
    trace: bool,
    trace_db: str | None,
    workers: int,
    evals_dir: Path | None,
) -> None:
    """Serve MoA stacks as an OpenAI-compatible /v1/chat/completions endpoint.

    Clients authenticate with a key from the MOA_API_KEYS environment variable (comma-separated)
    when it is set.
    """
    import uvicorn

    from moakit.server.workers import WORKER_OPTIONS_ENV, ServeOptions, build_app

    options = ServeOptions(
        config_path=str(config_path) if config_path else None,
        server_config=str(server_config) if server_config else None,
        allow_request_stacks=allow_request_stacks,
        max_concurrent=max_concurrent,
        max_body_bytes=max_body_bytes,
        preload=preload,
        trace=trace,
        trace_db=trace_db,
        evals_dir=str(evals_dir) if evals_dir else None,
    )
    # moakit.server writes its own structured access line per request (id, model, status,
    # latency, tokens), so uvicorn's plain access log is off rather than doubled.
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": _log_config(log_level.upper()),
        "access_log": False,
    }
    if workers == 1:
        try:
            app = build_app(options)
        except (ConfigError, ConnectionError) as err:
            raise click.ClickException(str(err)) from None
        uvicorn.run(app, **common)
        return
    # Several processes: uvicorn starts each from an import string, so the options travel in
    # the environment (paths and flags only; keys stay in the operator's own variables). The
    # configs are checked here first, so a typo fails once, not in every worker.
    try:
        options.check()
    except (ConfigError, ConnectionError) as err:
        raise click.ClickException(str(err)) from None
    os.environ[WORKER_OPTIONS_ENV] = options.to_json()
    uvicorn.run("moakit.server.workers:app_from_env", factory=True, workers=workers, **common)


def _log_config(level: str) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "moakit": {"handlers": ["stderr"], "level": level, "propagate": False},
        },
    }
