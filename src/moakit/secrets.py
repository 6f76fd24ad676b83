"""Keeping API keys out of everything moakit writes (errors, logs, traces)."""

from __future__ import annotations

import re

_AUTH = re.compile(r"(?i)(authorization|x-api-key|api[_-]?key)([\"':=\s]+)(bearer\s+)?[^\s\"',}]+")


def scrub(text: str, *secrets: str) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _AUTH.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}***", text)
