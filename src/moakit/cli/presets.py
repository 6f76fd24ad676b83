"""``moa presets`` (list/show) and ``moa config check``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from moakit.cli.literal import one_line
from moakit.config import ResolvedMember, StackConfig, load_preset, preset_names, read_config_file


def _summary(config: StackConfig) -> str:
    sizes = " × ".join(str(len(config.layer_members(i))) for i in range(len(config.layers)))
    return f"layers [{sizes}] → {config.aggregator.display}"


def _resolved(config: StackConfig) -> list[ResolvedMember]:
    specs = [m for i in range(len(config.layers)) for m in config.layer_members(i)]
    return specs + config.aggregators()


def _needed_keys(config: StackConfig) -> list[str]:
    return sorted({s.api_key_env for s in _resolved(config) if s.api_key_env})


@click.group("presets", invoke_without_command=True)
@click.pass_context
def presets_group(ctx: click.Context) -> None:
    """List presets (shipped and in $MOAKIT_HOME/presets)."""
    if ctx.invoked_subcommand is None:
        for name in preset_names():
            config = load_preset(name)
            # User presets are files anyone could have written: shown, never obeyed.
            click.echo(one_line(f"{name:16} {_summary(config)}  {config.description}"))


@presets_group.command("show")
@click.argument("name")
def presets_show(name: str) -> None:
    """Print a preset as JSON: as written ("config") and every member exactly as the engine
    calls it, defaults applied ("resolved")."""
    config = load_preset(name)
    layers = [
        [m.model_dump(mode="json") for m in config.layer_members(i)]
        for i in range(len(config.layers))
    ]
    doc = {
        "config": config.model_dump(mode="json"),
        "resolved": {
            "layers": layers,
            "aggregators": [m.model_dump(mode="json") for m in config.aggregators()],
        },
    }
    click.echo(json.dumps(doc, indent=2, ensure_ascii=False))


@click.group("config")
def config_group() -> None:
    """Work with stack config files."""


@config_group.command("check")
@click.argument("path", type=click.Path(path_type=Path))
def config_check(path: Path) -> None:
    """Validate a stack file; report missing API-key variables (names only)."""
    config = read_config_file(path)
    click.echo(one_line(f"ok: {config.name}: {_summary(config)}"))
    for env in _needed_keys(config):
        state = "set" if os.environ.get(env) else "NOT SET"
        click.echo(f"  needs ${env}: {state}")
