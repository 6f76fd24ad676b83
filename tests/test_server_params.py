"""Every parameter a client sends is honoured or refused with a 400 naming it; structured output
works with the SDK's ``.parse()`` and LangChain's ``with_structured_output``; errors a retry
cannot fix say so; 429's Retry-After follows the queue."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from moakit.config import parse_config
from moakit.engine import Stack
from moakit.server import create_app
from moakit.server.limits import QueryLimiter
from moakit.testing.fake_backend import Behavior, FakeBackend, Fault
from moakit.testing.models import FunctionModel
from server_harness import USER, City, FormatModel, city_json, client, fake_stack, json_stack, serve


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    with FakeBackend(default=Behavior(tokens=4)) as fb:
        yield fb


def test_sampling_parameters_reach_the_aggregator_only(backend: FakeBackend) -> None:
    app = create_app({"fake": fake_stack(backend.base_url)}, api_keys=[])
    with serve(app) as base:
        client(base).chat.completions.create(
            model="fake",
            messages=USER,
            top_p=0.5,
            presence_penalty=0.25,
            frequency_penalty=-0.5,
            response_format={"type": "text"},
            user="u-1",
            metadata={"k": "v"},
            store=False,
            parallel_tool_calls=False,
            service_tier="auto",
            logprobs=False,
        )
    agg = next(b for b in backend.stats.received if b["model"] == "agg")
    assert (agg["top_p"], agg["presence_penalty"], agg["frequency_penalty"]) == (0.5, 0.25, -0.5)
    assert "response_format" not in agg  # {"type": "text"} is free text: nothing to send
    for proposer in (b for b in backend.stats.received if b["model"] != "agg"):
        assert not {"top_p", "presence_penalty", "frequency_penalty"} & set(proposer)
    # Metadata is accepted and goes nowhere.
    assert not any("metadata" in b or "user" in b for b in backend.stats.received)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logit_bias": {"42": 5}}, "logit_bias"),
        ({"n": 2}, "n"),
        ({"audio": {"voice": "x"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
    ],
)
def test_parameters_not_honoured_are_refused_by_name(
    backend: FakeBackend, extra: dict[str, Any], param: str
) -> None:
    app = create_app({"fake": fake_stack(backend.base_url)}, api_keys=[])
    with serve(app) as base:
        r = httpx.post(
            f"{base}/chat/completions", json={"model": "fake", "messages": USER, **extra}
        )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == "unsupported_parameter"
    assert param in err["message"] or "n=1" in err["message"] or "text output" in err["message"]
    assert backend.stats.requests == 0


@pytest.mark.parametrize(
    ("extra", "param", "replacement"),
    [
        ({"functions": [{"name": "f"}]}, "functions", "'tools'"),
        ({"function_call": "auto"}, "function_call", "'tool_choice'"),
        (
            {"messages": [*USER, {"role": "function", "name": "f", "content": "42"}]},
            "messages.1",
            "role 'tool'",
        ),
        (
            {
                "messages": [
                    *USER,
                    {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
                ]
            },
            "messages.1",
            "'tool_calls'",
        ),
    ],
)
def test_the_legacy_functions_api_is_refused_naming_its_replacement(
    backend: FakeBackend, extra: dict[str, Any], param: str, replacement: str
) -> None:
    app = create_app({"fake": fake_stack(backend.base_url)}, api_keys=[])
    with serve(app) as base:
        r = httpx.post(
            f"{base}/chat/completions", json={"model": "fake", "messages": USER, **extra}
        )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == "unsupported_parameter"
    assert "deprecated functions API" in err["message"] and replacement in err["message"]
    assert backend.stats.requests == 0


def test_sdk_parse_gets_the_format_on_the_aggregator_only() -> None:
    agg, proposer = FormatModel(city_json, name="agg"), FormatModel(city_json, name="p1")
    with serve(create_app({"json": json_stack(agg, proposer)}, api_keys=[])) as base:
        done = client(base).chat.completions.parse(
            model="json", messages=USER, response_format=City
        )
    assert done.choices[0].message.parsed == City(name="Paris", population=2_100_000)
    fmt = agg.requests[0].response_format
    assert fmt is not None and fmt["type"] == "json_schema"
    assert set(fmt["json_schema"]["schema"]["properties"]) == {"name", "population"}
    assert proposer.requests[0].response_format is None


def test_langchain_with_structured_output() -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    agg, proposer = FormatModel(city_json, name="agg"), FormatModel(city_json, name="p1")
    with serve(create_app({"json": json_stack(agg, proposer)}, api_keys=[])) as base:
        llm = langchain_openai.ChatOpenAI(base_url=base, api_key="x", model="json", max_retries=0)
        city = llm.with_structured_output(City).invoke("Which city?")
    assert city == City(name="Paris", population=2_100_000)
    assert agg.requests[0].response_format is not None


def test_output_not_matching_the_schema_is_an_error_not_an_answer() -> None:
    agg = FormatModel(lambda r: json.dumps({"name": "Paris"}), name="agg")
    proposer = FormatModel(city_json, name="p1")
    schema = {"name": "City", "schema": City.model_json_schema()}
    with serve(create_app({"json": json_stack(agg, proposer)}, api_keys=[])) as base:
        with pytest.raises(openai.APIStatusError) as info:
            client(base).chat.completions.create(
                model="json",
                messages=USER,
                response_format={"type": "json_schema", "json_schema": schema},
            )
        bad = httpx.post(
            f"{base}/chat/completions",
            json={
                "model": "json",
                "messages": USER,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": 12}},
                },
            },
        )
    assert info.value.status_code == 502 and "population" in info.value.message
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "response_format.json_schema.schema"


def test_aggregator_that_cannot_honour_the_format_is_400_before_any_call() -> None:
    agg, proposer = FunctionModel(city_json, name="agg"), FunctionModel(city_json, name="p1")
    with serve(create_app({"json": json_stack(agg, proposer)}, api_keys=[])) as base:
        r = httpx.post(
            f"{base}/chat/completions",
            json={"model": "json", "messages": USER, "response_format": {"type": "json_object"}},
        )
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    assert "'agg'" in r.json()["error"]["message"]
    assert agg.requests == [] and proposer.requests == []


@pytest.mark.embedded
def test_structured_output_from_the_embedded_model() -> None:
    # No skip guard: the embedded model constrains its output with a llama.cpp grammar, and a
    # stack whose aggregator could not would be refused with a 400 (the SDK raises), failing this.
    tiny = {"provider": "local", "model": "smollm2-135m", "max_tokens": 48}
    cfg = parse_config({"name": "tiny", "layers": [[tiny]], "aggregator": tiny})
    with serve(create_app({"tiny": cfg}, api_keys=[])) as base:
        done = (
            client(base)
            .with_options(timeout=300)
            .chat.completions.parse(
                model="tiny",
                messages=[{"role": "user", "content": "Name a city and its population."}],
                response_format=City,
            )
        )
    assert isinstance(done.choices[0].message.parsed, City)


def test_errors_a_retry_cannot_fix_say_so() -> None:
    with FakeBackend(default=Behavior(fault=Fault("http_500"))) as fb:
        app = create_app({"fake": fake_stack(fb.base_url)}, api_keys=[])
        with serve(app) as base:
            r = httpx.post(f"{base}/chat/completions", json={"model": "fake", "messages": USER})
            sdk = openai.OpenAI(base_url=base, api_key="x", max_retries=2, timeout=10)
            with pytest.raises(openai.APIStatusError):
                sdk.chat.completions.create(model="fake", messages=USER)
    assert r.status_code == 502 and r.headers["x-should-retry"] == "false"
    # The SDK's two default retries did not run the stack again: 2 proposers x 2 requests.
    assert fb.stats.requests == 4


def test_deadline_is_not_retried() -> None:
    with FakeBackend(default=Behavior(fault=Fault("hang"))) as fb:
        app = create_app({"fake": fake_stack(fb.base_url, deadline_s=0.2)}, api_keys=[])
        with serve(app) as base:
            r = httpx.post(f"{base}/chat/completions", json={"model": "fake", "messages": USER})
            fb.wait_idle_blocking(3)
    assert r.status_code == 504 and r.headers["x-should-retry"] == "false"


def test_retry_after_follows_recent_query_latency() -> None:
    limiter = QueryLimiter(1)
    first = limiter.acquire()
    limiter._started[first] -= 8.4  # a query that took 8.4 s
    limiter.release(first, completed=True)
    busy = limiter.acquire()
    limiter._started[busy] -= 3.0  # in flight for 3 s: about 5.4 s to go
    assert limiter.retry_after_s() == 6
    limiter._started[busy] -= 10.0  # overdue: it may end any moment
    assert limiter.retry_after_s() == 1


def test_429_carries_the_queue_estimate() -> None:
    slow = Behavior(tokens=3)
    with FakeBackend(default=slow, models={"agg": Behavior(fault=Fault("hang"))}) as fb:
        app = create_app({"fake": fake_stack(fb.base_url)}, api_keys=[], max_concurrent=1)
        limiter: QueryLimiter = app.state.moa.limiter
        limiter._recent.append(30.0)  # recent queries took 30 s each
        with (
            serve(app) as base,
            httpx.stream(
                "POST",
                f"{base}/chat/completions",
                json={"model": "fake", "messages": USER, "stream": True},
            ) as held,
        ):
            lines = held.iter_lines()
            next(lines)
            second = httpx.post(
                f"{base}/chat/completions", json={"model": "fake", "messages": USER}
            )
    assert second.status_code == 429
    assert 28 <= int(second.headers["retry-after"]) <= 30


def test_response_format_is_sent_to_an_openai_compatible_aggregator(backend: FakeBackend) -> None:
    app = create_app({"fake": fake_stack(backend.base_url)}, api_keys=[])
    with serve(app) as base:
        r = httpx.post(
            f"{base}/chat/completions",
            json={"model": "fake", "messages": USER, "response_format": {"type": "json_object"}},
        )
    agg = next(b for b in backend.stats.received if b["model"] == "agg")
    assert agg["response_format"] == {"type": "json_object"}
    assert all("response_format" not in b for b in backend.stats.received if b["model"] != "agg")
    # The fake backend answers in prose whatever it is asked: that is not a JSON answer.
    assert r.status_code == 502 and r.json()["error"]["code"] == "invalid_output"


def test_penalties_on_an_anthropic_aggregator_are_400(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "unused")
    proposer = FunctionModel(city_json, name="p1")
    cfg = parse_config(
        {
            "layers": [[{"model": "p1", "base_url": "http://127.0.0.1:9/v1"}]],
            "aggregator": {"provider": "anthropic", "model": "claude-x"},
        }
    )
    stack = Stack(cfg, models={"p1": proposer})
    with serve(create_app({"claude": stack}, api_keys=[])) as base:
        r = httpx.post(
            f"{base}/chat/completions",
            json={"model": "claude", "messages": USER, "frequency_penalty": 0.5, "top_p": 0.9},
        )
    assert r.status_code == 400 and r.json()["error"]["param"] == "frequency_penalty"
    assert proposer.requests == []


def test_schema_with_a_remote_ref_is_400_and_never_fetched() -> None:
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(1)
    trap.settimeout(0.5)
    agg, proposer = FormatModel(city_json, name="agg"), FormatModel(city_json, name="p1")
    url = f"http://127.0.0.1:{trap.getsockname()[1]}/city.json"
    fmt = {"type": "json_schema", "json_schema": {"name": "c", "schema": {"$ref": url}}}
    with trap, serve(create_app({"json": json_stack(agg, proposer)}, api_keys=[])) as base:
        r = httpx.post(
            f"{base}/chat/completions",
            json={"model": "json", "messages": USER, "response_format": fmt},
        )
        with pytest.raises(TimeoutError):
            trap.accept()
    assert r.status_code == 400 and "$ref" in r.json()["error"]["message"]
    assert agg.requests == []


def test_a_previous_answer_can_be_sent_back(backend: FakeBackend) -> None:
    app = create_app({"fake": fake_stack(backend.base_url)}, api_keys=[])
    with serve(app) as base:
        sdk = client(base)
        first = sdk.chat.completions.create(model="fake", messages=USER).choices[0].message
        echoed = first.model_dump()  # role, content, refusal/tool_calls/audio... all empty
        assert "tool_calls" in echoed and echoed["tool_calls"] is None
        follow = [*USER, echoed, {"role": "user", "content": "and then?"}]
        again = sdk.chat.completions.create(model="fake", messages=follow)  # type: ignore[arg-type]
    assert again.choices[0].message.content


def test_moa_budget_tightens_this_query_only(backend: FakeBackend) -> None:
    app = create_app({"fake": fake_stack(backend.base_url)}, api_keys=[])
    with serve(app) as base:
        sdk = client(base)
        cut = sdk.chat.completions.create(
            model="fake",
            messages=USER,
            extra_body={"moa_budget": {"max_calls": 2}, "moa_details": True},
        )
        whole = sdk.chat.completions.create(model="fake", messages=USER)
        bad = httpx.post(
            f"{base}/chat/completions",
            json={"model": "fake", "messages": USER, "moa_budget": {"max_calls": 0}},
        )
    details = cut.model_extra["moa"]  # type: ignore[index]
    (decision,) = details["decisions"]
    assert decision["kind"] == "budget" and decision["skipped"] == ["p2"]
    assert cut.choices[0].message.content and whole.choices[0].message.content
    received = [b["model"] for b in backend.stats.received]
    assert received.count("p2") == 1  # only the query without a budget asked p2
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "moa_budget.max_calls"
