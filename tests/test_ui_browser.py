"""The UI in a real headless Chromium (Debian's ``chromium``, installed by ``make chromium``),
driven by Playwright, against the fault-injecting fake backend over HTTP.

Screenshots land in ``test-artifacts/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from moakit import Stack, parse_config
from moakit.messages import Message, ToolCall, ToolSpec
from moakit.models.base import ChatRequest
from moakit.testing.fake_backend import Behavior, FakeBackend, Fault
from moakit.testing.models import FunctionModel
from moakit.trace import TraceRecorder, TraceStore, traced_run
from trace_helpers import tool_stack
from ui_app import ServerThread, make_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
KEY = "browser-key-42"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
# An answer that would run script (and show an image) if it were ever rendered as HTML.
HOSTILE = (
    '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
    " [bold]not bold[/bold]"
)


def aggregator_answer(request: ChatRequest) -> str:
    """The hostile text plus the first words of reference 1, so "what was kept" has content."""
    system = request.messages[0].text
    # Reference 1's first line: fenced ("> text" after its BEGIN line) by default.
    first = re.search(r"BEGIN response 1>>>\n> (.*)$", system, flags=re.MULTILINE)
    kept = " ".join(first.group(1).split()[:6]) if first else ""
    return f"{HOSTILE} Kept: {kept}"


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[tuple[str, TraceStore]]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (apt-get install chromium)")
    backend = FakeBackend(
        models={"l1c": Behavior(fault=Fault("http_500"))}, default=Behavior(tokens=24)
    ).start_in_thread()
    config = parse_config(
        {
            "name": "browser-stack",
            "description": "three proposers, one of them broken",
            "defaults": {"base_url": backend.base_url, "timeout_s": 5},
            "retry": {"retries": 1, "initial_s": 0.01, "max_s": 0.02},
            "layers": [[{"model": "l1a"}, {"model": "l1b"}, {"model": "l1c"}]],
            "aggregator": {"model": "agg"},
        }
    )
    stack = Stack(config, models={"agg": FunctionModel(aggregator_answer, name="agg")})
    store = TraceStore(tmp_path / "browser.db")
    try:
        with ServerThread(make_app(store, {"browser-stack": stack}, KEY)) as server:
            yield server.url, store
    finally:
        store.close()
        asyncio.run(stack.aclose())
        backend.stop()


def test_playground_run_and_trace_viewer_in_chromium(ui: tuple[str, TraceStore]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, store = ui
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS / "ui", ignore_errors=True)
    (ARTIFACTS / "ui").mkdir(parents=True, exist_ok=True)
    page_errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            # Console errors too (a module that fails to link only shows there), except the
            # 401s this test provokes on purpose before it enters the key.
            page.on(
                "console",
                lambda m: m.type == "error" and "401" not in m.text and page_errors.append(m.text),
            )
            page.goto(f"{url}/ui")

            # Without the key the API refuses, and the page says so.
            expect(page.locator("#error-banner")).to_contain_text("cannot list stacks")
            page.fill("#api-key", KEY)
            page.click("#auth-form button")
            expect(page.locator("#stack-select option")).to_have_count(1)
            expect(page.locator("#shape")).to_contain_text("4 LLM calls · 2 serial rounds")

            page.fill("#question", "Why do mixtures beat one model?")
            page.click("#run-button")
            expect(page.locator("#run-status")).to_have_text("done", timeout=30_000)

            cards = page.locator("#live-grid .card[data-layer='1']")
            expect(cards).to_have_count(3)
            rows = page.locator("#live-grid .layer")
            expect(rows).to_have_count(2)  # layer 1 and the aggregator, nothing else
            expect(rows.nth(0).locator(".layer-title")).to_have_text(
                re.compile(r"^layer 1 · 2/3 answered · \d+\.\d\ds$")
            )
            for label, status in (("l1a", "ok"), ("l1b", "ok"), ("l1c", "failed")):
                card = page.locator(f"#live-grid .card[data-layer='1']:has-text('{label}')")
                expect(card).to_have_attribute("data-status", status)
            expect(
                page.locator("#live-grid .card[data-layer='1'][data-status='failed']")
            ).to_contain_text("http 500")
            agg = page.locator("#live-grid .card[data-role='aggregator']")
            expect(agg).to_have_attribute("data-status", "ok")

            final = page.locator("#final-answer")
            expect(final).to_contain_text(HOSTILE)  # the markup, shown as characters
            assert final.evaluate("n => n.textContent").startswith(HOSTILE)
            assert page.locator("#final-answer *").count() == 0  # no element was created
            assert page.locator("#live-grid script, #live-grid img").count() == 0
            assert page.evaluate("() => document.scripts.length") == 1  # app.js only
            assert page.evaluate("() => window.__pwned === undefined")
            page.screenshot(path=str(ARTIFACTS / "ui" / "playground.png"), full_page=True)

            # The run was recorded; the viewer shows the same grid from the store.
            page.click("#open-trace")
            expect(page.locator("#trace-detail")).to_be_visible()
            expect(page.locator("#trace-header")).to_contain_text("browser-stack · complete")
            expect(page.locator("#trace-grid .card")).to_have_count(4)
            failed = page.locator("#trace-grid .card[data-status='failed']")
            expect(failed).to_have_count(1)
            expect(failed).to_contain_text("l1c")
            expect(page.locator("#trace-final")).to_contain_text(HOSTILE)

            # Open the aggregator: its full answer and the exact references it received.
            page.click("#trace-grid .card[data-role='aggregator']")
            expect(page.locator("#member-panel")).to_be_visible()
            expect(page.locator("#member-answer")).to_contain_text(HOSTILE)
            refs = page.locator("#member-references li.reference")
            expect(refs).to_have_count(2)
            expect(refs.nth(0)).to_contain_text("l1a saw")
            expect(refs.nth(0).locator("mark.kept")).not_to_have_count(0)
            assert page.locator("#member-panel script, #member-panel img").count() == 0
            page.screenshot(path=str(ARTIFACTS / "ui" / "trace-member.png"), full_page=True)

            page.click("#member-close")
            page.click("a[href='#/traces']")
            rows = page.locator("#trace-list tr.trace-row")
            expect(rows).to_have_count(1)
            expect(rows.first).to_have_attribute("data-status", "complete")
            page.screenshot(path=str(ARTIFACTS / "ui" / "trace-list.png"), full_page=True)
            assert page.evaluate("() => window.__pwned === undefined")
        finally:
            browser.close()
    assert page_errors == []
    assert store.flush()
    [query] = store.list_queries()
    assert query.status == "complete" and query.source == "ui"


# A tool call whose arguments would run script if they were ever rendered as HTML.
TOOL_ARGS = json.dumps({"city": '<img src=x onerror="window.__pwned = 3"> [b]Paris[/b]'})


def test_tool_calls_and_tool_results_are_shown_as_text(tmp_path: Path) -> None:
    """The live run shows the answer's ToolCalls event and the advice state; the trace viewer
    shows each call's tool calls and, in the input, the tool's result: all of it as text."""
    from playwright.sync_api import Route, expect, sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (apt-get install chromium)")
    stack = tool_stack(TOOL_ARGS, name="tools-stack")
    store = TraceStore(tmp_path / "tools.db")
    tools = [ToolSpec.from_openai(WEATHER).to_openai()]

    def offer_tools(route: Route) -> None:
        # The playground offers no tools itself; an API client does, as this adds them.
        body = route.request.post_data_json
        route.continue_(post_data=json.dumps({**body, "tools": tools}))

    try:
        app = make_app(store, {"tools-stack": stack}, None)
        with ServerThread(app) as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.route("**/ui/api/run", offer_tools)
                page.goto(f"{server.url}/ui")
                page.fill("#question", "Weather in Paris?")
                page.click("#run-button")
                expect(page.locator("#run-status")).to_have_text("done", timeout=30_000)
                shown = f"get_weather({TOOL_ARGS})"
                expect(page.locator("#final-calls .tool-call-text")).to_have_text(shown)
                expect(page.locator("#run-advice")).to_contain_text("advice fresh")
                agg = page.locator("#live-grid .card[data-role='aggregator']")
                expect(agg.locator(".tool-call-text")).to_have_text(shown)
                run_id = page.locator("#open-trace").get_attribute("data-run-id")

                # The agent runs the tool and sends the result back (a library loop here);
                # the same user turn reuses the proposers' advice.
                follow = [
                    Message.user("Weather in Paris?"),
                    Message.assistant("", [ToolCall("call_1", "get_weather", TOOL_ARGS)]),
                    Message.tool("call_1", "<script>window.__pwned = 4</script> 18 C"),
                ]
                request = ChatRequest(messages=follow, tools=(ToolSpec.from_openai(WEATHER),))
                recorder = TraceRecorder(store, stack=stack)
                # In a thread of its own: Playwright's sync API holds this thread's loop.
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    follow_up = traced_run(stack, request, recorder, run_id="tools-followup")
                    pool.submit(asyncio.run, follow_up).result(30)
                assert store.flush()

                page.goto(f"{server.url}/ui#/traces/{run_id}")
                expect(page.locator("#trace-final-calls .tool-call-text")).to_have_text(shown)
                page.click("#trace-grid .card[data-role='aggregator']")
                expect(page.locator("#member-calls .tool-call-text")).to_have_text(shown)
                page.click("#member-close")

                page.goto(f"{server.url}/ui#/traces/tools-followup")
                header = page.locator("#trace-header")
                expect(header).to_contain_text(f"advice reused from run {run_id}")
                result = header.locator(".message[data-role='tool']")
                expect(result).to_contain_text("tool result for call_1")
                expect(result).to_contain_text("<script>window.__pwned = 4</script> 18 C")
                call = header.locator(".message[data-role='assistant'] .tool-call-text")
                expect(call).to_have_text(shown)
                page.screenshot(path=str(ARTIFACTS / "ui-tools.png"), full_page=True)
                assert page.locator("main img, main script, aside img").count() == 0
                assert page.evaluate("() => window.__pwned === undefined")
                assert errors == []
            finally:
                browser.close()
    finally:
        store.close()
        asyncio.run(stack.aclose())
