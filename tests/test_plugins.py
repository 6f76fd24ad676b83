"""The plugin registry: a third-party package (tests/plugins/moakit-hello, installed into the
test environment by `make test` the way a user installs a plugin) adds a provider and a strategy
through the ``moakit`` entry point, and `moa plugins`, `moa ask` and `moa serve` use them."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import httpx
import pytest

from moakit import Stack, parse_config
from moakit.errors import ConfigError
from moakit.models.base import ChatRequest, Chunk, Model
from moakit.plugins import registered, registry
from moakit.testing.models import echo_model
from moakit.testing.plugins import plugin

STACK = """name = "greeters"
strategy = "first-layer"
[defaults]
provider = "hello"
[[layers]]
members = [{model = "p1"}, {model = "p2"}]
[[layers]]
members = [{model = "never-called"}]
[aggregator]
model = "agg"
"""


@pytest.fixture(scope="module", autouse=True)
def _plugin_installed() -> None:
    try:
        version("moakit-hello")
    except PackageNotFoundError:
        pytest.fail("the test plugin is not installed: run `make test` (it installs it)")


def moa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moakit.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_moa_plugins_lists_the_installed_plugin_and_what_it_adds() -> None:
    proc = moa("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    found = {p["name"]: p for p in json.loads(proc.stdout)}
    assert found["hello"]["distribution"] == "moakit-hello"
    assert found["hello"]["registered"] == [["provider", "hello"], ["strategy", "first-layer"]]
    assert not any(p["builtin"] for p in found.values())  # built-ins only with --all
    text = moa("plugins").stdout
    assert "hello  (moakit-hello 0.1.0)" in text and "strategy: first-layer" in text


def test_builtins_come_through_the_same_hooks() -> None:
    proc = moa("plugins", "--all", "--json")
    found = {p["name"]: p for p in json.loads(proc.stdout)}
    assert ["provider", "openai"] in found["moakit.models.builtin"]["registered"]
    assert ["strategy", "layered"] in found["moakit.engine.strategies"]["registered"]
    assert ["strategy", "vote"] in found["moakit.defenses.plugin"]["registered"]
    assert found["moakit.models.builtin"]["builtin"] is True


def test_moa_ask_uses_the_plugins_provider_and_strategy(tmp_path: Path) -> None:
    config = tmp_path / "greeters.toml"
    config.write_text(STACK)
    proc = moa("ask", "--config", str(config), "--json", "hi there")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["final"] == "hello from agg: hi there"
    # The plugin's strategy ran the first layer only.
    assert [[m["output"] for m in layer["members"]] for layer in result["layers"]] == [
        ["hello from p1: hi there", "hello from p2: hi there"]
    ]


@contextlib.contextmanager
def serving(config: Path) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    moa_bin = str(Path(sys.executable).with_name("moa"))
    proc = subprocess.Popen(
        [moa_bin, "serve", "--port", str(port), "--config", str(config)],
        env={**os.environ},
        stderr=subprocess.DEVNULL,
    )
    try:
        root = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{root}/health").status_code == 200:
                    break
            assert proc.poll() is None, "moa serve exited"
            assert time.monotonic() < deadline, "moa serve did not start"
            time.sleep(0.1)
        yield root
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_moa_serve_answers_with_the_plugins_provider_and_strategy(tmp_path: Path) -> None:
    config = tmp_path / "greeters.toml"
    config.write_text(STACK)
    with serving(config) as root:
        body = {"model": "greeters", "messages": [{"role": "user", "content": "hey"}]}
        answer = httpx.post(f"{root}/v1/chat/completions", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "hello from agg: hey"


class Shouting(Model):
    name = "shout"

    async def stream(self, request: ChatRequest):  # type: ignore[no-untyped-def]
        yield Chunk(text="HI", finish_reason="stop")


def test_a_later_plugin_replaces_a_builtin_by_name_and_says_so() -> None:
    replacement = plugin("my-openai", register_providers={"openai": lambda s, p: Shouting()})
    with registered(replacement, name="my-openai"):
        entry = registry().providers.entries["openai"]
        assert (entry.plugin, entry.replaced) == ("my-openai", "moakit.models.builtin")
    # Unregistered: the built-in is back.
    assert registry().providers.entries["openai"].plugin == "moakit.models.builtin"


async def test_unknown_names_list_what_the_plugins_registered() -> None:
    config = parse_config(
        {"strategy": "nope", "layers": [[{"model": "a"}]], "aggregator": {"model": "a"}}
    )
    with pytest.raises(ConfigError, match="unknown strategy 'nope'") as info:
        Stack(config, models={"a": echo_model("a")})
    assert "first-layer" in str(info.value) and "layered" in str(info.value)
    assert info.value.field == "strategy"


def test_importing_moakit_registers_nothing() -> None:
    """Nothing registers by import side effect: the registry is built from the hooks on first
    use, and importing the engine, the defenses or the package loads no plug-in module."""
    code = (
        "import sys, moakit, moakit.engine, moakit.defenses\n"
        "import moakit.plugins as p\n"
        "assert p._State.manager is None, 'a plugin manager was built on import'\n"
        "assert 'moakit.defenses.plugin' not in sys.modules\n"
        "assert 'moakit_hello' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_trace_store_plugin_opens_its_own_scheme(tmp_path: Path) -> None:
    from moakit.trace import TraceStore, open_trace_store

    opened: list[str] = []

    def opener(url: str, *, store_prompts: bool, redactor: object) -> TraceStore:
        opened.append(url)
        return TraceStore(tmp_path / "memo.db", store_prompts=store_prompts)

    with registered(plugin(register_trace_stores={"memo": opener})):
        store = open_trace_store("memo://team-a")
        store.close()
    assert opened == ["memo://team-a"]
    with pytest.raises(ConfigError, match="unknown trace store 'memo'"):
        open_trace_store("memo://team-a")
    # The built-in PostgreSQL store comes through the same hook.
    assert {"postgresql", "postgres"} <= set(registry().trace_stores.names())


async def test_a_plugin_adds_a_dataset_and_a_scorer_to_moa_eval(tmp_path: Path) -> None:
    from moakit.eval.datasets import Item, load_dataset
    from moakit.eval.plugin import DatasetSource, ScorerSource
    from moakit.eval.scorers import build_scorer
    from moakit.eval.scorers.base import Score, Scorer

    class Shouted(Scorer):
        name = "shouted"

        async def score(self, item: Item, answers: list[str]) -> Score:  # type: ignore[override]
            return Score(value=float(answers[-1].isupper()), correct=answers[-1].isupper())

    items = [Item(id="a", turns=("say hi",), answer="HI")]
    extra = plugin(
        register_datasets={"tiny": DatasetSource(lambda root: items, "shouted")},
        register_scorers={"shouted": ScorerSource(lambda judge, baseline: Shouted())},
    )
    with registered(extra):
        dataset = load_dataset("tiny", data_dir=tmp_path)
        assert (dataset.name, dataset.scorer, dataset.items) == ("tiny", "shouted", items)
        scorer = build_scorer(dataset.scorer)
        assert (await scorer.score(items[0], ["HI"])).correct is True
    with pytest.raises(ConfigError, match="unknown dataset 'tiny'"):
        load_dataset("tiny", data_dir=tmp_path)


def test_a_plugin_adds_a_moa_command_listed_in_help() -> None:
    proc = moa("hello", "world")
    assert (proc.returncode, proc.stdout) == (0, "hello, world\n"), proc.stderr
    assert "Greet NAME (a command a plugin adds)." in moa("--help").stdout
    # A command of moakit's own loads no plugin to run.
    code = (
        "import sys\n"
        "from moakit.cli.main import cli\n"
        "try:\n"
        "    cli.main(['presets', '--help'], standalone_mode=False)\n"
        "finally:\n"
        "    assert 'moakit_hello' not in sys.modules, 'a plugin was loaded'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
