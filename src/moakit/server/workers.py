"""What ``moa serve`` builds its app from, in one process or in each of ``--workers N``.

uvicorn starts every worker process from an import string (``app_from_env``), so the serve
options reach them as JSON in ``MOAKIT_SERVE_OPTIONS`` (file paths and flags: keys stay in the
operator's own environment variables, which the workers inherit). Each worker opens the trace
store itself: SQLite in WAL mode takes several writing processes on one file, PostgreSQL any
number on any machine.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from starlette.applications import Starlette

from moakit.config import StackConfig, list_presets, read_config_file
from moakit.errors import ConfigError
from moakit.trace.base import BaseTraceStore

WORKER_OPTIONS_ENV = "MOAKIT_SERVE_OPTIONS"


@dataclass(frozen=True)
class ServeOptions:
    config_path: str | None = None
    server_config: str | None = None
    allow_request_stacks: bool | None = None
    max_concurrent: int = 64
    max_body_bytes: int = 1_000_000
    preload: bool = True
    trace: bool = True
    trace_db: str | None = None
    evals_dir: str | None = None
    # The Host/Origin guard: the bind address, extra host names, and origins allowed to call.
    host: str = "127.0.0.1"
    allowed_hosts: list[str] = field(default_factory=list)
    cors_origins: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeOptions:
        return cls(**json.loads(text))

    def stacks(self) -> dict[str, StackConfig] | None:
        if self.config_path is None:
            return None
        stacks = dict(list_presets())
        cfg = read_config_file(self.config_path)
        stacks[cfg.name] = cfg
        return stacks

    def check(self) -> None:
        """Raise what a worker would (a ``ConfigError``, a store that cannot be opened) before
        any worker starts; opening the store once also applies its migrations."""
        self.stacks()
        if self.server_config is not None:
            from moakit.server.settings import read_server_settings

            read_server_settings(self.server_config)
        store = self.open_store()
        if store is not None:
            store.close()

    def open_store(self) -> BaseTraceStore | None:
        """The trace store, or ``None`` with tracing off. One that cannot be opened (another
        program's file, a corrupt database) stops the server, naming what to do."""
        from moakit.trace import TraceStoreError, default_store, tracing_enabled

        if not (self.trace and tracing_enabled()):
            return None
        try:
            return default_store(self.trace_db)
        except TraceStoreError as exc:
            raise TraceStoreError(
                f"{exc}. Move or repair the file, point --trace-db elsewhere, or serve with "
                "--no-trace"
            ) from None


def build_app(options: ServeOptions) -> Starlette:
    from moakit.server import create_app
    from moakit.server.app import client_keys
    from moakit.server.guard import default_allowed_hosts
    from moakit.server.settings import ServerSettings, read_server_settings

    settings = (
        read_server_settings(options.server_config)
        if options.server_config is not None
        else ServerSettings()
    )
    return create_app(
        options.stacks(),
        api_keys=client_keys(None),
        max_concurrent=options.max_concurrent,
        max_body_bytes=options.max_body_bytes,
        preload=options.preload,
        settings=settings,
        allow_request_stacks=options.allow_request_stacks,
        trace_store=options.open_store(),
        evals_dir=Path(options.evals_dir) if options.evals_dir else None,
        allowed_hosts=[*default_allowed_hosts(options.host), *options.allowed_hosts],
        cors_origins=list(options.cors_origins),
    )


def app_from_env() -> Starlette:
    """uvicorn's factory in each worker process."""
    raw = os.environ.get(WORKER_OPTIONS_ENV)
    if raw is None:
        raise ConfigError(f"{WORKER_OPTIONS_ENV} is not set: start workers with moa serve")
    return build_app(ServeOptions.from_json(raw))
