"""What stands between a connection and a query: the API key, the body size and shape, and the
number of queries in flight."""

from __future__ import annotations

import hmac
import math
import statistics
import time
from collections import deque
from itertools import count
from typing import Any

from starlette.requests import Request

from moakit.jsonlimits import MAX_DEPTH, TooDeep, loads_bounded
from moakit.server.errors import ApiError, bad_request


def check_auth(api_keys: list[bytes], request: Request) -> None:
    if not api_keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = token.strip().encode()
    ok = False
    for key in api_keys:  # every key compared, in constant time, whatever matches
        ok |= hmac.compare_digest(given, key)
    if scheme.lower() != "bearer" or not ok:
        raise ApiError(
            401,
            "invalid or missing API key (send 'Authorization: Bearer <key>')",
            type="authentication_error",
            code="invalid_api_key",
        )


def is_authorized(api_keys: list[bytes], request: Request) -> bool:
    try:
        check_auth(api_keys, request)
    except ApiError:
        return False
    return True


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON. Too large: 413. Not JSON, or nested too deep for the parser: 400."""
    declared = request.headers.get("content-length")
    too_large = ApiError(413, f"request body exceeds {limit} bytes", code="request_too_large")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    try:
        return loads_bounded(b"".join(chunks))
    except TooDeep:
        # Bounded here, once: everything downstream (schema checks, re-encoding for a
        # backend) may recurse over the body.
        raise bad_request(
            f"request body is nested more than {MAX_DEPTH} levels deep", None, "invalid_json"
        ) from None
    except ValueError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", None, "invalid_json") from None


class QueryLimiter:
    """At most ``max_concurrent`` queries in flight. A refused client is told when a slot is
    likely to free: the soonest an in-flight query should end, judged by how long recent
    queries took (not a constant that would have every client hammer a busy server)."""

    def __init__(self, max_concurrent: int, *, history: int = 32) -> None:
        self.max_concurrent = max_concurrent
        self._started: dict[int, float] = {}
        self._recent: deque[float] = deque(maxlen=history)
        self._ids = count()

    @property
    def in_flight(self) -> int:
        return len(self._started)

    def acquire(self) -> int:
        """A slot token, or a 429 ``ApiError`` whose Retry-After reflects the queue."""
        if self.in_flight >= self.max_concurrent:
            wait = self.retry_after_s()
            raise ApiError(
                429,
                f"too many queries in flight (max {self.max_concurrent}); retry in {wait} s",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(wait)},
            )
        token = next(self._ids)
        self._started[token] = time.monotonic()
        return token

    def release(self, token: int, *, completed: bool) -> None:
        started = self._started.pop(token, None)
        if started is not None and completed:
            self._recent.append(time.monotonic() - started)

    def retry_after_s(self, now: float | None = None) -> int:
        if not self._recent or not self._started:
            return 1
        now = time.monotonic() if now is None else now
        typical = statistics.median(self._recent)
        soonest = min(max(0.0, typical - (now - t)) for t in self._started.values())
        return max(1, math.ceil(soonest))
