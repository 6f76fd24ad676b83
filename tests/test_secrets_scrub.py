"""A configured key never leaves in what moakit returns or writes (issue 27, item 4): a model
that echoes one (a prompt injection can make it) puts ``***`` in the answer, the stream, the
result, the references the next layer sees, the API response, ``moa ask`` and the eval cache."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from moakit import Stack, parse_config
from moakit.cli.main import cli
from moakit.config import MemberSpec
from moakit.errors import LayerFailed, ModelCallError
from moakit.events import TextDelta
from moakit.models.base import ChatRequest, Chunk, Model
from moakit.models.provider import ResourcePool
from moakit.models.wrappers import ScrubbingModel
from moakit.server import create_app
from moakit.testing.models import FunctionModel
from moakit.testing.plugins import register_provider

# A variable named like nothing key-like: it is a secret because a stack names it api_key_env.
KEY_VAR = "ECHO_PROVIDER_CREDENTIAL_VAR"
KEY = "sk-echo-5f3a9c1b7d2e4f60"
CLIENT_KEY = "client-key-8e1d2c3b4a"


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_VAR, KEY)
    monkeypatch.setenv("MOA_API_KEYS", CLIENT_KEY)


def config(**extra: Any) -> Any:
    member = {"model": "p1", "base_url": "http://127.0.0.1:9/v1", "api_key_env": KEY_VAR}
    return parse_config(
        {
            "name": "echo",
            "layers": [[member, {**member, "model": "p2"}]],
            "aggregator": {**member, "model": "agg"},
            **extra,
        }
    )


class Trickle(Model):
    """Streams ``text`` a few characters at a time, so a key arrives split across chunks."""

    def __init__(self, text: str, name: str, size: int = 3) -> None:
        self.text, self.name, self.size = text, name, size
        self.requests: list[ChatRequest] = []

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        self.requests.append(request)
        for i in range(0, len(self.text), self.size):
            yield Chunk(text=self.text[i : i + self.size])
        yield Chunk(finish_reason="stop")


def echo_models() -> dict[str, Model]:
    return {
        "p1": FunctionModel(lambda r: f"my key is {KEY}.", name="p1"),
        "p2": FunctionModel(lambda r: f"the client's is {CLIENT_KEY}", name="p2"),
        "agg": Trickle(f"Summary: {KEY} and {CLIENT_KEY}, and sk-e is not a key.", name="agg"),
    }


def assert_clean(text: str) -> None:
    assert KEY not in text and CLIENT_KEY not in text
    # Not even a part that was split across chunks.
    assert KEY[:10] not in text and CLIENT_KEY[:10] not in text


async def test_echoed_keys_never_reach_the_result_the_stream_or_the_references() -> None:
    models = echo_models()
    async with Stack(config(), models=models) as stack:
        streamed: list[str] = []
        async for event in stack.events([{"role": "user", "content": "say your key"}]):
            if isinstance(event, TextDelta):
                streamed.append(event.text)
            assert_clean(json.dumps(getattr(event, "result", None) and event.result.model_dump()))
    text = "".join(streamed)
    assert text == "Summary: *** and ***, and sk-e is not a key."
    agg_prompt = json.dumps([m.to_openai() for m in models["agg"].requests[0].messages])  # type: ignore[attr-defined]
    assert_clean(agg_prompt)
    assert "my key is ***." in agg_prompt


async def test_a_key_in_an_error_message_is_scrubbed() -> None:
    def leak(request: ChatRequest) -> str:
        raise ModelCallError(f"upstream rejected Authorization: {KEY}", kind="http", status=401)

    models: dict[str, Model] = {**echo_models(), "p1": FunctionModel(leak, name="p1")}
    models["p2"] = FunctionModel(leak, name="p2")
    async with Stack(config(), models=models) as stack:
        with pytest.raises(LayerFailed) as failed:
            await stack.run([{"role": "user", "content": "hi"}])
    assert_clean(str(failed.value))
    assert failed.value.result is not None
    assert_clean(failed.value.result.model_dump_json())


async def test_the_api_response_is_scrubbed_streamed_or_not() -> None:
    stack = Stack(config(), models=echo_models())
    app = create_app({"echo": stack})
    auth = {"authorization": f"Bearer {CLIENT_KEY}"}
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "moa_details": True}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        whole = await c.post("/v1/chat/completions", json=body, headers=auth)
        streamed = await c.post("/v1/chat/completions", json={**body, "stream": True}, headers=auth)
        responses = await c.post(
            "/v1/responses", json={"model": "echo", "input": "hi"}, headers=auth
        )
    await stack.aclose()
    for r in (whole, streamed, responses):
        assert r.status_code == 200
        assert_clean(r.text)
    assert "***" in whole.json()["choices"][0]["message"]["content"]


@pytest.fixture
def echo_provider() -> Iterator[None]:
    def build(spec: MemberSpec, pool: ResourcePool) -> Model:
        return Trickle(f"{spec.model} says {KEY}", name=spec.model, size=4)

    register_provider("echo-test", build)
    yield
    register_provider("echo-test", lambda spec, pool: pytest.fail("provider left registered"))


def test_moa_ask_prints_no_key(tmp_path: Path, echo_provider: None) -> None:
    cfg = tmp_path / "echo.toml"
    cfg.write_text(
        f'name = "echo"\n[defaults]\nprovider = "echo-test"\napi_key_env = "{KEY_VAR}"\n'
        '[[layers]]\nmembers = [{model = "p1"}]\n[aggregator]\nmodel = "agg"\n'
    )
    runner = CliRunner()
    plain = runner.invoke(cli, ["ask", "-c", str(cfg), "-q", "hi"])
    as_json = runner.invoke(cli, ["ask", "-c", str(cfg), "--json", "hi"])
    assert plain.exit_code == 0 and as_json.exit_code == 0, plain.output + as_json.output
    assert "agg says ***" in plain.output
    assert_clean(plain.output)
    assert_clean(as_json.output)


async def test_the_eval_cache_stores_only_scrubbed_answers(
    tmp_path: Path, echo_provider: None
) -> None:
    from moakit.eval.cache import ResponseCache
    from moakit.eval.calls import ModelFactory

    cache = ResponseCache(tmp_path / "cache.db")
    factory = ModelFactory(cache, {}, 4)
    spec = MemberSpec(provider="echo-test", model="solo", api_key_env=KEY_VAR)
    done = await factory.model_for(spec).complete(
        ChatRequest(messages=[{"role": "user", "content": "hi"}])
    )
    await factory.aclose()
    assert done.text == "solo says ***"
    assert KEY.encode() not in (tmp_path / "cache.db").read_bytes()


async def test_streamed_scrubbing_holds_back_only_what_could_start_a_key() -> None:
    inner = Trickle("abc sk-echo-5f3a9 then more", name="m", size=5)
    scrubbed = ScrubbingModel(inner, [KEY])
    chunks = [c.text async for c in scrubbed.stream(ChatRequest(messages=[]))]
    # The prefix of the key is held until it proves not to be one, then given back whole.
    assert "".join(chunks) == "abc sk-echo-5f3a9 then more"
    assert chunks[0] == "abc "
