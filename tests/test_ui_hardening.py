"""The UI's API against hostile input (issue 27 item 7, issue 22's /ui/api/run 500) and the
server's UI wiring (item 12: ``GET /`` points at the UI; ``--no-trace`` keeps the eval viewer)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from moakit.server import create_app
from moakit.trace import TraceStore
from trace_helpers import echo_stack
from ui_app import tiny_png, write_eval_results

JSON = {"content-type": "application/json"}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    store = TraceStore(tmp_path / "ui.db")
    stack, _ = echo_stack()
    app = create_app({"trace-test": stack}, api_keys=[], trace_store=store)
    transport = httpx.ASGITransport(app=app)
    async with stack, httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        yield c
    store.close()


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("limit=1e400", "limit"),
        ("limit=nan", "limit"),
        ("limit=-1", "limit"),
        ("limit=1.5", "limit"),
        ("limit=99999999999999999999999", "limit"),
        ("since=nan", "since"),
        ("since=inf", "since"),
        ("since=1e400", "since"),
    ],
)
async def test_bad_numbers_in_the_trace_list_are_400(
    client: httpx.AsyncClient, query: str, param: str
) -> None:
    r = await client.get(f"/ui/api/traces?{query}")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


async def test_good_numbers_still_work(client: httpx.AsyncClient) -> None:
    r = await client.get("/ui/api/traces?limit=5&since=0")
    assert r.status_code == 200 and r.json()["data"] == []


async def test_deeply_nested_run_body_is_the_same_400_as_v1(client: httpx.AsyncClient) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    run = await client.post("/ui/api/run", content=deep, headers=JSON)
    v1 = await client.post("/v1/chat/completions", content=deep, headers=JSON)
    assert run.status_code == v1.status_code == 400
    assert run.json()["error"]["code"] == v1.json()["error"]["code"] == "invalid_json"
    shallow_but_deep = b'{"stack": "trace-test", "prompt": "hi", "x": ' + b"[" * 80 + b"]" * 80
    r = await client.post("/ui/api/run", content=shallow_but_deep + b"}", headers=JSON)
    assert r.status_code == 400 and "levels deep" in r.json()["error"]["message"]


async def test_root_redirects_to_the_ui(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 307 and r.headers["location"] == "/ui"


async def test_evals_never_follow_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "evals"
    write_eval_results(root / "run-1", "fine")
    outside = tmp_path / "outside"
    write_eval_results(outside / "private-run", "a private answer")
    (outside / "secret.jsonl").write_text(
        '{"item_id": "s", "system": "leak", "final": "PRIVATE"}\n'
    )
    (outside / "secret.png").write_bytes(tiny_png(9, 9))
    os.symlink(outside / "private-run", root / "linked-run")  # a whole results dir
    os.symlink(outside / "secret.jsonl", root / "run-1" / "records" / "leak.x.jsonl")
    os.symlink(outside / "secret.png", root / "run-1" / "plots" / "leak.png")
    inner = root / "run-2"
    inner.mkdir()
    os.symlink(outside / "private-run" / "summary.json", inner / "summary.json")
    app = create_app({}, api_keys=[], evals_dir=root)  # and no trace store: --no-trace
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        listing = (await c.get("/ui/api/evals")).json()["data"]
        assert [d["name"] for d in listing] == ["run-1"]
        assert (await c.get("/ui/api/evals/linked-run")).status_code == 404
        detail = (await c.get("/ui/api/evals/run-1")).json()
        assert detail["plots"] == ["layer_curve.png"]
        assert (await c.get("/ui/api/evals/run-1/plots/leak.png")).status_code == 404
        items = (await c.get("/ui/api/evals/run-1/items")).text
        assert "PRIVATE" not in items and "leak" not in items
        # The UI itself is there with tracing off, and says tracing is off.
        assert (await c.get("/ui")).status_code == 200
        off = await c.get("/ui/api/traces")
        assert off.status_code == 404 and off.json()["error"]["code"] == "tracing_off"
