"""The surfaces record through the trace store: the server (with its request id as the run id,
and the web UI mounted over the same store), the CLI by default, and the library on request."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import moakit
from moakit import parse_config
from moakit.models.provider import ResourcePool
from moakit.plugins import registered
from moakit.server import create_app
from moakit.testing.models import echo_model
from moakit.testing.plugins import plugin
from moakit.trace import TraceStore
from server_harness import USER, client, serve
from trace_helpers import echo_stack, fixed


def test_server_records_each_query_under_its_request_id(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "traces.db")
    stack, _ = echo_stack()
    app = create_app({"echo": stack}, api_keys=["k1"], trace_store=store)
    with serve(app) as base:
        done = client(base, "k1").chat.completions.create(model="echo", messages=USER)
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in client(base, "k1").chat.completions.create(
                model="echo", messages=USER, stream=True
            )
            if chunk.choices
        )
        root = base.removesuffix("/v1")
        page = httpx.get(f"{root}/ui")
        denied = httpx.get(f"{root}/ui/api/traces")
        listed = httpx.get(f"{root}/ui/api/traces", headers={"authorization": "Bearer k1"})
    # The store was closed by the app's shutdown, after its writer committed everything.
    reopened = TraceStore(tmp_path / "traces.db")
    record = reopened.get(done.id)
    assert record is not None, "the non-streamed query was not recorded under its request id"
    assert record.query.status == "complete" and record.query.source == "server"
    assert record.query.output == done.choices[0].message.content
    assert len(record.calls) == 4  # two proposers, one second-layer member, the aggregator
    rows = reopened.list_queries()
    assert len(rows) == 2 and {q.output for q in rows} == {
        done.choices[0].message.content,
        streamed,
    }
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert denied.status_code == 401  # the UI's API respects the server's keys
    assert listed.status_code == 200 and len(listed.json()["data"]) == 2
    reopened.close()


def test_server_without_a_store_records_nothing_and_has_no_ui(tmp_path: Path) -> None:
    stack, _ = echo_stack()
    with serve(create_app({"echo": stack}, api_keys=[])) as base:
        client(base).chat.completions.create(model="echo", messages=USER)
        ui = httpx.get(base.removesuffix("/v1") + "/ui")
    assert ui.status_code == 404
    assert not any(tmp_path.rglob("*.db"))


@pytest.fixture
def echo_provider() -> Iterator[None]:
    def build(spec: Any, pool: ResourcePool) -> Any:
        return echo_model(spec.model)

    with registered(plugin(register_providers={"echo-test": build})):
        yield


async def test_library_records_only_when_asked(tmp_path: Path, echo_provider: None) -> None:
    config = parse_config(
        {
            "defaults": {"provider": "echo-test"},
            "layers": [[{"model": "a"}]],
            "aggregator": {"model": "b"},
        }
    )
    store = TraceStore(tmp_path / "lib.db")
    plain = await moakit.arun("hi", config=config)
    traced = await moakit.arun("hi", config=config, trace=store)
    store.flush()
    rows = store.list_queries()
    assert [q.id for q in rows] == [traced.run_id]
    assert plain.run_id not in {q.id for q in rows}
    assert rows[0].source == "library" and rows[0].output == traced.final
    store.close()


def test_cli_ask_records_by_default_and_not_with_moakit_trace_off(tmp_path: Path) -> None:
    config = tmp_path / "stack.toml"
    config.write_text(
        'name = "fake-cli"\n'
        '[defaults]\nprovider = "local"\nmax_tokens = 4\n'
        '[[layers]]\nmembers = [{ model = "smollm2-135m", seed = 1 }]\n'
        '[aggregator]\nmodel = "smollm2-135m"\n'
    )
    db = tmp_path / "cli.db"
    env = {**os.environ, "MOAKIT_TRACE_DB": str(db)}
    moa = str(Path(sys.executable).with_name("moa"))
    ask = [moa, "ask", "-q", "--config", str(config), "Say hi"]
    subprocess.run(ask, env=env, check=True, capture_output=True, timeout=240)
    subprocess.run(
        ask, env={**env, "MOAKIT_TRACE": "0"}, check=True, capture_output=True, timeout=240
    )
    store = TraceStore(db)
    rows = store.list_queries()
    assert len(rows) == 1, "MOAKIT_TRACE=0 must not record, the default must"
    assert rows[0].source == "cli" and rows[0].stack_name == "fake-cli"
    assert rows[0].status == "complete"
    store.close()


def test_playground_runs_share_the_servers_query_limit(tmp_path: Path) -> None:
    """A UI run takes a slot like any query: at the limit it is a 429 with Retry-After, and
    its slot is free again once its stream ended."""
    store = TraceStore(tmp_path / "traces.db")
    stack, _ = echo_stack(agg=fixed("agg", "slow answer", delay_s=1.5))
    app = create_app({"echo": stack}, api_keys=["k1"], max_concurrent=1, trace_store=store)
    auth = {"authorization": "Bearer k1"}
    run = {"stack": "echo", "prompt": "hi?"}
    with serve(app) as base:
        root = base.removesuffix("/v1")
        first: list[tuple[int, str]] = []
        admitted = threading.Event()

        def ui_run() -> None:
            # Streams, so its headers (sent once the slot is taken) arrive ~1.5 s before its end.
            with httpx.stream(
                "POST", f"{root}/ui/api/run", json=run, headers=auth, timeout=30
            ) as response:
                admitted.set()
                first.append((response.status_code, response.read().decode()))

        slow = threading.Thread(target=ui_run)
        slow.start()
        assert admitted.wait(10), "the UI run never answered"
        chat = client(base, "k1").with_options(max_retries=0)
        refused: openai.RateLimitError | None = None
        try:
            chat.chat.completions.create(model="echo", messages=USER)
        except openai.RateLimitError as exc:
            refused = exc
        also = httpx.post(f"{root}/ui/api/run", json=run, headers=auth, timeout=30)
        slow.join()
        after = httpx.post(f"{root}/ui/api/run", json=run, headers=auth, timeout=30)
    assert refused is not None, "a chat query was never refused while the UI run was in flight"
    assert also.status_code == 429 and also.headers["retry-after"].isdigit()
    assert also.json()["error"]["code"] == "rate_limit_exceeded"
    assert first[0][0] == 200 and '"RunFinished"' in first[0][1]
    assert after.status_code == 200  # the slot was given back
