"""A moakit plugin: the ``hello`` provider (a model that greets, no network), the
``first-layer`` strategy (answers from the first layer only, whatever the stack lists) and a
``moa hello`` command. Its module imports almost nothing: ``moa --help`` loads it to list the
command, so the engine is imported only where a hook needs it."""

from __future__ import annotations

from typing import Any

import moakit


@moakit.hookimpl
def register_providers(register: moakit.Register) -> None:
    from moakit_hello.parts import HelloModel

    register("hello", lambda spec, pool: HelloModel(spec.model))


@moakit.hookimpl
def register_strategies(register: moakit.Register) -> None:
    from moakit_hello.parts import FirstLayerOnly

    register("first-layer", FirstLayerOnly)


@moakit.hookimpl
def register_commands(cli: Any) -> None:
    import click

    @cli.command("hello")
    @click.argument("name")
    def hello(name: str) -> None:
        """Greet NAME (a command a plugin adds)."""
        click.echo(f"hello, {name}")
