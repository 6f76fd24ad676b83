"""``moa plugins``: every plugin moakit loaded (built-ins first, then installed packages with a
``moakit`` entry point) and what each registered."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from moakit.cli.literal import one_line
from moakit.plugins import plugins


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@click.option("--all", "show_all", is_flag=True, help="Include moakit's built-in plugins.")
def plugins_cmd(as_json: bool, show_all: bool) -> None:
    """List installed plugins and what each adds (providers, strategies, ...)."""
    found = [p for p in plugins() if show_all or not p.builtin]
    if as_json:
        click.echo(json.dumps([asdict(p) for p in found], indent=2))
        return
    if not found:
        click.echo("no plugins installed (moa plugins --all lists the built-ins)")
        return
    for info in found:
        # Names come from installed third-party code: printed literally.
        origin = (
            "built-in"
            if info.builtin
            else (
                f"{info.distribution} {info.version}"
                if info.distribution
                else "registered at run time"
            )
        )
        click.echo(one_line(f"{info.name}  ({origin})"))
        for kind, name in info.registered:
            click.echo(one_line(f"  {kind}: {name}"))
        for kind, name, replaced in info.replaces:
            click.echo(one_line(f"  replaces {kind} {name!r} of {replaced}"))
        if info.commands:
            click.echo("  adds moa commands")
