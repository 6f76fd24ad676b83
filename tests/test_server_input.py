"""Bad input is the client's fault: a 400 in OpenAI's JSON with ``param``, never a 500/502.
The fuzz test drives a real server with generated requests over the request schema."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moakit.engine import Stack
from moakit.models.base import ChatRequest
from moakit.server import create_app
from moakit.server.settings import parse_server_settings
from moakit.server.wire import ChatCompletionRequest
from moakit.server.wire_responses import ResponsesRequest
from moakit.testing.fake_backend import Behavior, FakeBackend
from moakit.testing.models import FunctionModel
from server_harness import USER, fake_stack, serve


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    with FakeBackend(default=Behavior(tokens=4)) as fb:
        yield fb


JSON = {"content-type": "application/json"}


def post_raw(base: str, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{base}/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=10,
    )


def test_deep_nesting_is_a_json_400(backend: FakeBackend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="moakit.server")
    app = create_app({"fake": fake_stack(backend.base_url)}, api_keys=[])
    with serve(app) as base:
        deep_schema: dict[str, Any] = {"type": "object"}
        for _ in range(300):  # json.loads takes it; jsonschema's recursion would not
            deep_schema = {"type": "object", "properties": {"a": deep_schema}}
        schema_body = {
            "model": "fake",
            "messages": USER,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "deep", "schema": deep_schema},
            },
        }
        bodies = (
            b"[" * 200_000 + b"]" * 200_000,
            b'{"model": ' + b'{"a":' * 100_000,
            json.dumps(schema_body).encode(),
        )
        for body in bodies:
            r = post_raw(base, body)
            assert r.status_code == 400, r.text[:200]
            assert r.json()["error"]["code"] == "invalid_json"
    access = [json.loads(r.message) for r in caplog.records if r.message.startswith("{")]
    # Refused before the model is known, and logged all the same.
    assert [(a["model"], a["status"]) for a in access] == [(None, 400)] * 3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            '{"model": "fake", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
            "messages.0.content",
        ),
        (
            '{"model": "fake", "messages": [{"role": "user", "content": '
            '[{"type": "text", "text": "\\udfff"}]}]}',
            "messages.0.content.0.text",
        ),
        (
            '{"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stop": "\\ud83d"}',
            "stop.0",
        ),
        ('{"model": "f\\ud800", "messages": [{"role": "user", "content": "hi"}]}', "model"),
    ],
)
def test_lone_surrogates_are_a_400_naming_the_field(
    backend: FakeBackend, body: str, param: str
) -> None:
    app = create_app({"fake": fake_stack(backend.base_url)}, api_keys=[])
    with serve(app) as base:
        r = post_raw(base, body.encode())
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["code"] == "invalid_unicode"
    assert backend.stats.requests == 0


def test_validation_errors_carry_a_dotted_param(backend: FakeBackend) -> None:
    app = create_app({"fake": fake_stack(backend.base_url)}, api_keys=[])
    cases: list[tuple[dict[str, Any], str, str]] = [
        (
            {"model": "fake", "messages": [{"role": "user", "content": 3}]},
            "messages.0.content",
            "content must be a string",
        ),
        (
            {"model": "fake", "messages": [USER[0], {"role": "robot", "content": "x"}]},
            "messages.1.role",
            "Input should be",
        ),
        ({"model": "fake", "messages": USER, "temperature": "hot"}, "temperature", "valid number"),
        ({"model": "fake", "messages": USER, "max_tokens": "5"}, "max_tokens", "valid integer"),
        ({"model": "fake", "messages": USER, "stream": "yes"}, "stream", "valid boolean"),
        ({"model": "fake", "messages": USER, "frobnicate": 1}, "frobnicate", "unrecognized"),
        ({"messages": USER}, "model", "missing"),
    ]
    with serve(app) as base:
        for body, param, words in cases:
            r = httpx.post(f"{base}/chat/completions", json=body)
            assert r.status_code == 400, (body, r.text)
            err = r.json()["error"]
            assert err["param"] == param and words in err["message"], (body, err)


# -- fuzz -----------------------------------------------------------------------------------------

_strings = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["fake", "", "user", "text", "json_object", "\ud800", "x\udfffy"]),
)
_json: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        _strings,
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_strings, inner, max_size=3),
    max_leaves=8,
)
_part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": _strings}),
    st.dictionaries(st.sampled_from(["type", "text", "image_url"]), _json, max_size=3),
)
_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "developer", "assistant", "tool", "robot"]),
        "content": st.one_of(_strings, st.lists(_part, max_size=3), _json),
    },
    optional={"name": _strings, "tool_calls": _json, "refusal": _json, "tool_call_id": _json},
)
_stack = st.one_of(
    st.just({"layers": [[{"endpoint": "fake", "model": "p1"}]], "aggregator": {"model": "agg"}}),
    st.dictionaries(st.sampled_from(["layers", "aggregator", "defaults", "deadline_s"]), _json),
)
# Every top-level field of the request schema, with values of every JSON type.
_fields = sorted(ChatCompletionRequest.model_fields)
_body = st.fixed_dictionaries(
    {
        "model": st.one_of(st.just("fake"), _strings),
        "messages": st.one_of(st.lists(_message, min_size=1, max_size=3), _json),
    },
    optional={
        **{name: _json for name in _fields if name not in ("model", "messages", "moa", "stream")},
        "stream": st.one_of(st.booleans(), _json),
        "moa": _stack,
        "surprise": _json,
    },
)


def _check(r: httpx.Response) -> None:
    assert 200 <= r.status_code < 300 or 400 <= r.status_code < 500, (r.status_code, r.text)
    if r.headers["content-type"].startswith("text/event-stream"):
        for line in r.text.splitlines():
            if line.startswith("data:") and line != "data: [DONE]":
                event = json.loads(line[5:])
                assert "error" not in event and event.get("type") != "response.failed", event
    else:
        body = r.json()
        assert bool(body.get("error")) == (r.status_code >= 400), body


_input_item = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "assistant", "tool"]),
        "content": st.one_of(
            _strings,
            st.lists(
                st.fixed_dictionaries(
                    {"type": st.sampled_from(["input_text", "input_image"]), "text": _strings}
                ),
                max_size=2,
            ),
            _json,
        ),
    },
    optional={
        "type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning"]),
        "call_id": _json,
        "name": _json,
        "arguments": _json,
        "output": _json,
    },
)
_responses_fields = sorted(ResponsesRequest.model_fields)
_responses_body = st.fixed_dictionaries(
    {
        "model": st.one_of(st.just("fake"), _strings),
        "input": st.one_of(_strings, st.lists(_input_item, min_size=1, max_size=2), _json),
    },
    optional={
        **{n: _json for n in _responses_fields if n not in ("model", "input", "stream")},
        "stream": st.one_of(st.booleans(), _json),
        "surprise": _json,
    },
)


@pytest.mark.parametrize(
    ("path", "bodies", "examples"),
    [("/chat/completions", _body, 120), ("/responses", _responses_body, 60)],
)
def test_fuzzed_requests_always_get_json_2xx_or_4xx_quickly(
    backend: FakeBackend, path: str, bodies: st.SearchStrategy[Any], examples: int
) -> None:
    cfg = fake_stack(backend.base_url)
    aggregator = FunctionModel(lambda request: "agg answer", name="agg")
    stack = Stack(cfg, models={"agg": aggregator})
    server_settings = parse_server_settings(
        {"endpoints": {"fake": {"base_url": backend.base_url, "models": ["p1", "agg"]}}}
    )
    app = create_app(
        {"fake": stack}, api_keys=[], settings=server_settings, allow_request_stacks=True
    )
    with serve(app) as base, httpx.Client(timeout=10) as http:

        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(body=bodies)
        def one(body: dict[str, Any]) -> None:
            t0 = time.monotonic()
            r = http.post(f"{base}{path}", content=json.dumps(body).encode(), headers=JSON)
            assert time.monotonic() - t0 < 5, body
            _check(r)

        one()
    # The generated cases reached the stack too, not only the validator.
    assert any(isinstance(r, ChatRequest) for r in aggregator.requests)
