from __future__ import annotations

import os
import socket
from typing import Any

import pytest

from moakit.config import DEFAULT_KEY_ENV

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address: Any) -> Any:
    # Tests may talk to servers they start on loopback and nothing else (pydantic-ai's habit of
    # blocking real network calls in tests).
    host = address[0] if isinstance(address, tuple) else address
    if (
        isinstance(host, str)
        and host not in ("127.0.0.1", "::1", "localhost")
        and not host.startswith("/")
    ):
        raise RuntimeError(f"test tried to reach the network: {address!r}")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOAKIT_HOME", str(tmp_path / "moakit-home"))


# Provider and client keys a developer may have exported. Removed from the test process's
# environment, so no test and no subprocess a test starts (they inherit it) can make a paid
# call or leak one. Tests that need a key set a fake one themselves.
PROVIDER_KEY_VARS = frozenset({*DEFAULT_KEY_ENV.values(), "TOGETHER_API_KEY", "MOA_API_KEYS"})


def is_key_variable(name: str) -> bool:
    upper = name.upper()
    return upper in PROVIDER_KEY_VARS or "API_KEY" in upper


@pytest.fixture(autouse=True)
def _no_provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if is_key_variable(name):
            monkeypatch.delenv(name)
