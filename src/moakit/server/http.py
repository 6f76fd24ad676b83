"""How ``moa serve`` runs the app under uvicorn: a connection must finish its request headers in
time.

uvicorn closes an idle keep-alive connection, but a connection that sends half a request line and
then trickles (or nothing) stays open for good: enough of them exhaust the process's sockets
(slowloris). ``HeaderTimeoutProtocol`` is uvicorn's h11 protocol with one more timer: from the
moment a connection waits for a request (opened, or its last response finished) until that
request's headers are complete. A connection that runs past it is closed with a 408.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0


class HeaderTimeoutConfig(uvicorn.Config):
    """uvicorn's config plus the header timeout (a module-level class: with several worker
    processes uvicorn hands the config to each of them)."""

    def __init__(self, app: Any, *, header_timeout_s: float = HEADER_TIMEOUT_S, **kw: Any) -> None:
        super().__init__(app, http=HeaderTimeoutProtocol, **kw)
        self.header_timeout_s = header_timeout_s


class HeaderTimeoutProtocol(H11Protocol):
    _header_timer: asyncio.TimerHandle | None = None

    @property
    def header_timeout_s(self) -> float:
        return float(getattr(self.config, "header_timeout_s", HEADER_TIMEOUT_S))

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _watch_headers(self) -> None:
        # h11 keeps the client IDLE until a request's headers are complete. The timer starts
        # once per wait and is not restarted by more bytes: trickling does not buy time.
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if not waiting:
            self._stop_header_timer()
        elif self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        if self.conn.our_state is h11.IDLE:
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


_TIMEOUT_BODY = (
    b'{"error":{"message":"request headers took too long","type":"invalid_request_error",'
    b'"param":null,"code":"timeout"}}'
)
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    + f"content-length: {len(_TIMEOUT_BODY)}\r\n\r\n".encode()
    + _TIMEOUT_BODY
)


def uvicorn_config(
    app: Any, *, header_timeout_s: float = HEADER_TIMEOUT_S, **options: Any
) -> uvicorn.Config:
    """uvicorn's config for ``app`` with the header timeout (h11: the protocol it extends)."""
    return HeaderTimeoutConfig(app, header_timeout_s=header_timeout_s, **options)
