"""What keeps web pages on other sites from driving a server on this machine.

A server on ``127.0.0.1`` with no API keys is still reachable from every page the user's browser
opens. Three doors, each closed here before any route runs:

- **Simple cross-site requests.** A page may POST a ``text/plain`` (or form) body anywhere
  without asking first. Every POST must say ``Content-Type: application/json``, which a browser
  only sends cross-origin after a CORS preflight that this server refuses (415 otherwise).
- **Cross-origin requests.** A request whose ``Origin`` is neither the server's own (the origin
  the ``Host`` header names) nor one the operator allowed (``--cors-origin``) is refused (403);
  so is one a browser marks ``Sec-Fetch-Site: cross-site``/``same-site`` that is not a
  navigation (a second local port is the same site, but another origin).
- **DNS rebinding.** A page on ``evil.example`` whose name is re-pointed at 127.0.0.1 becomes
  same-origin with the server; only its ``Host`` header gives it away. A ``Host`` that names a
  host (not an IP address: rebinding needs a name) outside the allow-list is refused (400). The
  allow-list is the localhost names, the bind address, this machine's own names when bound to
  every interface, and ``--allowed-host`` (``*`` turns the check off).

Errors are OpenAI-shaped JSON, like every other refusal of the server.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from moakit.server.errors import ApiError

LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def default_allowed_hosts(bind_host: str) -> list[str]:
    """The names a ``Host`` header may carry for a server bound to ``bind_host``."""
    names = [*LOCAL_NAMES, bind_host.lower()]
    if bind_host in WILDCARD_BINDS:
        # Reachable on every interface: this machine's own names are fine (IP literals always are).
        names += [socket.gethostname().lower(), socket.getfqdn().lower()]
    return [n for n in dict.fromkeys(names) if n]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def host_name(host_header: str) -> str:
    """``example.com:8000`` -> ``example.com``; ``[::1]:8000`` -> ``[::1]``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class RequestGuard:
    """Pure ASGI middleware (it must not buffer streamed responses) applying the rules above."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Iterable[str] | None = None,
        allowed_origins: Iterable[str] = (),
    ) -> None:
        self.app = app
        hosts = list(allowed_hosts) if allowed_hosts is not None else list(LOCAL_NAMES)
        self.any_host = "*" in hosts
        self.hosts = frozenset(h.lower().rstrip(".") for h in hosts)
        origins = [o.rstrip("/") for o in allowed_origins]
        self.any_origin = "*" in origins
        self.origins = frozenset(o.lower() for o in origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                await refusal.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> ApiError | None:
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if not self._host_ok(host):
            return ApiError(
                400,
                f"the Host header {host[:100]!r} is not one this server answers to (the operator "
                "adds names with `moa serve --allowed-host NAME`)",
                param="host",
                code="invalid_host",
            )
        origin = headers.get("origin")
        if origin is not None:
            if not self._origin_ok(origin, host):
                return _cross_origin(f"requests from the origin {origin[:100]!r} are not allowed")
        elif headers.get("sec-fetch-site") in ("cross-site", "same-site") and (
            headers.get("sec-fetch-mode") != "navigate"
        ):
            return _cross_origin("requests from other sites are not allowed")
        if scope["method"] not in _SAFE_METHODS:
            media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media != "application/json":
                # An allowed origin's page may read why (CORS headers are added further in).
                cors = {"access-control-allow-origin": origin, "vary": "Origin"} if origin else {}
                return ApiError(
                    415,
                    "request bodies must be JSON, sent with 'Content-Type: application/json'",
                    param="content-type",
                    code="unsupported_media_type",
                    headers=cors,
                )
        return None

    def _host_ok(self, host: str) -> bool:
        if self.any_host:
            return True
        name = host_name(host).rstrip(".")
        return bool(name) and (_is_ip(name) or name in self.hosts)

    def _origin_ok(self, origin: str, host: str) -> bool:
        origin = origin.strip().rstrip("/").lower()
        if self.any_origin or origin in self.origins:
            return True
        parts = urlsplit(origin)
        # The server's own origin: the page was loaded from the host this request is sent to.
        return parts.scheme in ("http", "https") and parts.netloc == host.strip().lower()


def _cross_origin(message: str) -> ApiError:
    return ApiError(
        403,
        f"{message}: this server accepts requests from its own pages and from the origins the "
        "operator allows (`moa serve --cors-origin ORIGIN`)",
        type="permission_error",
        param="origin",
        code="cross_origin_request",
    )
