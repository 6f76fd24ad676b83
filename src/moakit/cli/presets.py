"""``moa presets`` (list/show) and ``moa config check``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from moakit.config import StackConfig, load_preset, preset_names, read_config_file


def _summary(config: StackConfig) -> str:
    sizes = " × ".join(str(len(config.layer_members(i))) for i in range(len(config.layers)))
    return f"layers [{sizes}] → {config.aggregator.display}"


def _needed_keys(config: StackConfig) -> list[str]:
    specs = [m for i in range(len(config.layers)) for m in config.layer_members(i)]
    specs += config.aggregators()
    envs = set()
    for s in specs:
        if s.provider == "openai" and (s.api_key_env or s.base_url is None):
            envs.add(s.api_key_env or "OPENAI_API_KEY")
        elif s.provider == "anthropic":
            envs.add(s.api_key_env or "ANTHROPIC_API_KEY")
    return sorted(envs)


@click.group("presets", invoke_without_command=True)
@click.pass_context
def presets_group(ctx: click.Context) -> None:
    """List presets (shipped and in $MOAKIT_HOME/presets)."""
    if ctx.invoked_subcommand is None:
        for name in preset_names():
            config = load_preset(name)
            click.echo(f"{name:16} {_summary(config)}  {config.description}")


@presets_group.command("show")
@click.argument("name")
def presets_show(name: str) -> None:
    """Print a preset as JSON, defaults applied."""
    click.echo(load_preset(name).model_dump_json(indent=2))


@click.group("config")
def config_group() -> None:
    """Work with stack config files."""


@config_group.command("check")
@click.argument("path", type=click.Path(path_type=Path))
def config_check(path: Path) -> None:
    """Validate a stack file; report missing API-key variables (names only)."""
    config = read_config_file(path)
    click.echo(f"ok: {config.name}: {_summary(config)}")
    for env in _needed_keys(config):
        state = "set" if os.environ.get(env) else "NOT SET"
        click.echo(f"  needs ${env}: {state}")
