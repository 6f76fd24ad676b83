"""Request-supplied stacks (`moa` in the body): off by default; when on, limited to what the
operator declared. The exfiltration tests open a listening socket that must receive nothing."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from moakit.server import create_app
from moakit.server.settings import ServerSettings, parse_server_settings
from moakit.testing.fake_backend import Behavior, FakeBackend, Latency
from server_harness import USER, client, fake_stack, serve

CANARY = "sk-canary-4f1d0c9e"


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    with FakeBackend(default=Behavior(latency=Latency(per_token_s=0.001))) as fb:
        yield fb


@pytest.fixture
def trap() -> Iterator[socket.socket]:
    """A loopback socket an attacker would point the server at."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(1.0)
    try:
        yield sock
    finally:
        sock.close()


def assert_untouched(trap: socket.socket) -> None:
    try:
        conn, _ = trap.accept()
    except TimeoutError:
        return
    with conn:
        conn.settimeout(1.0)
        with contextlib.suppress(OSError):
            data = conn.recv(65536)
            leaked = CANARY.encode() in data
            pytest.fail(f"the server connected to the trap (canary sent: {leaked}): {data[:200]!r}")
    pytest.fail("the server connected to the trap")


def settings(backend_url: str, **caps: Any) -> ServerSettings:
    return parse_server_settings(
        {
            "request_stacks": {"enabled": True, **caps},
            "endpoints": {
                "fake": {"base_url": backend_url, "models": ["p1", "p2", "agg"]},
                "keyed": {
                    "base_url": backend_url,
                    "api_key_env": "MOA_TEST_UNSET_KEY",
                    "models": ["p1"],
                },
            },
        }
    )


def post(base: str, moa: Any, timeout: float = 30, **body: Any) -> httpx.Response:
    payload = {"model": "mine", "messages": USER, "moa": moa, **body}
    return httpx.post(f"{base}/chat/completions", json=payload, timeout=timeout)


def ok_member(model: str = "p1") -> dict[str, Any]:
    return {"endpoint": "fake", "model": model}


