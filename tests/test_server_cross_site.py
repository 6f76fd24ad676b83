"""A page on another origin cannot drive a local server, in a real browser (issue 27, item 2).

Headless Chromium opens a page served from a second loopback port (another origin, the same
site), and runs ``fetch`` from it against a moakit server with no API keys: the simple
``text/plain`` POST that needs no preflight, a JSON POST, a read of the stored traces. A name
that resolves to 127.0.0.1 (Chromium's ``--host-resolver-rules``) plays a DNS-rebinding page,
which is same-origin with the server. Then the server allows the page's origin
(``--cors-origin``) and the same page can use the API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from moakit.server import create_app
from moakit.testing.models import FunctionModel
from moakit.trace import TraceStore
from server_harness import json_stack
from test_ui_browser import CHROMIUM, CHROMIUM_ARGS
from ui_app import ServerThread

REBIND_NAME = "rebind.test"
FETCH = """async ([url, init]) => {
  try {
    const r = await fetch(url, init);
    return {status: r.status, body: await r.text()};
  } catch (e) {
    return {error: String(e)};
  }
}"""
CHAT = '{"model": "json", "messages": [{"role": "user", "content": "leak the traces"}]}'


def page_site() -> Starlette:
    async def page(request: Any) -> HTMLResponse:
        return HTMLResponse("<!doctype html><title>some other site</title><p>hello</p>")

    return Starlette(routes=[Route("/", page)])


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (apt-get install chromium)")
    args = [*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {REBIND_NAME} 127.0.0.1"]
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def moakit_app(store: TraceStore, agg: FunctionModel, **kw: Any) -> Any:
    proposer = FunctionModel(lambda r: "a proposal", name="p1")
    return create_app({"json": json_stack(agg, proposer)}, api_keys=[], trace_store=store, **kw)


def test_another_origin_cannot_drive_the_server(browser: Any, tmp_path: Path) -> None:
    agg = FunctionModel(lambda r: "the answer", name="agg")
    store = TraceStore(tmp_path / "traces.db")
    try:
        with (
            ServerThread(moakit_app(store, agg)) as server,
            ServerThread(page_site()) as other,
        ):
            page = browser.new_page()
            page.goto(other.url)  # http://127.0.0.1:<another port>: the attacker's page
            api = f"{server.url}/v1/chat/completions"
            plain = page.evaluate(FETCH, [api, {"method": "POST", "mode": "no-cors", "body": CHAT}])
            as_json = page.evaluate(
                FETCH,
                [
                    api,
                    {
                        "method": "POST",
                        "body": CHAT,
                        "headers": {"Content-Type": "application/json"},
                    },
                ],
            )
            listing = page.evaluate(FETCH, [f"{server.url}/ui/api/traces", {}])
            # The query never ran: not from the text/plain POST a browser sends without
            # asking, not from the JSON one whose preflight was refused.
            assert agg.requests == [], (plain, as_json)
            assert "error" in as_json and "error" in listing  # nothing readable either

            # DNS rebinding: a name that now resolves to 127.0.0.1 is same-origin with the
            # server, so only the Host header tells. The page is refused.
            rebound = f"http://{REBIND_NAME}:{server.port}"
            response = page.goto(f"{rebound}/ui/api/traces")
            assert response is not None and response.status == 400
            assert "invalid_host" in page.content()
            page.goto(f"{rebound}/ui")
            assert "Host header" in page.content()

            # The server's own UI is not affected: same origin, POSTs included.
            own = browser.new_page()
            own.goto(f"{server.url}/ui")
            own_run = own.evaluate(
                FETCH,
                [
                    f"{server.url}/ui/api/run",
                    {
                        "method": "POST",
                        "headers": {"Content-Type": "application/json"},
                        "body": '{"stack": "json", "prompt": "hi"}',
                    },
                ],
            )
            assert own_run.get("status") == 200 and "the answer" in own_run["body"]
    finally:
        store.close()


def test_an_allowed_origin_can_use_the_api(browser: Any, tmp_path: Path) -> None:
    agg = FunctionModel(lambda r: "the answer", name="agg")
    store = TraceStore(tmp_path / "traces.db")
    try:
        with ServerThread(page_site()) as other:
            app = moakit_app(store, agg, cors_origins=[other.url])
            with ServerThread(app) as server:
                page = browser.new_page()
                page.goto(other.url)
                done = page.evaluate(
                    FETCH,
                    [
                        f"{server.url}/v1/chat/completions",
                        {
                            "method": "POST",
                            "body": CHAT,
                            "headers": {"Content-Type": "application/json"},
                        },
                    ],
                )
                plain = page.evaluate(
                    FETCH, [f"{server.url}/v1/chat/completions", {"method": "POST", "body": CHAT}]
                )
        assert done.get("status") == 200, done
        assert json.loads(done["body"])["choices"][0]["message"]["content"] == "the answer"
        assert plain.get("status") == 415  # allowed origin, but still JSON only
        assert len(agg.requests) == 1
    finally:
        store.close()
