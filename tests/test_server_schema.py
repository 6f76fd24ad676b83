"""A client's JSON Schema can never stall the server (issue 27, item 1): catastrophic patterns
run on RE2, self-referencing and exploding ``$ref`` graphs are refused before any call, and
validation runs off the event loop under a time budget."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

from moakit.schema import MAX_EXPANSION, OutputInvalid, SchemaRefused, _check_schema
from moakit.server import create_app
from server_harness import USER, FormatModel, city_json, json_stack, serve

# Python's re needs ~2^26 steps to reject this: seconds, holding the GIL the whole time.
EVIL_PATTERN = "^(a+)+$"
EVIL_TEXT = "a" * 26 + "!"


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def test_health_answers_fast_while_a_catastrophic_pattern_is_validated() -> None:
    agg = FormatModel(lambda request: json.dumps({"name": EVIL_TEXT}), name="agg")
    proposer = FormatModel(city_json, name="p1")
    schema = {"type": "object", "properties": {"name": {"type": "string", "pattern": EVIL_PATTERN}}}
    latencies: list[float] = []
    done, warm = threading.Event(), threading.Event()
    with serve(create_app({"json": json_stack(agg, proposer)}, api_keys=[])) as base:

        def probe() -> None:
            # Client and server share this process: a probe timed from before a stall started
            # shows the stall, whichever thread held the interpreter.
            with httpx.Client(base_url=base.removesuffix("/v1"), timeout=30) as http:
                assert http.get("/health").status_code == 200  # connected: not counted
                warm.set()
                while not done.is_set():
                    started = time.perf_counter()
                    assert http.get("/health").status_code == 200
                    latencies.append(time.perf_counter() - started)
                    time.sleep(0.01)

        prober = threading.Thread(target=probe)
        prober.start()
        assert warm.wait(10)
        try:
            r = httpx.post(
                f"{base}/chat/completions",
                json={"model": "json", "messages": USER, "response_format": schema_format(schema)},
                timeout=60,
            )
        finally:
            time.sleep(0.05)
            done.set()
            prober.join(30)
    assert latencies
    assert max(latencies) < 0.1, sorted(latencies)[-3:]
    # The answer did not match (RE2 says so at once): a 502, not a hang and not a 500.
    assert r.status_code == 502
    assert "does not match" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        ({"$ref": "#"}, "refers back to itself"),
        ({"allOf": [{"$ref": "#"}]}, "refers back to itself"),
        (
            {
                "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"anyOf": [{"$ref": "#/$defs/a"}]}},
                "$ref": "#/$defs/a",
            },
            "refers back to itself",
        ),
        ({"type": "string", "pattern": "(a)\\1"}, "not supported"),
        ({"$ref": "#/$defs/missing"}, "points at nothing"),
        ({"$ref": "#anchor"}, "JSON-pointer"),
    ],
)
def test_unusable_schemas_are_400_before_any_call(schema: dict[str, Any], why: str) -> None:
    agg, proposer = FormatModel(city_json, name="agg"), FormatModel(city_json, name="p1")
    with serve(create_app({"json": json_stack(agg, proposer)}, api_keys=[])) as base:
        started = time.perf_counter()
        r = httpx.post(
            f"{base}/chat/completions",
            json={"model": "json", "messages": USER, "response_format": schema_format(schema)},
            timeout=30,
        )
        elapsed = time.perf_counter() - started
        responses = httpx.post(
            f"{base}/responses",
            json={
                "model": "json",
                "input": "hi",
                "text": {"format": {"type": "json_schema", "name": "x", "schema": schema}},
            },
            timeout=30,
        )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "response_format.json_schema.schema"
    assert why in r.json()["error"]["message"]
    assert responses.status_code == 400 and responses.json()["error"]["param"] == (
        "text.format.schema"
    )
    assert agg.requests == [] and proposer.requests == []
    assert elapsed < 5


def test_a_recursive_schema_that_descends_is_fine() -> None:
    tree = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "children": {"items": {"$ref": "#"}}},
    }
    _check_schema(tree)  # recursion through a property consumes the instance: it ends


def test_exponential_reference_graphs_are_refused() -> None:
    # Each level applies the next one twice to the same value: 2^30 subschemas per value.
    defs = {f"l{i}": {"anyOf": [{"$ref": f"#/$defs/l{i + 1}"}] * 2} for i in range(30)}
    defs["l30"] = {"type": "string"}
    with pytest.raises(SchemaRefused, match=str(MAX_EXPANSION)):
        _check_schema({"$defs": defs, "$ref": "#/$defs/l0"})


async def test_patterns_run_on_re2_and_deep_answers_are_invalid_output() -> None:
    from moakit.schema import check_answer

    fmt = schema_format({"type": "string", "pattern": EVIL_PATTERN})
    started = time.perf_counter()
    with pytest.raises(OutputInvalid, match="does not match"):
        await check_answer(json.dumps("a" * 5000 + "!"), fmt)
    assert time.perf_counter() - started < 1
    await check_answer(json.dumps("aaaa"), fmt)
    deep = "[" * 5000 + "]" * 5000  # valid JSON, deeper than the parser's recursion allows
    with pytest.raises(OutputInvalid):
        await check_answer(deep, schema_format({"type": "array"}))
