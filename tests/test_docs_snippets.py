"""Every Python snippet in README.md and docs/*.md runs as written (issue 27, item 12).

The snippets name real presets (``local``, ``moa-lite``); here those presets are shadowed by
user presets of the same name (``$MOAKIT_HOME/presets``, which users may do too) that point at
the fault-injecting fake backend, so each snippet runs unchanged, fast and offline. A marker in
an HTML comment on the line before a block says how to run it when it cannot run alone:

- ``<!-- snippet: server -->``: a client of ``moa serve``; run against a real server on a free
  port (its URL replaces ``http://127.0.0.1:8000``), API key ``key1``;
- ``<!-- snippet: continues -->``: a fragment that uses the names of the snippet before it;
- ``<!-- snippet: skip REASON -->``: not runnable here, and why.

A block with no marker must run alone. TOML blocks must at least parse.
"""

from __future__ import annotations

import ast
import asyncio
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from moakit.server import create_app
from moakit.testing.fake_backend import Behavior, FakeBackend
from server_harness import serve

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"(?:<!--\s*snippet:\s*(?P<marker>[^>]*?)\s*-->\s*\n)?^```(?P<lang>\w*)\n(?P<code>.*?)^```",
    re.MULTILINE | re.DOTALL,
)
SHADOWED = ("local", "local-fast", "moa-lite")


@dataclass(frozen=True)
class Snippet:
    doc: str
    line: int
    lang: str
    marker: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def snippets() -> list[Snippet]:
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            line = text.count("\n", 0, m.start("code"))
            found.append(
                Snippet(path.name, line, m["lang"], (m["marker"] or "").strip(), m["code"])
            )
    return found


PYTHON = [s for s in snippets() if s.lang == "python"]
TOML = [s for s in snippets() if s.lang == "toml"]


@pytest.fixture
def fake_presets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeBackend]:
    with FakeBackend(default=Behavior(tokens=6)) as backend:
        home = tmp_path / "home"
        (home / "presets").mkdir(parents=True)
        for name in SHADOWED:
            (home / "presets" / f"{name}.toml").write_text(
                f'name = "{name}"\n[defaults]\nbase_url = "{backend.base_url}"\nmax_tokens = 16\n'
                '[[layers]]\nmembers = [{model = "p1"}, {model = "p2"}, {model = "p3"}]\n'
                '[aggregator]\nmodel = "agg"\n'
            )
        monkeypatch.setenv("MOAKIT_HOME", str(home))
        monkeypatch.setenv("MOAKIT_TRACE_DB", str(tmp_path / "traces.db"))
        monkeypatch.chdir(tmp_path)
        yield backend


def execute(code: str, namespace: dict[str, Any]) -> None:
    """Run ``code`` as a script that may ``await`` at the top level (as the snippets do)."""
    compiled = compile(code, "<snippet>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(compiled, namespace)
    if asyncio.iscoroutine(result):
        asyncio.run(result)


def test_the_docs_have_python_snippets() -> None:
    # The parser must see them, or every test below would pass on nothing.
    assert {s.doc for s in PYTHON} >= {"README.md", "tracing.md"}
    assert len(PYTHON) >= 5


@pytest.mark.parametrize("snippet", PYTHON, ids=[s.id for s in PYTHON])
def test_python_snippet_runs(snippet: Snippet, fake_presets: FakeBackend) -> None:
    kind, _, reason = snippet.marker.partition(" ")
    if kind == "skip":
        assert reason, f"{snippet.id}: a skipped snippet says why"
        pytest.skip(reason)
    assert kind in ("", "server", "continues"), f"{snippet.id}: unknown marker {kind!r}"
    namespace: dict[str, Any] = {"__name__": "__snippet__"}
    if kind == "continues":
        before = PYTHON[PYTHON.index(snippet) - 1]
        assert before.doc == snippet.doc
        execute(before.code, namespace)
    if kind == "server":
        with serve(create_app(api_keys=["key1"])) as base:
            execute(snippet.code.replace("http://127.0.0.1:8000/v1", base), namespace)
    else:
        execute(snippet.code, namespace)
    assert fake_presets.stats.requests > 0, "the snippet never reached a model"


@pytest.mark.parametrize("snippet", TOML, ids=[s.id for s in TOML])
def test_toml_snippet_parses(snippet: Snippet) -> None:
    tomllib.loads(snippet.code)
