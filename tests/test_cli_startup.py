"""Start-up: `import moakit`, `moa --help` and `moa ask` do not import what they do not use (the
server, the evaluation, llama.cpp, OpenTelemetry...), and the lazily loaded `moa` group shows
exactly the help the real commands would. Behaviour, not timings: bench/README.md has those."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from moakit.cli.main import COMMANDS, cli
from moakit.plugins import add_plugin_commands

# Never needed to start `moa` or to import the library: each is imported by the one command
# (or the one model provider) that uses it.
HEAVY = (
    "moakit.server",
    "moakit.eval",
    "moakit.ui",
    "moakit.testing",
    "moakit.trace.otel",
    "moakit.models.local",
    "llama_cpp",
    "opentelemetry",
    "starlette",
    "uvicorn",
    "anthropic",
    "httpx",
    "numpy",
    "scipy",
)

PROBE = """
import json, sys
sys.argv = ["moa", *json.loads(sys.argv[1])]
if sys.argv[1:] == ["<import>"]:
    import moakit
else:
    from moakit.cli.main import main
    try:
        main()
    except SystemExit:
        pass
print("\\n" + json.dumps(sorted(sys.modules)))
"""


def imported_by(*argv: str) -> set[str]:
    """Modules a fresh interpreter loads for ``moa ARGV`` (``<import>``: `import moakit`)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


@pytest.mark.parametrize(
    "argv",
    [("<import>",), ("--help",), ("ask", "--help"), ("presets",)],
    ids=["import moakit", "moa --help", "moa ask --help", "moa presets"],
)
def test_start_up_does_not_import_heavy_modules(argv: tuple[str, ...]) -> None:
    assert loaded(imported_by(*argv), HEAVY) == []


def test_moa_help_imports_no_command_module() -> None:
    modules = imported_by("--help")
    # Not even the engine, pydantic or rich: only click and the group itself.
    assert loaded(modules, ("moakit.engine", "moakit.config", "pydantic", "rich", "yaml")) == []
    assert sorted(m for m in modules if m.startswith("moakit.cli.")) == [
        "moakit.cli.lazy",
        "moakit.cli.literal",
        "moakit.cli.main",
    ]


def test_a_command_imports_its_own_module_when_it_runs() -> None:
    assert "moakit.cli.serve" not in imported_by("ask", "--help")
    assert "moakit.cli.serve" in imported_by("serve", "--help")


def test_the_stored_help_lines_are_the_real_commands_lines() -> None:
    for name, lazy in COMMANDS.items():
        command = lazy.load()
        assert command.name == name
        for width in (20, 45, 60, 200):
            stand_in = click.Command(name, help=lazy.short_help)
            assert stand_in.get_short_help_str(width) == command.get_short_help_str(width), name


def test_moa_help_is_what_an_eagerly_loaded_group_prints() -> None:
    eager = click.Group("moa", help=cli.help)
    for name, lazy in COMMANDS.items():
        eager.add_command(lazy.load(), name)
    add_plugin_commands(eager)  # an installed plugin's commands are listed too
    eager.params = list(cli.params)
    for width in (60, 80, 120):
        with click.Context(eager, info_name="moa", terminal_width=width) as ctx:
            expected = eager.get_help(ctx)
        lazy_group = type(cli)(name="moa", help=cli.help, lazy=COMMANDS, params=list(cli.params))
        with click.Context(lazy_group, info_name="moa", terminal_width=width) as ctx:
            assert lazy_group.get_help(ctx) == expected


def test_unknown_commands_still_fail_as_click_fails_them() -> None:
    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2
    assert "No such command 'no-such-command'" in result.output


def test_the_library_names_resolve_on_first_use() -> None:
    import moakit
    from moakit.engine import Stack
    from moakit.trace import TraceStore

    assert moakit.Stack is Stack and moakit.TraceStore is TraceStore
    assert moakit.engine.Stack is Stack  # a submodule stays reachable as an attribute
    namespace: dict[str, object] = {}
    exec("from moakit import *", namespace)
    assert set(moakit.__all__) <= set(namespace) and set(moakit.__all__) <= set(dir(moakit))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        _ = moakit.not_a_name
