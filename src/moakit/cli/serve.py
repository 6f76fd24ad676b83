"""``moa serve``: run the OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path

import click

from moakit.config import StackConfig, list_presets, read_config_file
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
    "--max-concurrent", default=64, show_default=True, type=int, help="Queries in flight."
)
def serve_cmd(host: str, port: int, config_path: Path | None, max_concurrent: int) -> None:
    """Serve MoA stacks as an OpenAI-compatible /v1/chat/completions endpoint.

    Clients authenticate with a key from the MOA_API_KEYS environment variable (comma-separated)
    when it is set.
    """
    import uvicorn

    from moakit.server import create_app

    stacks: dict[str, StackConfig] | None = None
    if config_path is not None:
        try:
            stacks = dict(list_presets())
            cfg = read_config_file(config_path)
        except ConfigError as err:
            raise click.ClickException(str(err)) from None
        stacks[cfg.name] = cfg
    app = create_app(stacks, max_concurrent=max_concurrent)
    uvicorn.run(app, host=host, port=port, log_level="info")
