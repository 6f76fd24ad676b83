"""``moa serve``: run the OpenAI-compatible server (one process, or ``--workers N``)."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

import click

from moakit.errors import ConfigError

# moakit.server.http.HEADER_TIMEOUT_S (not imported here: `moa` starts without the server).
HEADER_TIMEOUT_S = 10.0


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
    help="Directory of `moa eval` results the UI's eval viewer shows (also with --no-trace).",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="A host name clients may reach the server by, besides localhost, the bind address "
    "and IP addresses (repeatable; '*' accepts any Host header).",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    metavar="ORIGIN",
    help="An origin (https://app.example.com) whose pages may call the API from a browser "
    "(repeatable; '*' allows every origin). Others are refused.",
)
@click.option(
    "--no-auth",
    is_flag=True,
    help="Serve without API keys on a non-loopback address (anyone who can reach it can run "
    "queries and read traces). Not needed on 127.0.0.1.",
)
@click.option(
    "--header-timeout",
    default=HEADER_TIMEOUT_S,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds a connection may take to send a request's headers before it is closed.",
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
    allowed_hosts: tuple[str, ...],
    cors_origins: tuple[str, ...],
    no_auth: bool,
    header_timeout: float,
) -> None:
    """Serve MoA stacks as an OpenAI-compatible /v1/chat/completions endpoint, and the web UI
    at /ui.

    Clients authenticate with a key from the MOA_API_KEYS environment variable (comma-separated)
    when it is set. Without keys the server only binds a loopback address unless --no-auth.
    """
    import uvicorn

    from moakit.server.app import client_keys
    from moakit.server.http import uvicorn_config
    from moakit.server.workers import WORKER_OPTIONS_ENV, ServeOptions, build_app

    if not client_keys(None) and not no_auth and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve on {host} without API keys: anyone who can reach it could run "
            "queries and read every stored trace. Set MOA_API_KEYS=key1,key2 (clients send "
            "'Authorization: Bearer key1'), or pass --no-auth to serve it open on purpose",
            field="host",
        )
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
        host=host,
        allowed_hosts=list(allowed_hosts),
        cors_origins=list(cors_origins),
    )
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
    shown = f"[{shown}]" if ":" in shown and not shown.startswith("[") else shown
    # moakit.server writes its own structured access line per request (id, model, status,
    # latency, tokens), so uvicorn's plain access log is off rather than doubled.
    common: dict[str, Any] = {
        "header_timeout_s": header_timeout,
        "host": host,
        "port": port,
        "log_config": _log_config(log_level.upper()),
        "access_log": False,
    }
    if workers == 1:
        app = build_app(options)
        _announce(shown, port)
        uvicorn.Server(uvicorn_config(app, **common)).run()
        return
    # Several processes: uvicorn starts each from an import string, so the options travel in
    # the environment (paths and flags only; keys stay in the operator's own variables). The
    # configs and the store are checked here first, so a mistake fails once, not per worker.
    options.check()
    os.environ[WORKER_OPTIONS_ENV] = options.to_json()
    from uvicorn.supervisors import Multiprocess

    config = uvicorn_config(
        "moakit.server.workers:app_from_env", factory=True, workers=workers, **common
    )
    _announce(shown, port)
    # What uvicorn.run does for workers > 1, with our config (its header timeout travels to
    # every worker process: the config is pickled, and each worker builds its own Server).
    Multiprocess(config, sockets=[config.bind_socket()]).run()


def _announce(shown: str, port: int) -> None:
    click.echo(
        f"moa serve: web UI at http://{shown}:{port}/ui, API at http://{shown}:{port}/v1", err=True
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(a[4][0]).is_loopback for a in found)


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
