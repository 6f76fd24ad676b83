"""Tests of the fault-injecting fake OpenAI backend, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from click.testing import CliRunner
from openai.types.chat import ChatCompletionMessageParam

from moakit.cli.fake_backend import fake_backend_cmd
from moakit.testing import _fake_types
from moakit.testing.fake_backend import (
    BackendStats,
    Behavior,
    FakeBackend,
    Fault,
    Latency,
    expected_content,
    load_behaviors,
    messages_digest,
    sample_ttfts,
)

SRC = Path(__file__).resolve().parents[1] / "src"
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is two plus two?"},
]
PROMPT_WORDS = 3 + 5


@pytest.fixture
async def fb() -> AsyncIterator[FakeBackend]:
    async with FakeBackend() as backend:
        yield backend


def client(fb: FakeBackend, timeout: float = 5.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fb.base_url, api_key="test", max_retries=0, timeout=timeout)


async def post(fb: FakeBackend, body: dict[str, Any], http_timeout: float = 5.0) -> httpx.Response:
    async with httpx.AsyncClient(timeout=http_timeout) as http:
        return await http.post(f"{fb.base_url}/chat/completions", json=body)


async def stream_text(c: openai.AsyncOpenAI, model: str, **kw: Any) -> tuple[str, list[Any]]:
    stream = await c.chat.completions.create(model=model, messages=MESSAGES, stream=True, **kw)
    chunks = [chunk async for chunk in stream]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    return text, chunks


# --- content ------------------------------------------------------------------------------------


def test_expected_content_is_pure_and_prefix_stable() -> None:
    full = expected_content("m", MESSAGES, 12)
    words = full.split(" ")
    assert len(words) == 12
    assert words[:3] == ["m", "saw", messages_digest(MESSAGES)]
    assert full == expected_content("m", [dict(m) for m in MESSAGES], 12)
    assert expected_content("m", MESSAGES, 5) == " ".join(words[:5])
    assert expected_content("m", MESSAGES, 0) == ""
    assert expected_content("m", [{"role": "user", "content": "other"}], 12) != full
    # Key order must not matter: the digest is over canonical JSON.
    assert messages_digest([{"content": "x", "role": "user"}]) == messages_digest(
        [{"role": "user", "content": "x"}]
    )


async def test_non_stream_content_and_usage(fb: FakeBackend) -> None:
    async with client(fb) as c:
        resp = await c.chat.completions.create(model="alpha", messages=MESSAGES)
    assert resp.choices[0].message.content == expected_content("alpha", MESSAGES, 12)
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == PROMPT_WORDS
    assert resp.usage.completion_tokens == 12
    assert resp.usage.total_tokens == PROMPT_WORDS + 12


async def test_stream_equals_non_stream_and_include_usage(fb: FakeBackend) -> None:
    fb.set_behavior("beta", Behavior(tokens=7))
    async with client(fb) as c:
        plain = await c.chat.completions.create(model="beta", messages=MESSAGES)
        text, chunks = await stream_text(c, "beta")
        text_u, chunks_u = await stream_text(c, "beta", stream_options={"include_usage": True})
    assert text == text_u == plain.choices[0].message.content
    assert text == expected_content("beta", MESSAGES, 7)
    assert all(ch.usage is None for ch in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    last = chunks_u[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (PROMPT_WORDS, 7)
    assert all(ch.usage is None for ch in chunks_u[:-1])


async def test_list_content_counts_text_parts(fb: FakeBackend) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "one two three"}]}]
    r = await post(fb, {"model": "m", "messages": messages})
    body = r.json()
    assert body["usage"]["prompt_tokens"] == 3
    assert body["choices"][0]["message"]["content"] == expected_content("m", messages, 12)


async def test_max_tokens_caps_with_length(fb: FakeBackend) -> None:
    full = expected_content("m", MESSAGES, 12)
    async with client(fb) as c:
        resp = await c.chat.completions.create(model="m", messages=MESSAGES, max_tokens=5)
        text, chunks = await stream_text(c, "m", max_completion_tokens=5)
    assert resp.choices[0].message.content == " ".join(full.split()[:5])
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 5
    assert text == resp.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_bad_requests_get_400(fb: FakeBackend) -> None:
    async with httpx.AsyncClient() as http:
        url = f"{fb.base_url}/chat/completions"
        r1 = await http.post(
            url, content=b"{not json", headers={"content-type": "application/json"}
        )
        r2 = await http.post(url, json={"messages": []})
        r3 = await http.post(url, json={"model": "m", "messages": [], "max_tokens": -1})
    for r in (r1, r2, r3):
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert fb.stats.requests == 3 and fb.stats.completed == 3
    assert fb.stats.received == []


async def test_models_endpoint_lists_configured_models() -> None:
    async with FakeBackend({"a": Behavior(), "b": Behavior()}) as fb, client(fb) as c:
        page = await c.models.list()
        assert sorted(m.id for m in page.data) == ["a", "b"]


# --- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "retry_after"),
    [("http_500", 500, None), ("http_503", 503, "0.25"), ("http_429", 429, "1")],
)
async def test_http_error_faults(
    fb: FakeBackend, kind: Any, status: int, retry_after: str | None
) -> None:
    ra = 0.25 if kind == "http_503" else 1.0
    fb.set_behavior("x", Behavior(fault=Fault(kind, retry_after_s=ra)))
    r = await post(fb, {"model": "x", "messages": MESSAGES})
    assert r.status_code == status
    assert set(r.json()["error"]) >= {"message", "type", "code"}
    assert r.headers.get("retry-after") == retry_after
    expected_exc = openai.RateLimitError if status == 429 else openai.InternalServerError
    async with client(fb) as c:
        with pytest.raises(expected_exc) as info:
            await c.chat.completions.create(model="x", messages=MESSAGES)
    assert info.value.status_code == status
    assert fb.stats.faults_by_kind == {kind: 2}


async def test_retry_after_none_sends_no_header(fb: FakeBackend) -> None:
    fb.set_behavior("x", Behavior(fault=Fault("http_429", retry_after_s=None)))
    r = await post(fb, {"model": "x", "messages": MESSAGES})
    assert r.status_code == 429 and "retry-after" not in r.headers


async def test_fault_times_then_recovery(fb: FakeBackend) -> None:
    fb.set_behavior("flaky", Behavior(fault=Fault("http_503", times=2)))
    statuses = [(await post(fb, {"model": "flaky", "messages": MESSAGES})).status_code]
    statuses.append((await post(fb, {"model": "flaky", "messages": MESSAGES})).status_code)
    ok = await post(fb, {"model": "flaky", "messages": MESSAGES})
    assert statuses == [503, 503] and ok.status_code == 200
    assert ok.json()["choices"][0]["message"]["content"] == expected_content("flaky", MESSAGES, 12)
    # A new behaviour gets a fresh failure budget.
    fb.set_behavior("flaky", Behavior(fault=Fault("http_503", times=1)))
    assert (await post(fb, {"model": "flaky", "messages": MESSAGES})).status_code == 503
    assert (await post(fb, {"model": "flaky", "messages": MESSAGES})).status_code == 200


async def test_empty_fault(fb: FakeBackend) -> None:
    fb.set_behavior("e", Behavior(fault=Fault("empty")))
    async with client(fb) as c:
        resp = await c.chat.completions.create(model="e", messages=MESSAGES)
        text, chunks = await stream_text(c, "e")
    assert resp.choices[0].message.content == ""
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.completion_tokens == 0
    assert text == "" and chunks[-1].choices[0].finish_reason == "stop"


async def test_truncated_fault(fb: FakeBackend) -> None:
    fb.set_behavior("t", Behavior(fault=Fault("truncated"), tokens=4))
    async with client(fb) as c:
        resp = await c.chat.completions.create(model="t", messages=MESSAGES)
        text, chunks = await stream_text(c, "t")
    assert resp.choices[0].message.content == expected_content("t", MESSAGES, 4) == text
    assert resp.choices[0].finish_reason == "length"
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_malformed_json_fault(fb: FakeBackend) -> None:
    fb.set_behavior("mj", Behavior(fault=Fault("malformed_json")))
    r = await post(fb, {"model": "mj", "messages": MESSAGES})
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        r.json()
    async with client(fb) as c:
        with pytest.raises(ValueError):
            await c.chat.completions.create(model="mj", messages=MESSAGES)
        with pytest.raises(ValueError):
            await stream_text(c, "mj")
    assert fb.stats.completed == 3


async def test_reset_mid_stream_fault(fb: FakeBackend) -> None:
    fb.set_behavior("rs", Behavior(fault=Fault("reset_mid_stream"), tokens=10))
    seen: list[str] = []
    async with client(fb) as c:
        stream = await c.chat.completions.create(model="rs", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIConnectionError):
            async for chunk in stream:
                seen.append(chunk.choices[0].delta.content or "")
        with pytest.raises(openai.APIConnectionError):
            await c.chat.completions.create(model="rs", messages=MESSAGES)
    # A few chunks made it, and they are the start of the normal answer.
    assert 1 <= len(seen) < 10
    assert expected_content("rs", MESSAGES, 10).startswith("".join(seen))
    await fb.wait_idle(2)
    assert fb.stats.aborted == 2 and fb.stats.completed == 0


async def test_hang_then_client_timeout_counts_cancelled(fb: FakeBackend) -> None:
    fb.set_behavior("h", Behavior(fault=Fault("hang")))
    async with client(fb, timeout=0.3) as c:
        with pytest.raises(openai.APITimeoutError):
            await c.chat.completions.create(model="h", messages=MESSAGES)
    await fb.wait_idle(2)
    assert (fb.stats.cancelled, fb.stats.completed, fb.stats.in_flight) == (1, 0, 0)


async def test_cancelling_a_hanging_request_counts_cancelled(fb: FakeBackend) -> None:
    fb.set_behavior("h", Behavior(fault=Fault("hang")))
    task = asyncio.create_task(post(fb, {"model": "h", "messages": MESSAGES}, http_timeout=30))
    for _ in range(200):
        if fb.stats.in_flight == 1:
            break
        await asyncio.sleep(0.01)
    assert fb.stats.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fb.wait_idle(2)
    assert fb.stats.cancelled == 1 and fb.stats.in_flight == 0


async def test_shutdown_does_not_wait_for_hanging_requests() -> None:
    backend = FakeBackend(default=Behavior(fault=Fault("hang")))
    await backend.start()
    task = asyncio.create_task(
        post(backend, {"model": "any", "messages": MESSAGES}, http_timeout=30)
    )
    for _ in range(200):
        if backend.stats.in_flight:
            break
        await asyncio.sleep(0.01)
    t0 = time.monotonic()
    await backend.aclose()
    assert time.monotonic() - t0 < 1.5
    with pytest.raises(httpx.TransportError):
        await task
    assert backend.stats.in_flight == 0 and backend.stats.cancelled == 1


# --- latency ------------------------------------------------------------------------------------


async def test_latency_non_stream_and_stream(fb: FakeBackend) -> None:
    fb.set_behavior("slow", Behavior(latency=Latency(ttft_s=0.2, per_token_s=0.02), tokens=5))
    async with client(fb) as c:
        t0 = time.monotonic()
        await c.chat.completions.create(model="slow", messages=MESSAGES)
        elapsed = time.monotonic() - t0
        assert 0.2 + 5 * 0.02 <= elapsed < 0.3 + 0.5

        t0 = time.monotonic()
        stream = await c.chat.completions.create(model="slow", messages=MESSAGES, stream=True)
        arrivals = [time.monotonic() - t0 async for _ in stream]
    assert 0.2 <= arrivals[0] < 0.2 + 0.5
    # Four more tokens after the first, 20 ms apart.
    assert 0.08 <= arrivals[-1] - arrivals[0] < 0.08 + 0.5


@pytest.mark.parametrize("per_token", [0.01, 0.1])  # the short-tick and the racing wait
async def test_stream_disconnect_counts_cancelled(fb: FakeBackend, per_token: float) -> None:
    fb.set_behavior("drip", Behavior(latency=Latency(per_token_s=per_token), tokens=200))
    async with client(fb) as c:
        stream = await c.chat.completions.create(model="drip", messages=MESSAGES, stream=True)
        got = 0
        async for _ in stream:
            got += 1
            if got == 2:
                break
        await stream.close()
    await fb.wait_idle(2)
    assert fb.stats.cancelled == 1 and fb.stats.completed == 0


def test_lognormal_draws_are_reproducible() -> None:
    lat = Latency(ttft_s=0.1, distribution="lognormal", sigma=1.0, seed=42)
    a = sample_ttfts(lat, "m", 2001)
    assert a == sample_ttfts(lat, "m", 2001)
    assert a != sample_ttfts(Latency(ttft_s=0.1, distribution="lognormal", seed=43), "m", 2001)
    # Same seed, other model: independent draws, so parallel proposers do not move in lockstep.
    assert a != sample_ttfts(lat, "other", 2001)
    median = sorted(a)[1000]
    assert 0.085 < median < 0.115
    assert sample_ttfts(Latency(ttft_s=0.1), "m", 3) == [0.1, 0.1, 0.1]


async def test_backend_uses_the_seeded_lognormal_sequence() -> None:
    lat = Latency(ttft_s=0.05, distribution="lognormal", sigma=0.5, seed=3)
    draws = sample_ttfts(lat, "ln", 3)
    assert max(draws) < 0.5  # keeps the test quick; the sequence is fixed by the seed
    async with FakeBackend({"ln": Behavior(latency=lat)}) as fb, client(fb) as c:
        for draw in draws:
            t0 = time.monotonic()
            await c.chat.completions.create(model="ln", messages=MESSAGES)
            elapsed = time.monotonic() - t0
            assert draw * 0.95 <= elapsed < draw + 0.4


# --- counters and run modes ----------------------------------------------------------------------


async def test_counters_and_reset(fb: FakeBackend) -> None:
    fb.set_default(Behavior(tokens=3))
    async with client(fb) as c:
        for model in ("a", "b", "a"):
            resp = await c.chat.completions.create(model=model, messages=MESSAGES)
            assert resp.usage is not None and resp.usage.completion_tokens == 3
    s = fb.stats
    assert (s.requests, s.completed, s.cancelled, s.aborted, s.in_flight) == (3, 3, 0, 0, 0)
    assert s.requests_by_model == {"a": 2, "b": 1}
    assert [r["model"] for r in s.received] == ["a", "b", "a"]
    assert s.received[0]["messages"] == MESSAGES
    fb.reset_stats()
    assert (s.requests, s.completed, s.requests_by_model, s.received) == (0, 0, {}, [])


def test_received_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_fake_types, "RECEIVED_LIMIT", 3)
    stats = BackendStats()
    for i in range(5):
        stats._record_body({"i": i})
    assert [r["i"] for r in stats.received] == [2, 3, 4]


def test_thread_mode_serves_sync_clients() -> None:
    backend = FakeBackend({"m": Behavior(tokens=2)})
    backend.start_in_thread()
    try:
        r = httpx.post(
            f"{backend.base_url}/chat/completions",
            json={"model": "m", "messages": MESSAGES},
            timeout=5,
        )
        assert r.json()["choices"][0]["message"]["content"] == expected_content("m", MESSAGES, 2)
        backend.wait_idle_blocking(2)
        assert backend.stats.completed == 1
    finally:
        backend.stop()
    backend.stop()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{backend.base_url}/models", timeout=2)


def test_thread_mode_context_manager_stops_with_hanging_request() -> None:
    with FakeBackend(default=Behavior(fault=Fault("hang"))) as backend:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{backend.base_url}/chat/completions",
                json={"model": "m", "messages": MESSAGES},
                timeout=0.2,
            )
        backend.wait_idle_blocking(2)
        assert backend.stats.cancelled == 1


# --- config and CLI -----------------------------------------------------------------------------

CONFIG = """
[default]
tokens = 12
ttft_s = 0.05
[models."slow-model"]
ttft_s = 2.0
distribution = "lognormal"
sigma = 1.0
[models."flaky"]
fault = "http_503"
fault_times = 2
retry_after_s = 0.2
"""


def test_load_behaviors(tmp_path: Path) -> None:
    path = tmp_path / "fake.toml"
    path.write_text(CONFIG)
    default, models = load_behaviors(path)
    assert default == Behavior(latency=Latency(ttft_s=0.05), tokens=12)
    slow = models["slow-model"]
    assert slow.latency == Latency(ttft_s=2.0, distribution="lognormal", sigma=1.0)
    assert slow.fault is None and slow.tokens == 12
    flaky = models["flaky"]
    assert flaky.fault == Fault("http_503", times=2, retry_after_s=0.2)
    assert flaky.latency.ttft_s == 0.05  # inherited from [default]

    path.write_text('[default]\nfault = "hang"\n[models.ok]\nfault = "none"\n')
    default, models = load_behaviors(path)
    assert default.fault == Fault("hang") and models["ok"].fault is None

    path.write_text("[default]\nttft = 1\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_behaviors(path)


def test_cli_rejects_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[models.x]\nfault = "explode"\n')
    result = CliRunner().invoke(fake_backend_cmd, ["--port", "0", "--config", str(path)])
    assert result.exit_code != 0
    assert "explode" in result.output


async def test_cli_serves_on_free_port(tmp_path: Path) -> None:
    path = tmp_path / "fake.toml"
    path.write_text(CONFIG)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "moakit.cli.fake_backend",
        "--port",
        "0",
        "--config",
        str(path),
        "--tokens",
        "4",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=15)
        base_url = line.decode().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        assert not base_url.endswith(":8001/v1")
        async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
            models = (await http.get("/models")).json()
            assert {m["id"] for m in models["data"]} == {"slow-model", "flaky"}
            body = {"model": "flaky", "messages": MESSAGES}
            first = await http.post("/chat/completions", json=body)
            assert first.status_code == 503 and first.headers["retry-after"] == "0.2"
            assert (await http.post("/chat/completions", json=body)).status_code == 503
            ok = await http.post("/chat/completions", json={**body, "model": "other"})
            assert ok.json()["choices"][0]["message"]["content"] == expected_content(
                "other", MESSAGES, 4
            )
        proc.send_signal(signal.SIGINT)
        rc = await asyncio.wait_for(proc.wait(), timeout=10)
        assert rc == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
