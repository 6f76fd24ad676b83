"""The eval report viewer: its API over a results directory, and the page in Chromium."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request

from moakit.trace import TraceStore
from moakit.ui.evals import eval_routes
from moakit.ui.routes import ui_routes
from ui_app import ServerThread, tiny_png, write_eval_results

KEY = "eval-key-7"
AUTH = {"Authorization": f"Bearer {KEY}"}
HOSTILE = "<script>window.__pwned = 3</script><b>bold?</b>"


def check_auth(request: Request) -> None:
    if request.headers.get("authorization") != f"Bearer {KEY}":
        raise HTTPException(401, "invalid or missing API key")


def app(root: Path, store: TraceStore) -> Starlette:
    return Starlette(
        routes=[
            *ui_routes(
                store,
                get_stack=lambda n: (_ for _ in ()).throw(KeyError(n)),
                stack_names=list,
                check_auth=check_auth,
            ),
            *eval_routes(root, check_auth=check_auth),
        ]
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "evals"
    write_eval_results(root / "run-1", HOSTILE)
    (root / "not-results").mkdir()  # no summary.json: not listed
    (root / "secret.png").write_bytes(b"operator file")  # outside any results directory
    (root / "run-1" / "plots" / "notes.txt").write_text("not a plot")  # inside, not a plot
    return root


@pytest.fixture
async def client(root: Path, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    store = TraceStore(tmp_path / "t.db")
    transport = httpx.ASGITransport(app=app(root, store))
    async with httpx.AsyncClient(transport=transport, base_url="http://ui.test") as c:
        yield c
    store.close()


async def test_lists_and_opens_results(client: httpx.AsyncClient) -> None:
    listing = (await client.get("/ui/api/evals", headers=AUTH)).json()["data"]
    assert listing == [{"name": "run-1", "dataset": "toy-qa", "scorer": "exact", "systems": 2}]
    detail = (await client.get("/ui/api/evals/run-1", headers=AUTH)).json()
    assert [s["name"] for s in detail["summary"]["systems"]] == ["single", "moa"]
    assert detail["plots"] == ["layer_curve.png"]
    plot = await client.get("/ui/api/evals/run-1/plots/layer_curve.png", headers=AUTH)
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    assert plot.content == tiny_png()


async def test_items_side_by_side(client: httpx.AsyncClient) -> None:
    body = (await client.get("/ui/api/evals/run-1/items", headers=AUTH)).json()
    assert body["systems"] == ["single", "moa"] and body["total"] == 2
    q1 = next(i for i in body["data"] if i["item_id"] == "q1")
    assert q1["systems"]["single"]["final"] == HOSTILE
    assert q1["systems"]["moa"] == {"final": "Paris", "score": 1.0, "error": None, "latency_s": 1.5}
    page = (await client.get("/ui/api/evals/run-1/items?offset=1&limit=1", headers=AUTH)).json()
    assert len(page["data"]) == 1
    bad = await client.get("/ui/api/evals/run-1/items?offset=x", headers=AUTH)
    assert bad.status_code == 400


async def test_only_listed_files_are_reachable(client: httpx.AsyncClient) -> None:
    for path in (
        "/ui/api/evals/not-results",
        "/ui/api/evals/..",
        "/ui/api/evals/run-1/plots/secret.png",
        "/ui/api/evals/run-1/plots/..%2F..%2Fsecret.png",
        "/ui/api/evals/run-1/plots/summary.json",
        "/ui/api/evals/run-1/plots/notes.txt",
    ):
        response = await client.get(path, headers=AUTH)
        assert response.status_code == 404, path
    assert (await client.get("/ui/api/evals")).status_code == 401


@pytest.fixture
def served(root: Path, tmp_path: Path) -> Iterator[str]:
    from test_ui_browser import CHROMIUM

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (apt-get install chromium)")
    store = TraceStore(tmp_path / "b.db")
    try:
        with ServerThread(app(root, store)) as server:
            yield server.url
    finally:
        store.close()


def test_eval_viewer_in_chromium(served: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    from test_ui_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

    (ARTIFACTS / "ui").mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{served}/ui#/evals")
            page.fill("#api-key", KEY)
            page.click("#auth-form button")
            page.click("a.eval-link:has-text('run-1')")
            expect(page.locator("#eval-detail")).to_be_visible()
            expect(page.locator("#eval-title")).to_have_text("run-1 · toy-qa · exact")
            rows = page.locator("#eval-summary tr.eval-system")
            expect(rows).to_have_count(2)
            expect(rows.nth(1)).to_contain_text("1.000 [1.000, 1.000]")
            expect(page.locator("#eval-items tr.eval-item")).to_have_count(2)
            expect(page.locator("#eval-items thead th")).to_have_text(["item", "single", "moa"])
            expect(rows.nth(0)).to_contain_text("0.25s")
            expect(page.locator("#eval-items")).to_contain_text(HOSTILE)
            assert page.locator("#eval-items script, #eval-items b").count() == 0
            img = page.locator("#eval-plots img")
            expect(img).to_have_count(1)
            page.wait_for_function(
                "() => document.querySelector('#eval-plots img').naturalWidth === 4"
            )
            assert page.evaluate("() => window.__pwned === undefined")
            page.screenshot(path=str(ARTIFACTS / "ui" / "evals.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
