"""The UI's first screen works, on a 400 px phone too (issue 27, item 11), in headless Chromium
against the real server (``create_app``: its guard, its auth, its limits).

It opens on a stack that can run (not the alphabetically first one, whose key is missing); Ask
never fails silently (no question, an unusable stack); the final answer is scrolled into view;
Stop cancels a run (the trace says cancelled); and no page scrolls sideways at 400 px.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from moakit import Stack, parse_config
from moakit.models.base import ChatRequest, Chunk, Model
from moakit.server import create_app
from moakit.testing.models import FunctionModel
from moakit.trace import TraceStore
from test_ui_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from ui_app import ServerThread, write_eval_results

PHONE = {"width": 400, "height": 700}
LONG = "\n".join(f"Point {i}: mixtures weigh several answers against each other." for i in range(8))
# Elements wider than the viewport, outside the tables that scroll in place: none may exist.
OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  const wide = [...document.querySelectorAll("body *")].filter((n) => {
    if (n.closest(".scroll-x") || n.closest("[hidden]")) return false;
    const r = n.getBoundingClientRect();
    return r.width > 0 && r.right > width + 1;
  });
  return {scroll: document.documentElement.scrollWidth, width: width,
          wide: wide.slice(0, 5).map((n) => n.tagName + "#" + n.id + "." + n.className)};
}"""


class Aggregator(Model):
    """Answers at once, or one word every half second when the question says "slow"."""

    name = "agg"

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        question = request.messages[-1].text
        slow = "slow" in question
        for word in ("The", "final", "answer", "is", "here.") * (20 if slow else 1):
            yield Chunk(text=word + " ")
            if slow:
                await asyncio.sleep(0.5)
        yield Chunk(finish_reason="stop")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, TraceStore]]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (apt-get install chromium)")
    member = {"model": "p1", "base_url": "http://127.0.0.1:9/v1"}
    runnable = parse_config(
        {
            "name": "b-runs",
            "layers": [[member, {**member, "model": "p2"}, {**member, "model": "p3"}]],
            "aggregator": {**member, "model": "agg"},
        }
    )
    models: dict[str, Model] = {
        f"p{i}": FunctionModel(lambda r: LONG, name=f"p{i}") for i in (1, 2, 3)
    }
    models["agg"] = Aggregator()
    stack = Stack(runnable, models=models)
    needs_key = parse_config(
        {
            "name": "a-needs-key",
            "defaults": {"api_key_env": "UI_TEST_MISSING_KEY", "base_url": "http://127.0.0.1:9/v1"},
            "layers": [[{"model": "x"}]],
            "aggregator": {"model": "x"},
        }
    )
    evals = tmp_path / "evals"
    write_eval_results(evals / "run-with-a-rather-long-name-that-might-not-fit", "4")
    store = TraceStore(tmp_path / "ui.db")
    app = create_app(
        {"a-needs-key": needs_key, "b-runs": stack}, api_keys=[], trace_store=store, evals_dir=evals
    )
    try:
        with ServerThread(app) as running:
            yield running.url, store
    finally:
        store.close()
        asyncio.run(stack.aclose())


def fits(page: Any, where: str) -> None:
    found = page.evaluate(OVERFLOW)
    assert found["scroll"] <= found["width"] and not found["wide"], (where, found)


def test_first_screen_on_a_phone(server: tuple[str, TraceStore]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, store = server
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=PHONE)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.goto(f"{url}/ui")
            # It opens on the stack that can run.
            expect(page.locator("#stack-select")).to_have_value("b-runs")
            expect(page.locator("#shape")).to_contain_text("4 LLM calls")
            fits(page, "playground")

            # Ask with no question, or on a stack that cannot run: told why, never silence.
            page.click("#run-button")
            expect(page.locator("#error-banner")).to_have_text("type a question first")
            page.select_option("#stack-select", "a-needs-key")
            expect(page.locator("#shape")).to_contain_text("unavailable")
            page.fill("#question", "Why do mixtures work?")
            page.click("#run-button")
            expect(page.locator("#error-banner")).to_contain_text("a-needs-key cannot run")
            page.select_option("#stack-select", "b-runs")

            # A run: the final answer ends up on screen, below a grid taller than the phone.
            page.click("#run-button")
            expect(page.locator("#run-status")).to_have_text("done", timeout=30_000)
            expect(page.locator("#final-answer")).to_have_text("The final answer is here. ")
            expect(page.locator("#final-answer")).to_be_in_viewport()
            assert page.evaluate("() => window.scrollY") > 0
            fits(page, "playground after a run")
            (ARTIFACTS / "ui").mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "ui" / "phone-playground.png"), full_page=True)

            # Stop: the run ends now, and the server cancelled it.
            page.fill("#question", "slow, please")
            page.click("#run-button")
            expect(page.locator("#final-answer")).to_contain_text("The final", timeout=15_000)
            expect(page.locator("#stop-button")).to_be_enabled()
            page.click("#stop-button")
            expect(page.locator("#run-status")).to_have_text("stopped")
            expect(page.locator("#run-button")).to_be_enabled()
            expect(page.locator("#stop-button")).to_be_disabled()

            for hash_, ready in (
                ("#/traces", "#trace-list tr.trace-row"),
                ("#/evals", "#eval-list li"),
            ):
                page.goto(f"{url}/ui{hash_}")
                expect(page.locator(ready).first).to_be_visible()
                fits(page, hash_)
            page.goto(f"{url}/ui#/traces")
            page.locator("#trace-list tr.trace-row").first.click()
            expect(page.locator("#trace-grid .card").first).to_be_visible()
            fits(page, "trace detail")
            page.goto(f"{url}/ui#/evals")
            page.locator("#eval-list li a").first.click()
            expect(page.locator("#eval-summary tbody tr").first).to_be_visible()
            fits(page, "eval detail")
            page.screenshot(path=str(ARTIFACTS / "ui" / "phone-eval.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert store.flush()
    statuses = sorted(q.status for q in store.list_queries())
    assert statuses == ["cancelled", "complete"]
