"""A click group whose subcommands are imported only when one of them runs.

Every ``moa`` command pays, at start-up, for the imports of the module that defines it: the
server's (starlette, uvicorn), the evaluation's, the trace viewer's (rich tables). Importing them
all to print ``moa --help`` or to run ``moa ask`` made every command start slowly. The group keeps,
for each subcommand, where it lives and the one line ``moa --help`` shows for it; the module is
imported when the command is invoked (or its own ``--help`` is asked for). A test checks that
each line is the one the real command would show, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module

import click


@dataclass(frozen=True)
class LazyCommand:
    module: str  # e.g. "moakit.cli.serve"
    attribute: str  # the click command or group in it, e.g. "serve_cmd"
    short_help: str  # the line `moa --help` shows: the real command's short help

    def load(self) -> click.Command:
        command = getattr(import_module(self.module), self.attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.module}.{self.attribute} is not a click command")
        return command


class LazyGroup(click.Group):
    """``click.Group`` plus ``lazy`` commands. Commands added with ``add_command`` stay eager.
    Installed plugins' commands (hook ``register_commands``) join when the list of commands is
    asked for (``moa --help``) or a name is not one of moakit's own: ``moa ask`` never loads
    a plugin for them."""

    def __init__(self, *args: object, lazy: dict[str, LazyCommand], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = dict(lazy)
        self._plugins_added = False

    def _add_plugin_commands(self) -> None:
        if not self._plugins_added:
            self._plugins_added = True
            from moakit.plugins import add_plugin_commands

            add_plugin_commands(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in self.lazy:
            command = self.lazy[cmd_name].load()
            self.add_command(command, cmd_name)  # loaded once
        if command is None:
            self._add_plugin_commands()
            command = super().get_command(ctx, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As ``click.Group.format_commands``, from the stored lines for commands not loaded."""
        rows: list[tuple[str, click.Command | None]] = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name)
            if command is None or not command.hidden:
                rows.append((name, command))
        if not rows:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in rows)
        lines = []
        for name, command in rows:
            # A stand-in command shortens the stored line exactly as click shortens a help text.
            shown = command or click.Command(name, help=self.lazy[name].short_help)
            lines.append((name, shown.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(lines)
