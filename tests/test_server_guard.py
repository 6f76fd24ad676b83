"""Browsers on other sites cannot drive the server (issue 27, item 2), auth is never off by
accident (item 3), and a connection that stalls in its headers is closed (item 7)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner

from moakit.cli.main import cli
from moakit.errors import ConfigError
from moakit.server import create_app
from moakit.server.app import client_keys
from moakit.server.http import uvicorn_config
from moakit.testing.models import FunctionModel
from server_harness import USER, json_stack

JSON = {"content-type": "application/json"}
BODY = {"model": "json", "messages": USER}


def app_with(agg: FunctionModel, **kw: Any) -> Any:
    return create_app({"json": json_stack(agg, FunctionModel(lambda r: "p", name="p1"))}, **kw)


async def post(app: Any, headers: dict[str, str], *, host: str = "127.0.0.1:8000") -> Any:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as c:
        return await c.post("/v1/chat/completions", json=BODY, headers=headers)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""]
)
async def test_a_post_that_is_not_json_is_415_and_runs_nothing(content_type: str) -> None:
    agg = FunctionModel(lambda r: "ran", name="agg")
    r = await post(app_with(agg, api_keys=[]), {"content-type": content_type})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    assert agg.requests == []


async def test_json_with_a_charset_is_fine() -> None:
    agg = FunctionModel(lambda r: "ran", name="agg")
    r = await post(app_with(agg, api_keys=[]), {"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "ran"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"origin": "http://evil.example"}, 403),
        ({"origin": "null"}, 403),
        ({"origin": "http://127.0.0.1:9999"}, 403),  # another local port: another origin
        ({"sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors"}, 403),
        ({"sec-fetch-site": "same-site", "sec-fetch-mode": "cors"}, 403),
        ({"origin": "http://127.0.0.1:8000"}, 200),  # the server's own page
        ({"sec-fetch-site": "same-origin"}, 200),
        ({}, 200),  # not a browser (curl, the SDKs)
    ],
)
async def test_cross_origin_requests_are_refused(headers: dict[str, str], status: int) -> None:
    agg = FunctionModel(lambda r: "ran", name="agg")
    r = await post(app_with(agg, api_keys=[]), {**JSON, **headers})
    assert r.status_code == status, r.text
    assert len(agg.requests) == (status == 200)
    if status == 403:
        assert r.json()["error"]["code"] == "cross_origin_request"


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("evil.example:8000", 400),
        ("127.0.0.1.nip.example", 400),
        ("localhost:8000", 200),
        ("127.0.0.1:8000", 200),
        ("[::1]:8000", 200),
        ("10.1.2.3", 200),  # an address cannot be rebound: only names can
        ("moa.internal:8000", 200),  # --allowed-host
    ],
)
async def test_only_allowed_host_names_are_answered(host: str, status: int) -> None:
    app = app_with(
        FunctionModel(lambda r: "ran", name="agg"),
        api_keys=[],
        allowed_hosts=["localhost", "moa.internal"],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as c:
        r = await c.get("/v1/models")
    assert r.status_code == status, r.text
    if status == 400:
        assert r.json()["error"]["code"] == "invalid_host"


async def test_an_allowed_cors_origin_gets_cors_headers_and_a_preflight() -> None:
    origin = "https://app.example"
    agg = FunctionModel(lambda r: "ran", name="agg")
    app = app_with(agg, api_keys=[], cors_origins=[origin])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
        pre = await c.options(
            "/v1/chat/completions",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type,authorization",
            },
        )
        r = await c.post("/v1/chat/completions", json=BODY, headers={"origin": origin})
        other = await c.options(
            "/v1/chat/completions",
            headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        )
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == origin
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    assert other.status_code == 403


# -- auth is never off by accident (item 3) --------------------------------------------------


@pytest.mark.parametrize("value", [",", " ", "", "key-one,,key-two", " , "])
def test_api_keys_that_hold_no_key_are_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOA_API_KEYS", value)
    with pytest.raises(ConfigError, match="MOA_API_KEYS holds an empty key"):
        create_app({})
    result = CliRunner().invoke(cli, ["serve"], standalone_mode=False)
    assert isinstance(result.exception, ConfigError)


def test_keys_are_read_and_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOA_API_KEYS", " k-one , k-two ")
    assert client_keys(None) == ["k-one", "k-two"]
    monkeypatch.delenv("MOA_API_KEYS")
    assert client_keys(None) == []


@pytest.fixture
def no_uvicorn(monkeypatch: pytest.MonkeyPatch) -> list[uvicorn.Config]:
    started: list[uvicorn.Config] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, **kw: started.append(self.config))
    return started


def test_a_non_loopback_bind_without_keys_needs_no_auth(no_uvicorn: list[uvicorn.Config]) -> None:
    args = ["serve", "--host", "0.0.0.0", "--no-trace", "--no-preload"]
    refused = CliRunner().invoke(cli, args, standalone_mode=False)
    assert isinstance(refused.exception, ConfigError)
    assert "without API keys" in str(refused.exception) and "--no-auth" in str(refused.exception)
    assert no_uvicorn == []
    opened = CliRunner().invoke(cli, [*args, "--no-auth"], standalone_mode=False)
    assert opened.exception is None, opened.output
    local = CliRunner().invoke(cli, ["serve", "--no-trace", "--port", "8123"])
    assert local.exit_code == 0
    assert "web UI at http://127.0.0.1:8123/ui" in local.output
    assert [c.host for c in no_uvicorn] == ["0.0.0.0", "127.0.0.1"]


def test_a_non_loopback_bind_with_keys_starts(
    no_uvicorn: list[uvicorn.Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOA_API_KEYS", "a-real-key")
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--no-trace"])
    assert result.exit_code == 0, result.output
    assert len(no_uvicorn) == 1


# -- a connection that stalls in its headers is closed (item 7) ------------------------------


@contextlib.contextmanager
def uvicorn_on_loopback(app: Any, header_timeout_s: float) -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn_config(app, header_timeout_s=header_timeout_s, log_level="warning")
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


def closed_after(conn: socket.socket, limit_s: float) -> tuple[float, bytes]:
    """Seconds until the server closed ``conn`` (or ``limit_s`` if it never did), and what it
    sent."""
    conn.settimeout(limit_s)
    started = time.monotonic()
    received = b""
    with contextlib.suppress(TimeoutError):
        while chunk := conn.recv(4096):
            received += chunk
        return time.monotonic() - started, received
    return limit_s, received


def test_a_connection_stalling_in_its_headers_is_closed(tmp_path: Path) -> None:
    app = create_app({}, api_keys=[])
    with uvicorn_on_loopback(app, header_timeout_s=0.5) as port:
        half = socket.create_connection(("127.0.0.1", port))
        half.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        silent = socket.create_connection(("127.0.0.1", port))  # never sends a byte
        trickle = socket.create_connection(("127.0.0.1", port))
        started = time.monotonic()
        with contextlib.suppress(OSError):  # the server hangs up mid-trickle
            for byte in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1":
                trickle.sendall(bytes([byte]))  # a byte every 0.1 s buys no extra time
                time.sleep(0.1)
        trickled = time.monotonic() - started
        waited, sent = closed_after(half, 5)
        assert waited < 2 and b"408 Request Timeout" in sent
        assert closed_after(silent, 5)[0] < 2
        assert trickled < 2 or closed_after(trickle, 5)[0] < 0.1
        # A request that completes its headers in time is answered as usual, body and all.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            assert http.get("/health").status_code == 200
            time.sleep(0.7)  # longer than the header timeout, inside uvicorn's keep-alive
            assert http.get("/health").status_code == 200
