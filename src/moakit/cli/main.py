"""The ``moa`` command. One module per noun; this one only wires them together and maps
moakit's typed errors to one-line messages and exit codes."""

from __future__ import annotations

import sys

import click

from moakit.cli.ask import ask_cmd
from moakit.cli.batch import batch_cmd
from moakit.cli.chat import chat_cmd
from moakit.cli.eval import eval_group
from moakit.cli.fake_backend import fake_backend_cmd
from moakit.cli.literal import one_line
from moakit.cli.plugins import plugins_cmd
from moakit.cli.presets import config_group, presets_group
from moakit.cli.serve import serve_cmd
from moakit.cli.trace import trace_group
from moakit.errors import ConfigError, MoaError, QueryFailed

EXIT_CONFIG = 2
EXIT_QUERY = 3


@click.group()
@click.version_option(package_name="moakit")
def cli() -> None:
    """Mixture-of-Agents: answer with a stack of LLMs."""


cli.add_command(ask_cmd)
cli.add_command(chat_cmd)
cli.add_command(presets_group)
cli.add_command(config_group)
cli.add_command(fake_backend_cmd)
cli.add_command(serve_cmd)
cli.add_command(trace_group)
cli.add_command(eval_group)
cli.add_command(plugins_cmd)
cli.add_command(batch_cmd)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        click.echo(f"error: {one_line(str(exc))}", err=True)
        sys.exit(EXIT_CONFIG)
    except QueryFailed as exc:
        click.echo(f"error: {one_line(str(exc))}", err=True)
        sys.exit(EXIT_QUERY)
    except MoaError as exc:
        click.echo(f"error: {one_line(str(exc))}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
