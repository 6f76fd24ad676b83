"""Streams never show text that is not the answer; clients that leave cancel their query; the
access log records how every request ended."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import openai
import pytest

from moakit.config import parse_config
from moakit.engine import Stack
from moakit.errors import AggregatorFailed
from moakit.events import TextDelta
from moakit.server import create_app
from moakit.testing.fake_backend import Behavior, FakeBackend, Fault, Latency, expected_content
from server_harness import USER, client, fake_stack, serve, wait_until

SLOW = Behavior(latency=Latency(per_token_s=0.005), tokens=30)


def retrying_stack(base_url: str) -> Any:
    # retries = 2 on the aggregator, as in the default retry policy.
    return fake_stack(
        base_url,
        defaults={"provider": "openai", "base_url": base_url, "max_tokens": 40, "retries": 2},
        retry={"retries": 2, "initial_s": 0.01, "max_s": 0.02},
    )


def agg_answer(fb: FakeBackend) -> str:
    body = next(b for b in fb.stats.received if b["model"] == "agg")
    return expected_content("agg", body["messages"], 30)


def test_failure_after_first_token_ends_the_stream_with_an_error() -> None:
    """The aggregator's connection resets after two chunks; its retry would answer in full.
    The client must see the partial text, then an error: never a second answer after it."""
    agg = Behavior(latency=SLOW.latency, tokens=30, fault=Fault("reset_mid_stream", times=1))
    with FakeBackend(default=SLOW, models={"agg": agg}) as fb:
        app = create_app({"fake": retrying_stack(fb.base_url)}, api_keys=[])
        with serve(app) as base:
            seen: list[str] = []
            stream = client(base).chat.completions.create(model="fake", messages=USER, stream=True)
            with pytest.raises(openai.APIError) as info:
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        seen.append(chunk.choices[0].delta.content)
            fb.set_behavior("agg", agg)  # the fault's budget starts afresh
            with httpx.stream(
                "POST",
                f"{base}/chat/completions",
                json={"model": "fake", "messages": USER, "stream": True},
            ) as r:
                lines = [line for line in r.iter_lines() if line.startswith("data:")]
    # Today the server ends the stream itself on the engine's attempt-failed event; once the
    # engine's stream rule lands it raises AggregatorFailed instead. Both say this code.
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "aggregator_failed"
    text = "".join(seen)
    assert text, "the failure was meant to happen after some text"
    full = agg_answer(fb)
    assert full.startswith(text) and text != full
    assert text.count("agg saw") == 1
    # The raw stream: content, then one error event, and no [DONE] (the answer never finished).
    assert "data: [DONE]" not in lines
    last = json.loads(lines[-1].removeprefix("data: "))
    assert set(last) == {"error"} and last["error"]["type"] == "upstream_error"


def test_failure_before_first_token_is_retried_for_free() -> None:
    agg = Behavior(latency=SLOW.latency, tokens=30, fault=Fault("http_500", times=1))
    with FakeBackend(default=SLOW, models={"agg": agg}) as fb:
        app = create_app({"fake": retrying_stack(fb.base_url)}, api_keys=[])
        with serve(app) as base:
            stream = client(base).chat.completions.create(model="fake", messages=USER, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert fb.stats.requests_by_model["agg"] == 2
        assert text == agg_answer(fb)


def test_non_streaming_disconnect_cancels_the_query(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="moakit.server")
    with FakeBackend(models={"agg": Behavior(fault=Fault("hang"))}) as fb:
        app = create_app({"fake": fake_stack(fb.base_url)}, api_keys=[])
        with serve(app) as base:
            # The client gives up while the aggregator hangs: its connection closes.
            with (
                httpx.Client(timeout=httpx.Timeout(5, read=0.5)) as c,
                pytest.raises(httpx.ReadTimeout),
            ):
                c.post(f"{base}/chat/completions", json={"model": "fake", "messages": USER})
            assert fb.stats.requests_by_model.get("agg") == 1
            wait_until(lambda: fb.stats.in_flight == 0, what="upstream calls cancelled")
            wait_until(lambda: app.state.moa.in_flight == 0, what="slot released")
            assert fb.stats.cancelled >= 1
            wait_until(lambda: any('"status": 499' in r.message for r in caplog.records))
    lines = [json.loads(r.message) for r in caplog.records if r.message.startswith("{")]
    assert [(x["model"], x["status"]) for x in lines] == [("fake", 499)]


def test_access_lines_for_400_before_the_model_and_for_500s(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="moakit.server")
    member = {"model": "m", "base_url": "http://127.0.0.1:9/v1"}
    cfg = parse_config({"layers": [[member]], "aggregator": member})
    broken = Stack(cfg)

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the server path")

    broken.events = explode  # type: ignore[method-assign]
    with serve(create_app({"broken": broken}, api_keys=[])) as base:
        bad = httpx.post(
            f"{base}/chat/completions",
            content=b"{nope",
            headers={"content-type": "application/json"},
        )
        boom = httpx.post(f"{base}/chat/completions", json={"model": "broken", "messages": USER})
        streamed = httpx.post(
            f"{base}/chat/completions",
            json={"model": "broken", "messages": USER, "stream": True},
        )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    assert boom.status_code == 500
    err = boom.json()["error"]
    assert err["type"] == "server_error"
    rid = err["message"].split("request id ")[1].split(")")[0]
    assert rid.startswith("chatcmpl-")
    # The streamed path: a 200 already sent, so the 500 travels as the stream's error event.
    events = [line for line in streamed.text.splitlines() if line.startswith("data:")]
    assert json.loads(events[-1][6:])["error"]["type"] == "server_error"
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 2 and rid in tracebacks[0].getMessage()
    access = [json.loads(r.message) for r in caplog.records if r.message.startswith("{")]
    assert [(a["model"], a["status"]) for a in access] == [
        (None, 400),
        ("broken", 500),
        ("broken", 500),
    ]
    assert access[1]["id"] == rid


def test_engine_stream_rule_failure_becomes_an_error_event() -> None:
    """The engine's rule (contract.md): after the first TextDelta a failure raises
    AggregatorFailed. Scripted here, so the server side is tested whatever the engine does."""
    member = {"model": "m", "base_url": "http://127.0.0.1:9/v1"}
    stack = Stack(parse_config({"layers": [[member]], "aggregator": member}))

    async def scripted(*args: Any, **kwargs: Any) -> Any:
        yield TextDelta(text="partial ", run_id="scripted", ts=0.0)
        raise AggregatorFailed("aggregator failed after it started streaming")

    stack.events = scripted  # type: ignore[method-assign]
    with serve(create_app({"scripted": stack}, api_keys=[])) as base:
        r = httpx.post(
            f"{base}/chat/completions",
            json={"model": "scripted", "messages": USER, "stream": True},
        )
    data = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    contents = [
        json.loads(d)["choices"][0]["delta"].get("content") for d in data[:-1] if d != "[DONE]"
    ]
    assert contents == ["", "partial "]
    assert json.loads(data[-1])["error"]["code"] == "aggregator_failed"
    assert "[DONE]" not in data
