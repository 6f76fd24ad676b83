"""The endpoints clients expect: the Responses API (text subset), models.retrieve, and a 404
that names the routes. Shapes are checked against the ``openai`` package's own types."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from moakit.server import create_app
from moakit.testing.fake_backend import Behavior, FakeBackend, Fault, Latency
from server_harness import City, FormatModel, city_json, client, fake_stack, json_stack, serve

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    with FakeBackend(default=Behavior(latency=Latency(per_token_s=0.001))) as fb:
        yield fb


def test_responses_create(backend: FakeBackend) -> None:
    app = create_app({"fake": fake_stack(backend.base_url)}, api_keys=[])
    with serve(app) as base:
        resp = client(base).responses.create(
            model="fake", input="hello", instructions="Be brief.", max_output_tokens=16
        )
        raw = httpx.post(
            f"{base}/responses",
            json={"model": "fake", "input": [{"role": "user", "content": "hi"}]},
        ).json()
    assert resp.object == "response" and resp.status == "completed"
    assert resp.output_text.startswith("agg")
    assert resp.usage is not None and resp.usage.output_tokens == 3 * 12
    p1 = next(b for b in backend.stats.received if b["model"] == "p1")
    assert p1["messages"][0] == {"role": "system", "content": "Be brief."}
    agg = next(b for b in backend.stats.received if b["model"] == "agg")
    assert agg["messages"][0]["content"].startswith("Be brief.")
    assert agg["max_tokens"] == 16
    # Strict validation against the SDK's own model: every required field, every type.
    Response.model_validate(raw)


def test_responses_stream_typed_events(backend: FakeBackend) -> None:
    app = create_app({"fake": fake_stack(backend.base_url)}, api_keys=[])
    with serve(app) as base:
        with client(base).responses.stream(
            model="fake", input=[{"role": "user", "content": "hello"}]
        ) as stream:
            kinds = [event.type for event in stream]
            final = stream.get_final_response()
        with httpx.stream(
            "POST", f"{base}/responses", json={"model": "fake", "input": "hi", "stream": True}
        ) as r:
            raw = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ")]
    head = [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    tail = [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert kinds[:4] == head and kinds[-4:] == tail
    assert set(kinds[4:-4]) == {"response.output_text.delta"} and len(kinds) > 10
    assert final.output_text.startswith("agg") and final.usage is not None
    assert final.usage.total_tokens > 0
    for event in raw:
        EVENTS.validate_python(event)  # strict: each event is a valid SDK event
    assert [e["sequence_number"] for e in raw] == list(range(len(raw)))
    deltas = "".join(e["delta"] for e in raw if e["type"] == "response.output_text.delta")
    assert deltas == raw[-1]["response"]["output"][0]["content"][0]["text"]


def test_responses_stream_failure_is_response_failed() -> None:
    agg = Behavior(tokens=30, fault=Fault("reset_mid_stream"))
    with FakeBackend(models={"agg": agg}) as fb:
        app = create_app({"fake": fake_stack(fb.base_url)}, api_keys=[])
        with (
            serve(app) as base,
            client(base).responses.stream(model="fake", input="hi") as stream,
        ):
            events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[-1] == "response.failed" and "response.completed" not in kinds
    failed = events[-1]
    assert failed.type == "response.failed" and failed.response.error is not None
    assert failed.response.status == "failed"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools.0"),
        ({"background": True}, "background"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        (
            {"input": [{"type": "function_call_output", "call_id": "c", "output": "1"}]},
            "input.0.call_id",  # answers no earlier function_call
        ),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input.0"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input.0.content.0"),
    ],
)
def test_unsupported_responses_features_are_400(
    backend: FakeBackend, extra: dict[str, Any], param: str
) -> None:
    app = create_app({"fake": fake_stack(backend.base_url)}, api_keys=[])
    with serve(app) as base:
        r = httpx.post(f"{base}/responses", json={"model": "fake", "input": "hi", **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert backend.stats.requests == 0


def test_models_retrieve_and_unknown_routes(backend: FakeBackend) -> None:
    app = create_app(
        {"fake": fake_stack(backend.base_url), "org/model": fake_stack("x")}, api_keys=[]
    )
    with serve(app) as base:
        sdk = client(base)
        assert sdk.models.retrieve("fake").id == "fake"
        assert sdk.models.retrieve("org/model").id == "org/model"
        with pytest.raises(openai.NotFoundError):
            sdk.models.retrieve("nope")
        missing = httpx.get(f"{base}/embeddings")
        wrong_method = httpx.get(f"{base}/chat/completions")
    assert missing.status_code == 404
    message = missing.json()["error"]["message"]
    assert "POST /v1/chat/completions" in message and "POST /v1/responses" in message
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_langchain_responses_api(backend: FakeBackend) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    app = create_app({"fake": fake_stack(backend.base_url)}, api_keys=[])
    with serve(app) as base:
        llm = langchain_openai.ChatOpenAI(
            base_url=base, api_key="x", model="fake", use_responses_api=True, max_retries=0
        )
        answer = llm.invoke("hello")
        streamed = "".join(str(c.text) for c in llm.stream("hello"))
    assert str(answer.text).startswith("agg")
    assert streamed.startswith("agg")


def test_responses_parse_structured_output() -> None:
    agg, proposer = FormatModel(city_json, name="agg"), FormatModel(city_json, name="p1")
    with serve(create_app({"json": json_stack(agg, proposer)}, api_keys=[])) as base:
        done = client(base).responses.parse(model="json", input="Which city?", text_format=City)
    assert done.output_parsed == City(name="Paris", population=2_100_000)
    fmt = agg.requests[0].response_format
    assert fmt is not None and fmt["type"] == "json_schema"
    assert proposer.requests[0].response_format is None
