from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest

from moakit import Stack
from moakit.trace import TraceStore
from trace_helpers import echo_stack, failing, fixed
from ui_app import make_app

KEY = "ui-test-key-123"
STATIC_SCRIPTS = sorted(
    p.name
    for p in resources.files("moakit.ui").joinpath("static").iterdir()
    if p.name.endswith(".js")
)
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, TraceStore]]:
    store = TraceStore(tmp_path / "ui.db")
    stack, _ = echo_stack(b=failing("b", "member b is down"), agg=fixed("agg", "<b>final</b>"))
    async with stack:
        app = make_app(store, {"trace-test": stack}, KEY)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ui.test") as client:
            yield client, store
    store.close()


def sse(text: str) -> list[dict[str, Any]]:
    return [json.loads(m) for m in re.findall(r"^data: (.*)$", text, flags=re.MULTILINE)]


async def test_page_and_assets_are_served_with_a_strict_policy(
    env: tuple[httpx.AsyncClient, TraceStore],
) -> None:
    client, _ = env
    page = await client.get("/ui")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/ui/static/app.js">' in page.text
    for name in STATIC_SCRIPTS:
        js = await client.get(f"/ui/static/{name}")
        assert js.status_code == 200 and "javascript" in js.headers["content-type"], name
    assert "readSSE" in (await client.get("/ui/static/dom.js")).text
    assert (await client.get("/ui/static/app.css")).status_code == 200


def test_the_script_never_inserts_markup() -> None:
    """Model text reaches the page through textContent only (the browser test checks the
    effect; this guards the source against a later innerHTML)."""
    assert len(STATIC_SCRIPTS) >= 5
    for name in STATIC_SCRIPTS:
        js = resources.files("moakit.ui").joinpath("static", name).read_text()
        code = re.sub(r"^\s*//.*$", "", js, flags=re.MULTILINE)  # the header comment names them
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in code, (name, sink)


async def test_api_requires_the_key(env: tuple[httpx.AsyncClient, TraceStore]) -> None:
    client, _ = env
    for method, path in (
        ("GET", "/ui/api/traces"),
        ("GET", "/ui/api/stacks"),
        ("GET", "/ui/api/traces/x"),
        ("POST", "/ui/api/run"),
    ):
        response = await client.request(method, path, headers={"Authorization": "Bearer wrong"})
        assert response.status_code == 401, path
        assert response.json()["error"]["type"] == "authentication_error"


async def test_stacks_show_their_shape(env: tuple[httpx.AsyncClient, TraceStore]) -> None:
    client, _ = env
    [shape] = (await client.get("/ui/api/stacks", headers=AUTH)).json()["data"]
    assert shape["name"] == "trace-test"
    assert [[m["label"] for m in layer] for layer in shape["layers"]] == [["a", "b"], ["c"]]
    assert shape["aggregator"]["label"] == "agg"
    assert (shape["llm_calls"], shape["serial_rounds"]) == (4, 3)
    assert shape["estimated_cost_usd"] is None  # no prices in this stack


async def test_run_streams_events_and_records_the_trace(
    env: tuple[httpx.AsyncClient, TraceStore],
) -> None:
    client, store = env
    response = await client.post(
        "/ui/api/run", headers=AUTH, json={"stack": "trace-test", "prompt": "hi?"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse(response.text)
    types = [e["type"] for e in events]
    assert types[0] == "run" and types[-1] == "RunFinished"
    for expected in (
        "LayerStarted",
        "MemberFinished",
        "LayerFinished",
        "AggregatorStarted",
        "TextDelta",
    ):
        assert expected in types
    run_id = events[0]["run_id"]
    failed = [
        e["output"] for e in events if e["type"] == "MemberFinished" and e["output"]["label"] == "b"
    ]
    assert failed and "member b is down" in failed[0]["error"]
    final = events[-1]["result"]["final"]
    assert final == "<b>final</b>"
    assert store.flush()

    listing = (await client.get("/ui/api/traces", headers=AUTH)).json()["data"]
    assert [(t["id"], t["status"], t["question"]) for t in listing] == [(run_id, "complete", "hi?")]
    assert (await client.get("/ui/api/traces?status=failed", headers=AUTH)).json()["data"] == []
    detail = (await client.get(f"/ui/api/traces/{run_id[:8]}", headers=AUTH)).json()
    assert detail["query"]["source"] == "ui" and detail["query"]["output"] == final
    assert len(detail["calls"]) == 4


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": "x"}, 400, "stack"),
        ({"stack": "trace-test"}, 400, "prompt"),
        ({"stack": "trace-test", "prompt": "   "}, 400, "prompt"),
        ({"stack": "nope", "prompt": "x"}, 404, "stack"),
        (
            {"stack": "trace-test", "messages": [{"role": "wizard", "content": "x"}]},
            400,
            "messages.0.role",
        ),
        (
            {"stack": "trace-test", "messages": [{"role": "user", "content": 5}]},
            400,
            "messages.0.content",
        ),
        ([1, 2], 400, None),
    ],
)
async def test_bad_run_bodies_get_a_4xx_naming_the_field(
    env: tuple[httpx.AsyncClient, TraceStore], body: Any, status: int, param: str | None
) -> None:
    client, _ = env
    response = await client.post("/ui/api/run", headers=AUTH, json=body)
    assert response.status_code == status
    assert response.json()["error"]["param"] == param


async def test_bad_queries_and_unknown_trace(env: tuple[httpx.AsyncClient, TraceStore]) -> None:
    client, _ = env
    bad = await client.get("/ui/api/traces?status=weird", headers=AUTH)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"
    bad = await client.get("/ui/api/traces?since=yesterday", headers=AUTH)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
    missing = await client.get("/ui/api/traces/unknown-id", headers=AUTH)
    assert missing.status_code == 404
    raw = await client.post("/ui/api/run", headers=AUTH, content=b"{not json")
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
    huge = await client.post("/ui/api/run", headers=AUTH, content=b" " * 1_000_001)
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "body_too_large"


async def test_a_failed_query_streams_an_error_and_is_recorded_failed(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "f.db")
    stack, _ = echo_stack(agg=failing("agg", "aggregator down"))
    stacks: dict[str, Stack] = {"s": stack}
    async with stack:
        transport = httpx.ASGITransport(app=make_app(store, stacks, None))
        async with httpx.AsyncClient(transport=transport, base_url="http://ui.test") as client:
            response = await client.post("/ui/api/run", json={"stack": "s", "prompt": "q"})
    events = sse(response.text)
    assert events[-1]["type"] == "error" and "aggregator down" in events[-1]["message"]
    assert events[-1]["result"]["aggregators"][0]["error"]
    assert store.flush()
    [q] = store.list_queries()
    assert q.status == "failed" and q.id == events[0]["run_id"]
    store.close()
