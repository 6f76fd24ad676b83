"""The one retry policy. SDK clients are built with their own retries off, so a call is never
retried twice over (``openai`` would otherwise retry 2× under our 2×)."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from moakit.policies import RetryPolicy


def backoff_delay(
    policy: RetryPolicy, retry_number: int, retry_after_s: float | None
) -> float | None:
    """Seconds to wait before retry ``retry_number`` (0-based), or ``None`` to give up.

    A server's Retry-After wins when it is sane; an absurdly long one means "not soon", so the
    member fails now rather than stalling the layer.
    """
    if retry_after_s is not None and retry_after_s >= 0:
        return float(retry_after_s) if retry_after_s <= policy.max_retry_after_s else None
    base: float = min(policy.max_s, policy.initial_s * (2**retry_number))
    # Up to 25% jitter downwards, as openai-python does, so synchronized clients spread out.
    return base * (1 - 0.25 * random.random())


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds from ``retry-after-ms``, else ``retry-after`` in either of its forms: seconds, or
    an HTTP date (RFC 9110), counted from ``now`` (default: the clock). ``None`` when absent or
    unreadable."""
    raw = headers.get("retry-after-ms")
    if raw is not None:
        try:
            return float(raw) / 1000.0
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT by definition
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def parse_should_retry(headers: Mapping[str, str]) -> bool | None:
    """OpenAI's ``x-should-retry`` header: the server says whether a retry can help, which wins
    over the status code (openai-python's rule). ``None`` when absent or neither value."""
    raw = headers.get("x-should-retry")
    if raw is None:
        return None
    value = raw.strip().lower()
    return True if value == "true" else False if value == "false" else None