def test_request_stacks_are_off_by_default(
    trap: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    url = f"http://127.0.0.1:{trap.getsockname()[1]}/v1"
    moa = {"layers": [[{"model": "m", "base_url": url}]], "aggregator": {"model": "m"}}
    with serve(create_app({}, api_keys=[])) as base:
        r = post(base, moa)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "moa" and err["code"] == "request_stacks_disabled"
    assert "--allow-request-stacks" in err["message"]
    assert_untouched(trap)


# Every way a stack could carry the operator's authority: a URL, a key variable, a provider.
EXFILTRATION = [
    (  # the attack as reported: every member pointed at the attacker, with the operator's key
        {
            "layers": [[{"model": "x", "base_url": "TRAP", "api_key_env": "OPENAI_API_KEY"}]],
            "aggregator": {"model": "x", "base_url": "TRAP", "api_key_env": "OPENAI_API_KEY"},
        },
        "moa.layers.0.members.0.base_url",
    ),
    (
        {"layers": [[{"endpoint": "fake", "model": "p1"}, {"model": "x", "base_url": "TRAP"}]]},
        "moa.layers.0.members.1.base_url",
    ),
    (
        {
            "layers": [[{"endpoint": "fake", "model": "p1", "api_key_env": "OPENAI_API_KEY"}]],
        },
        "moa.layers.0.members.0.api_key_env",
    ),
    (
        {
            "layers": [[ok_member()]],
            "aggregator": {"model": "agg", "base_url": "TRAP", "api_key_env": "OPENAI_API_KEY"},
        },
        "moa.aggregator.base_url",
    ),
    (
        {
            "defaults": {"base_url": "TRAP", "api_key_env": "OPENAI_API_KEY"},
            "layers": [[ok_member()]],
        },
        "moa.defaults",
    ),
    (
        {
            "layers": [[ok_member()]],
            "aggregator": {
                "endpoint": "fake",
                "model": "agg",
                "fallbacks": [{"model": "x", "base_url": "TRAP"}],
            },
        },
        "moa.aggregator.fallbacks.0.base_url",
    ),
    ({"layers": [[{"model": "p1", "provider": "openai"}]]}, "moa.layers.0.members.0.provider"),
]


@pytest.mark.parametrize(("moa", "param"), EXFILTRATION)
def test_exfiltration_attempt_is_400_and_nothing_connects(
    backend: FakeBackend,
    trap: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
    moa: dict[str, Any],
    param: str,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    url = f"http://127.0.0.1:{trap.getsockname()[1]}/v1"
    moa = eval_trap(moa, url)
    moa.setdefault("aggregator", {"endpoint": "fake", "model": "agg"})
    app = create_app({}, api_keys=[], settings=settings(backend.base_url))
    with serve(app) as base:
        try:
            r: httpx.Response | None = post(base, moa, timeout=3)
        except httpx.ReadTimeout:  # a server that dialled the trap waits on it
            r = None
        assert_untouched(trap)
    assert r is not None and r.status_code == 400, r and r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert err["code"] == "forbidden_field"
    assert CANARY not in r.text
    assert backend.stats.requests == 0  # rejected before any model was called


def eval_trap(value: Any, url: str) -> Any:
    if value == "TRAP":
        return url
    if isinstance(value, dict):
        return {k: eval_trap(v, url) for k, v in value.items()}
    if isinstance(value, list):
        return [eval_trap(v, url) for v in value]
    return value


@pytest.mark.parametrize(
    ("member", "param", "code"),
    [
        ({"model": "/tmp/evil.gguf"}, "moa.layers.0.members.0.model", "model_not_allowed"),
        ({"model": "~/models/big.gguf"}, "moa.layers.0.members.0.model", "model_not_allowed"),
        (
            {"model": "smollm2-135m", "options": {"n_ctx": 131072}},
            "moa.layers.0.members.0.options",
            "forbidden_field",
        ),
        (
            {"endpoint": "nope", "model": "p1"},
            "moa.layers.0.members.0.endpoint",
            "endpoint_not_found",
        ),
        (
            {"endpoint": "fake", "model": "gpt-9"},
            "moa.layers.0.members.0.model",
            "model_not_allowed",
        ),
        (
            {"endpoint": "fake", "model": "p1", "price_in_per_mtok": 1},
            "moa.layers.0.members.0.price_in_per_mtok",
            "forbidden_field",
        ),
    ],
)
def test_paths_options_and_undeclared_models_are_refused(
    backend: FakeBackend, member: dict[str, Any], param: str, code: str
) -> None:
    moa = {"layers": [[member]], "aggregator": ok_member("agg")}
    app = create_app({}, api_keys=[], settings=settings(backend.base_url))
    with serve(app) as base:
        r = post(base, moa)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["code"] == code
    assert backend.stats.requests == 0


@pytest.mark.parametrize(
    ("moa", "body", "param"),
    [
        ({"layers": [[ok_member()]] * 3}, {}, "moa.layers"),
        ({"layers": [[ok_member()] * 3]}, {}, "moa.layers.0.members"),
        ({"layers": [[{**ok_member(), "n": 3}]]}, {}, "moa.layers.0.members"),
        (
            {"layers": [[{**ok_member(), "max_tokens": 65}]]},
            {},
            "moa.layers.0.members.0.max_tokens",
        ),
        ({"layers": [[ok_member()]], "deadline_s": 31}, {}, "moa.deadline_s"),
        (
            {
                "layers": [[ok_member()]],
                "aggregator": {**ok_member("agg"), "fallbacks": [ok_member()] * 2},
            },
            {},
            "moa.aggregator.fallbacks",
        ),
        ({"layers": [[ok_member()]]}, {"max_tokens": 65}, "max_tokens"),
    ],
)
def test_caps_are_enforced(
    backend: FakeBackend, moa: dict[str, Any], body: dict[str, Any], param: str
) -> None:
    moa.setdefault("aggregator", ok_member("agg"))
    caps = {
        "max_layers": 2,
        "max_members_per_layer": 2,
        "max_tokens": 64,
        "deadline_s": 30,
        "max_fallbacks": 1,
    }
    app = create_app({}, api_keys=[], settings=settings(backend.base_url, **caps))
    with serve(app) as base:
        r = post(base, moa, **body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["code"] == "limit_exceeded"
    assert backend.stats.requests == 0


def test_allowed_request_stack_runs_on_a_declared_endpoint(backend: FakeBackend) -> None:
    moa = {"layers": [[ok_member("p1"), ok_member("p2")]], "aggregator": ok_member("agg")}
    app = create_app({}, api_keys=[], settings=settings(backend.base_url, max_tokens=10))
    with serve(app) as base:
        resp = client(base).chat.completions.create(
            model="my-stack", messages=USER, extra_body={"moa": moa}
        )
    assert resp.model == "my-stack"
    assert (resp.choices[0].message.content or "").startswith("agg")
    assert sorted(backend.stats.requests_by_model) == ["agg", "p1", "p2"]
    # Members run under the server's caps: max_tokens defaults to the cap.
    assert all(b["max_tokens"] == 10 for b in backend.stats.received)


def test_missing_key_of_an_endpoint_does_not_name_the_variable(
    backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MOA_TEST_UNSET_KEY", raising=False)
    moa = {"layers": [[{"endpoint": "keyed", "model": "p1"}]], "aggregator": ok_member("agg")}
    app = create_app({}, api_keys=[], settings=settings(backend.base_url))
    with serve(app) as base:
        r = post(base, moa)
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_api_key"
    assert "MOA_TEST_UNSET_KEY" not in r.text


@pytest.mark.embedded
def test_embedded_model_by_name_in_a_request_stack() -> None:
    tiny = {"model": "smollm2-135m", "max_tokens": 6}
    moa = {"layers": [[tiny]], "aggregator": tiny}
    app = create_app({}, api_keys=[], allow_request_stacks=True)
    with serve(app) as base:
        resp = (
            client(base)
            .with_options(timeout=120)
            .chat.completions.create(model="tiny", messages=USER, extra_body={"moa": moa})
        )
    assert (resp.choices[0].message.content or "").strip()


def test_ready_reveals_nothing_to_unauthenticated_callers(
    backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MOA_UNSET_READY_KEY", raising=False)
    keyed = fake_stack(
        backend.base_url,
        defaults={"base_url": backend.base_url, "api_key_env": "MOA_UNSET_READY_KEY"},
    )
    app = create_app({"fake": fake_stack(backend.base_url), "keyed": keyed}, api_keys=["k1"])
    with serve(app) as base:
        root = base.removesuffix("/v1")
        anonymous = httpx.get(f"{root}/ready")
        wrong = httpx.get(f"{root}/ready", headers={"Authorization": "Bearer nope"})
        operator = httpx.get(f"{root}/ready", headers={"Authorization": "Bearer k1"})
    for r in (anonymous, wrong):
        assert r.status_code == 200
        assert r.json() == {"status": "ready"}
        assert "MOA_UNSET_READY_KEY" not in r.text and "keyed" not in r.text
    assert operator.json()["models"]["fake"] == {"ready": True}
    assert "MOA_UNSET_READY_KEY" in operator.json()["models"]["keyed"]["reason"]


def test_moa_serve_server_config_file(tmp_path: Any, backend: FakeBackend) -> None:
    config = tmp_path / "server.toml"
    config.write_text(
        "[request_stacks]\nmax_tokens = 12\n"
        f'[endpoints.fake]\nbase_url = "{backend.base_url}"\nmodels = ["p1", "agg"]\n'
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    moa = str(Path(sys.executable).with_name("moa"))
    args = ["serve", "--port", str(port), "--no-preload", "--server-config", str(config)]
    proc = subprocess.Popen([moa, *args, "--allow-request-stacks"], stderr=subprocess.DEVNULL)
    try:
        root = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{root}/health").status_code == 200:
                    break
            assert proc.poll() is None, "moa serve exited"
            assert time.monotonic() < deadline, "moa serve did not start"
            time.sleep(0.1)
        stack = {"layers": [[ok_member("p1")]], "aggregator": ok_member("agg")}
        ok = post(f"{root}/v1", stack)
        over = post(f"{root}/v1", stack, max_tokens=13)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["message"]["content"].startswith("agg")
    assert over.status_code == 400 and over.json()["error"]["param"] == "max_tokens"


def _aggregator_systems(backend: FakeBackend) -> list[str]:
    return [
        next(m["content"] for m in body["messages"] if m["role"] == "system")
        for body in backend.stats.received
        if body["model"] == "agg"
    ]


def test_request_stack_switches_on_fencing_trust_and_the_vote(backend: FakeBackend) -> None:
    untrusted = {**ok_member("p2"), "trust": "untrusted"}
    moa = {
        "layers": [[ok_member("p1"), untrusted, ok_member("p1")]],
        "aggregator": ok_member("agg"),
        "references": {
            "formatter": "fenced",
            "transforms": ["trust"],
            "trust": {"mode": "label"},
        },
        "strategy": "vote",
        "vote": {"samples": 3, "subset_size": 2},
    }
    app = create_app({}, api_keys=[], settings=settings(backend.base_url))
    with serve(app) as base:
        r = post(base, moa)
    assert r.status_code == 200, r.text
    systems = _aggregator_systems(backend)
    assert len(systems) == 3  # the vote: one aggregator call per subset of two references
    blocks = [b for s in systems for b in re.split(r"<<<REF-\w+ END>>>", s) if "BEGIN" in b]
    assert len(blocks) == 6  # every reference fenced
    from_p2 = [b for b in blocks if "p2 saw" in b]
    assert from_p2 and all("untrusted" in b for b in from_p2)  # labelled, not dropped
    assert not any("untrusted" in b for b in blocks if "p2 saw" not in b)


@pytest.mark.parametrize(
    ("moa", "param", "code"),
    [
        # An embeddings endpoint is a URL and a key: only the operator declares those.
        (
            {"references": {"transforms": ["cluster"], "cluster": {"embedder": "endpoint"}}},
            "moa.references.cluster.embedder",
            "invalid_request_error",
        ),
        ({"references": {"transforms": ["exec"]}}, "moa.references.transforms.0", None),
        ({"references": {"formatter": "raw-html"}}, "moa.references.formatter", None),
        (
            {"strategy": "staircase", "staircase": {"chunk_tokens": 1}},
            "moa.staircase.chunk_tokens",
            None,
        ),
        ({"strategy": "vote", "vote": {"samples": 7}}, "moa.vote.samples", "limit_exceeded"),
        ({"strategy": "vote", "vote": {"extractor": "os.system"}}, "moa.vote.extractor", None),
    ],
)
def test_request_stack_defense_fields_are_validated(
    backend: FakeBackend, moa: dict[str, Any], param: str, code: str | None
) -> None:
    body = {"layers": [[ok_member("p1")]], "aggregator": ok_member("agg"), **moa}
    app = create_app({}, api_keys=[], settings=settings(backend.base_url))
    with serve(app) as base:
        r = post(base, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param
    if code is not None and code != "invalid_request_error":
        assert err["code"] == code
    assert backend.stats.requests == 0


def test_staircase_request_stack_needs_an_aggregator_that_can_continue(
    backend: FakeBackend,
) -> None:
    # The fake endpoint is declared without continue_final_message: a clear 400, no fallback.
    body = {"layers": [[ok_member("p1")]], "aggregator": ok_member("agg"), "strategy": "staircase"}
    app = create_app({}, api_keys=[], settings=settings(backend.base_url))
    with serve(app) as base:
        r = post(base, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_stack"
    assert "continue" in r.json()["error"]["message"]
    assert backend.stats.requests == 0
