"""``moa fake-backend``: run the fault-injecting OpenAI-compatible fake server from a shell."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import click

from moakit.testing._fake_types import FAULT_KINDS, behavior_from_mapping, load_behaviors


@click.command("fake-backend")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option(
    "--port",
    default=8001,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to bind; 0 picks a free one (the URL printed on stdout tells which).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help='TOML file with [default] and [models."NAME"] behaviour tables.',
)
@click.option("--ttft", type=click.FloatRange(min=0), help="Default time to first token, seconds.")
@click.option("--per-token", type=click.FloatRange(min=0), help="Default delay per token, seconds.")
@click.option("--tokens", type=click.IntRange(min=0), help="Default completion length in words.")
@click.option(
    "--fault",
    type=click.Choice(["none", *FAULT_KINDS]),
    help="Default fault injected for models without their own table.",
)
@click.option(
    "--fault-times",
    type=click.IntRange(min=0),
    help="Fail only the first N requests per model (default: every request).",
)
def fake_backend_cmd(
    host: str,
    port: int,
    config_path: str | None,
    ttft: float | None,
    per_token: float | None,
    tokens: int | None,
    fault: str | None,
    fault_times: int | None,
) -> None:
    """Serve a fake OpenAI chat-completions API for tests and benchmarks.

    Prints the base URL (http://HOST:PORT/v1) on stdout once it accepts connections, then serves
    until Ctrl-C. Answers are deterministic: "<model> saw <digest of messages> ..." padded with
    filler words. Flags override the [default] table of --config; model tables inherit from
    [default] as written in the file.
    """
    from moakit.testing.fake_backend import Behavior, FakeBackend

    models: dict[str, Behavior] = {}
    default = Behavior()
    try:
        if config_path is not None:
            default, models = load_behaviors(config_path)
        overrides: dict[str, Any] = {}
        for key, value in (
            ("ttft_s", ttft),
            ("per_token_s", per_token),
            ("tokens", tokens),
            ("fault", fault),
            ("fault_times", fault_times),
        ):
            if value is not None:
                overrides[key] = value
        default = behavior_from_mapping(overrides, default)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc

    backend = FakeBackend(models, default=default, host=host, port=port)

    async def serve() -> None:
        try:
            await backend.start()
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        click.echo(backend.base_url)
        try:
            await stop.wait()
        finally:
            await backend.aclose()
        s = backend.stats
        click.echo(
            f"fake-backend: {s.requests} requests, {s.completed} completed, "
            f"{s.cancelled} cancelled, {s.aborted} aborted",
            err=True,
        )

    asyncio.run(serve())


if __name__ == "__main__":
    fake_backend_cmd()
