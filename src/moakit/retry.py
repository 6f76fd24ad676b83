"""The one retry policy. SDK clients are built with their own retries off, so a call is never
retried twice over (``openai`` would otherwise retry 2× under our 2×)."""

from __future__ import annotations

import random
from collections.abc import Mapping

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


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (numeric form), else ``None``."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            return float(raw) / scale
        except ValueError:
            continue
    return None
