"""The ``moa`` command. One module per noun; this one only wires them together and maps
moakit's typed errors to one-line messages and exit codes. A noun's module is imported only
when its command runs (``LazyGroup``): ``moa --help`` or ``moa ask`` never load the server,
the evaluation or the trace viewer."""

from __future__ import annotations

import sys

import click

from moakit.cli.lazy import LazyCommand, LazyGroup
from moakit.cli.literal import one_line
from moakit.errors import ConfigError, MoaError, QueryFailed

EXIT_CONFIG = 2
EXIT_QUERY = 3


# name -> where the command lives and the line `moa --help` shows for it (checked by a test).
COMMANDS = {
    "ask": LazyCommand(
        "moakit.cli.ask", "ask_cmd", "Answer QUESTION (or stdin when piped) with a MoA stack."
    ),
    "batch": LazyCommand(
        "moakit.cli.batch", "batch_cmd", "Answer every line of INPUT into OUTPUT, resumably."
    ),
    "chat": LazyCommand(
        "moakit.cli.chat",
        "chat_cmd",
        "Multi-turn chat: every layer sees the whole conversation.",
    ),
    "config": LazyCommand("moakit.cli.presets", "config_group", "Work with stack config files."),
    "eval": LazyCommand(
        "moakit.cli.eval",
        "eval_group",
        "Measure MoA against single models on benchmarks or your own data.",
    ),
    "fake-backend": LazyCommand(
        "moakit.cli.fake_backend",
        "fake_backend_cmd",
        "Serve a fake OpenAI chat-completions API for tests and benchmarks.",
    ),
    "plugins": LazyCommand(
        "moakit.cli.plugins",
        "plugins_cmd",
        "List installed plugins and what each adds (providers, strategies, ...).",
    ),
    "presets": LazyCommand(
        "moakit.cli.presets",
        "presets_group",
        "List presets (shipped and in $MOAKIT_HOME/presets).",
    ),
    "serve": LazyCommand(
        "moakit.cli.serve",
        "serve_cmd",
        "Serve MoA stacks as an OpenAI-compatible /v1/chat/completions endpoint, and the web "
        "UI at /ui.",
    ),
    "trace": LazyCommand(
        "moakit.cli.trace",
        "trace_group",
        "Recorded queries: who said what, what it cost, how long each step took.",
    ),
}


@click.group(cls=LazyGroup, lazy=COMMANDS)
@click.version_option(package_name="moakit")
def cli() -> None:
    """Mixture-of-Agents: answer with a stack of LLMs."""


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
