"""``moa serve``: a real uvicorn server on loopback, driven by the official openai client."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from moakit import parse_config
from moakit.server import create_app
from moakit.testing.fake_backend import Behavior, FakeBackend, Fault, Latency
from server_harness import USER, client, fake_stack, serve

JSON_TYPE = {"content-type": "application/json"}


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    with FakeBackend(default=Behavior(latency=Latency(per_token_s=0.002))) as fb:
        yield fb


def test_non_streaming_completion(backend: FakeBackend) -> None:
    app = create_app({"fake": fake_stack(backend.base_url)}, api_keys=[])
    with serve(app) as base:
        resp = client(base).chat.completions.create(
            model="fake", messages=USER, temperature=0.1, max_tokens=15, seed=3, stop=["zz"]
        )
        raw = httpx.post(
            f"{base}/chat/completions",
            json={"model": "fake", "messages": USER, "moa_details": True},
        ).json()
    assert resp.id.startswith("chatcmpl-") and resp.object == "chat.completion"
    assert resp.model == "fake"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content and resp.choices[0].message.content.startswith("agg")
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    # usage sums the whole stack: two proposers plus the aggregator
    assert resp.usage.completion_tokens == 3 * 12
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    agg = next(b for b in backend.stats.received if b["model"] == "agg")
    assert agg["temperature"] == 0.1 and agg["max_tokens"] == 15
    assert agg["seed"] == 3 and agg["stop"] == ["zz"]
    assert raw["moa"]["stack"] == "fake" and len(raw["moa"]["layers"]) == 1


def test_streaming_chunks_and_usage(backend: FakeBackend) -> None:
    app = create_app({"fake": fake_stack(backend.base_url)}, api_keys=[])
    with serve(app) as base:
        stream = client(base).chat.completions.create(
            model="fake", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        with httpx.stream(
            "POST",
            f"{base}/chat/completions",
            json={"model": "fake", "messages": USER, "stream": True},
        ) as r:
            lines = [line for line in r.iter_lines() if line]
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(content) >= 3
    assert "".join(content).startswith("agg")
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 36
    assert ": layer 1 done 2/2" in lines
    assert lines[-1] == "data: [DONE]"
    assert not any('"usage"' in line for line in lines)  # no include_usage here


def test_models_health_ready(backend: FakeBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    with serve(create_app(api_keys=[])) as base:
        models = client(base).models.list()
        root = base.removesuffix("/v1")
        assert httpx.get(f"{root}/health").json() == {"status": "ok"}
        ready = httpx.get(f"{root}/ready", timeout=60)  # first use imports every SDK
    ids = [m.id for m in models.data]
    assert "local" in ids and len(ids) >= 2
    # Servable stacks make the server ready; one missing its key is listed with the reason.
    assert ready.status_code == 200, ready.text
    report = ready.json()["models"]
    assert report["local"] == {"ready": True}
    assert not report["together-moa"]["ready"]
    assert "TOGETHER_API_KEY" in report["together-moa"]["reason"]


def test_ready_is_503_when_nothing_can_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_config(
        {
            "name": "keyed",
            "defaults": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "MOA_UNSET_KEY"},
            "layers": [[{"model": "p"}]],
            "aggregator": {"model": "a"},
        }
    )
    monkeypatch.delenv("MOA_UNSET_KEY", raising=False)
    with serve(create_app({"keyed": cfg}, api_keys=[])) as base:
        ready = httpx.get(base.removesuffix("/v1") + "/ready")
    assert ready.status_code == 503
    assert "MOA_UNSET_KEY" in ready.json()["models"]["keyed"]["reason"]


@pytest.mark.embedded
def test_preload_loads_embedded_models_before_ready() -> None:
    local = parse_config(
        {
            "name": "tiny",
            "defaults": {"provider": "local", "max_tokens": 8, "options": {"n_ctx": 1024}},
            "layers": [[{"model": "smollm2-135m"}]],
            "aggregator": {"model": "smollm2-135m"},
        }
    )
    app = create_app({"tiny": local}, api_keys=[], preload=True)
    with serve(app) as base:
        deadline = time.monotonic() + 60
        while (r := httpx.get(base.removesuffix("/v1") + "/ready")).status_code != 200:
            assert r.status_code == 503 and "loading" in r.json()["models"]["tiny"]["reason"]
            assert time.monotonic() < deadline, r.text
            time.sleep(0.05)
        stack = app.state.moa.stacks["tiny"]
        assert all(m.loaded() for m in stack.models())


def test_auth(backend: FakeBackend) -> None:
    app = create_app({"fake": fake_stack(backend.base_url)}, api_keys=["secret-1"])
    with serve(app) as base:
        with pytest.raises(openai.AuthenticationError) as info:
            client(base, "wrong").chat.completions.create(model="fake", messages=USER)
        assert info.value.status_code == 401
        r = httpx.post(f"{base}/chat/completions", json={"model": "fake", "messages": USER})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        ok = client(base, "secret-1").chat.completions.create(model="fake", messages=USER)
        assert ok.choices[0].message.content


async def test_input_errors_never_500() -> None:
    app = create_app(
        {"fake": fake_stack("http://127.0.0.1:9/v1")}, api_keys=[], max_body_bytes=2000
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:

        async def post(body: Any, **kw: Any) -> httpx.Response:
            if isinstance(body, bytes | str):
                return await c.post("/v1/chat/completions", content=body, headers=JSON_TYPE, **kw)
            return await c.post("/v1/chat/completions", json=body, **kw)

        r = await post({"model": "nope", "messages": USER})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = await post(b"{not json")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        r = await post({"model": "fake"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
        r = await post({"model": "fake", "messages": USER, "n": 2})
        assert r.status_code == 400 and r.json()["error"]["param"] == "n"
        r = await post({"model": "fake", "messages": USER, "tools": [{"type": "function"}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools.0.function"
        image = [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]
        r = await post({"model": "fake", "messages": [{"role": "user", "content": image}]})
        assert r.status_code == 400 and "image_url" in r.json()["error"]["message"]
        r = await post({"model": "fake", "messages": USER, "temperature": 5})
        assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
        bad_moa = {"layers": [[{"model": "m", "temperature": 9}]], "aggregator": {"model": "m"}}
        r = await post({"model": "x", "messages": USER, "moa": bad_moa})
        err = r.json()["error"]
        # Request stacks are off by default: refused before their content is even looked at.
        assert r.status_code == 400 and err["param"] == "moa"
        assert err["code"] == "request_stacks_disabled"
        r = await post({"model": "fake", "messages": [{"role": "user", "content": "x" * 5000}]})
        assert r.status_code == 413
        r = await c.get("/v1/nothing")
        assert r.status_code == 404 and "error" in r.json()
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


async def test_missing_key_is_400(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOA_SERVER_TEST_KEY", raising=False)
    url = "http://127.0.0.1:9/v1"
    member = {"model": "m", "base_url": url, "api_key_env": "MOA_SERVER_TEST_KEY"}
    cfg = parse_config({"layers": [[member]], "aggregator": member})
    app = create_app({"fake": cfg}, api_keys=[])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://localhost"
    ) as c:
        r = await c.post("/v1/chat/completions", json={"model": "fake", "messages": USER})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "missing_api_key"
    assert "MOA_SERVER_TEST_KEY" in r.json()["error"]["message"]


def test_all_proposers_fail_is_502() -> None:
    with FakeBackend(default=Behavior(fault=Fault("http_500"))) as fb:
        app = create_app({"fake": fake_stack(fb.base_url)}, api_keys=[])
        with serve(app) as base, pytest.raises(openai.APIStatusError) as info:
            client(base).chat.completions.create(model="fake", messages=USER)
    assert info.value.status_code == 502
    assert "http 500" in str(info.value)


def test_deadline_is_504() -> None:
    with FakeBackend(default=Behavior(fault=Fault("hang"))) as fb:
        app = create_app({"fake": fake_stack(fb.base_url, deadline_s=0.3)}, api_keys=[])
        with serve(app) as base:
            with pytest.raises(openai.APIStatusError) as info:
                client(base).chat.completions.create(model="fake", messages=USER)
            assert info.value.status_code == 504
            fb.wait_idle_blocking(3)


def test_concurrency_limit_429() -> None:
    with FakeBackend(models={"agg": Behavior(fault=Fault("hang"))}) as fb:
        app = create_app({"fake": fake_stack(fb.base_url)}, api_keys=[], max_concurrent=1)
        with serve(app) as base:
            with httpx.stream(
                "POST",
                f"{base}/chat/completions",
                json={"model": "fake", "messages": USER, "stream": True},
            ) as r:
                # Keep the line iterator referenced: a dropped httpx iterator is garbage-collected,
                # and closing it closes the connection, which (correctly) frees the slot.
                lines = r.iter_lines()
                next(lines)
                assert app.state.moa.in_flight == 1
                second = httpx.post(
                    f"{base}/chat/completions", json={"model": "fake", "messages": USER}
                )
                assert second.status_code == 429, second.text
                assert second.headers["retry-after"] == "1"
                assert second.json()["error"]["code"] == "rate_limit_exceeded"
            # The slot frees once the first client goes away.
            deadline = time.monotonic() + 3
            while app.state.moa.in_flight:
                assert time.monotonic() < deadline, "slot not released after disconnect"
                time.sleep(0.01)
            fb.wait_idle_blocking(3)


def test_client_disconnect_cancels_query(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="moakit.server")
    with FakeBackend(models={"agg": Behavior(fault=Fault("hang"))}) as fb:
        app = create_app({"fake": fake_stack(fb.base_url)}, api_keys=[])
        with serve(app) as base:
            stream = client(base).chat.completions.create(model="fake", messages=USER, stream=True)
            first = next(iter(stream))
            assert first.choices[0].delta.role == "assistant"
            deadline = time.monotonic() + 3
            while fb.stats.requests_by_model.get("agg", 0) == 0:
                assert time.monotonic() < deadline, "aggregator never called"
                time.sleep(0.01)
            assert fb.stats.in_flight >= 1
            stream.close()
            deadline = time.monotonic() + 3
            while fb.stats.in_flight or fb.stats.cancelled < 1:
                assert time.monotonic() < deadline, (fb.stats.in_flight, fb.stats.cancelled)
                time.sleep(0.02)
            assert app.state.moa.in_flight == 0
    access = [json.loads(r.message) for r in caplog.records if r.message.startswith("{")]
    assert [(a["model"], a["status"]) for a in access] == [("fake", 499)]


@pytest.mark.embedded
def test_local_preset_end_to_end_streaming() -> None:
    """The embedded default through the server: real llama.cpp, no network, no key."""
    with serve(create_app(api_keys=[])) as base:
        stream = (
            client(base)
            .with_options(timeout=300)
            .chat.completions.create(
                model="local",
                messages=[{"role": "user", "content": "Name one colour."}],
                max_tokens=24,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals in (["stop"], ["length"])
    usage = chunks[-1].usage
    # 3 samples x 2 layers + aggregator = 7 calls, each with a prompt and an answer.
    assert usage is not None and usage.prompt_tokens > 7 and usage.completion_tokens > 7


def test_moa_serve_command_logs_json_access_lines(tmp_path: Any, backend: FakeBackend) -> None:
    """`moa serve` as users run it: a config file, keys from MOA_API_KEYS, one JSON access
    line per request on stderr, and the key never printed."""
    config = tmp_path / "mine.toml"
    config.write_text(
        f'name = "mine"\n[defaults]\nbase_url = "{backend.base_url}"\nmax_tokens = 8\n'
        '[[layers]]\nmembers = [{model = "p1"}, {model = "p2"}]\n[aggregator]\nmodel = "agg"\n'
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    moa = str(Path(sys.executable).with_name("moa"))
    env = {**os.environ, "MOA_API_KEYS": "k-one,k-two-secret"}
    proc = subprocess.Popen(
        [moa, "serve", "--port", str(port), "--config", str(config), "--max-concurrent", "4"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        root = f"http://127.0.0.1:{port}"
        # Generous: a start-up on a loaded 2-core machine (imports, the presets) has taken
        # over 20 s; this test is about the log lines, not start-up time (bench/ measures that).
        deadline = time.monotonic() + 90
        while True:
            # /ready, not /health: while --preload loads the embedded model, llama.cpp
            # silences the process's stderr (issue 8 item 8), which would swallow log lines.
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{root}/ready").status_code == 200:
                    break
            assert proc.poll() is None, "moa serve exited"
            assert time.monotonic() < deadline, "moa serve did not start"
            time.sleep(0.1)
        ids = [m.id for m in client(f"{root}/v1", "k-two-secret").models.list().data]
        assert "mine" in ids and "local" in ids
        answer = client(f"{root}/v1", "k-two-secret").chat.completions.create(
            model="mine", messages=USER
        )
        assert answer.choices[0].message.content
        denied = httpx.post(f"{root}/v1/chat/completions", json={"model": "mine"})
        assert denied.status_code == 401
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    lines = [
        json.loads(line.split(" moakit.server ", 1)[1])
        for line in stderr.splitlines()
        if " moakit.server " in line
    ]
    # Probes are not logged; the model list, the answer and the refusal are.
    assert [(entry["model"], entry["status"]) for entry in lines] == [
        (None, 200),
        ("mine", 200),
        (None, 401),
    ]
    assert lines[1]["tokens"] > 0 and lines[1]["latency_ms"] > 0
    assert "k-two-secret" not in stderr and "k-one" not in stderr


def test_first_content_arrives_as_the_aggregator_writes_it() -> None:
    """Time to first content is the aggregator's first token, not the end of the answer."""
    slow_agg = Behavior(latency=Latency(ttft_s=0.05, per_token_s=0.04), tokens=20)
    with FakeBackend(models={"agg": slow_agg}) as fb:
        app = create_app(
            {
                "fake": fake_stack(
                    fb.base_url,
                    defaults={
                        "provider": "openai",
                        "base_url": fb.base_url,
                        "max_tokens": 40,
                        "retries": 0,
                    },
                )
            },
            api_keys=[],
        )
        with serve(app) as base:
            t0 = time.monotonic()
            arrivals: list[float] = []
            stream = client(base).chat.completions.create(model="fake", messages=USER, stream=True)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    arrivals.append(time.monotonic() - t0)
    # 20 tokens 40 ms apart: the first must arrive ~0.75 s before the last, not with it.
    assert len(arrivals) >= 10
    assert arrivals[-1] - arrivals[0] > 0.5, arrivals
