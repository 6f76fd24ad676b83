"""Keeping API keys out of everything moakit writes or returns (errors, logs, traces, answers).

Two tools, one notion of "a secret":

- ``secret_values``: the values of the key-like environment variables (``*_KEY``, ``*_TOKEN``,
  ``MOA_API_KEYS`` split on commas...) plus every variable a stack names as a key variable;
- ``scrub``: replaces those values, and ``authorization``/``api_key=`` patterns, in a text (for
  error messages and stored records); ``Redactor`` applies it to JSON-like values, memoized.

Model answers are scrubbed of the values only (``moakit.models.wrappers.ScrubbingModel``): the
patterns would mangle ordinary code such as ``api_key = os.environ[...]``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

_AUTH = re.compile(r"(?i)(authorization|x-api-key|api[_-]?key)([\"':=\s]+)(bearer\s+)?[^\s\"',}]+")


def scrub(text: str, *secrets: str) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _AUTH.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}***", text)


# Variables whose values are secrets by their name (OPENAI_API_KEY, MOA_API_KEYS, HF_TOKEN...).
_SECRET_NAME = re.compile(r"(?i)(KEY|KEYS|TOKEN|TOKENS|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$")
# Shorter values are too likely to occur in ordinary text ("1", "true") to be replaced.
_MIN_SECRET_LEN = 6


def secret_values(
    extra_env_names: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> list[str]:
    """Values of the key-like variables in ``environ`` plus those named in ``extra_env_names``
    (a stack's ``api_key_env`` may be called anything). Comma lists (MOA_API_KEYS) are split.
    Longest first, so a key that contains another is replaced whole."""
    env = os.environ if environ is None else environ
    names = {n for n in env if _SECRET_NAME.search(n)} | {n for n in extra_env_names if n}
    values: set[str] = set()
    for name in names:
        raw = env.get(name) or ""
        for part in [raw, *raw.split(",")]:
            part = part.strip()
            if len(part) >= _MIN_SECRET_LEN:
                values.add(part)
    return sorted(values, key=len, reverse=True)


class Redactor:
    """Scrubs strings, and the strings inside JSON-like values, of a fixed set of secrets.

    Results are memoized: one query's records repeat the same texts many times (labels, the
    question in every call's input, each answer again as a reference of the next layer)."""

    MEMO_LIMIT = 4096

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = tuple(secrets)
        self._memo: dict[str, str] = {}

    def _scrub(self, text: str) -> str:
        done = self._memo.get(text)
        if done is None:
            done = scrub(text, *self.secrets)
            if len(self._memo) >= self.MEMO_LIMIT:
                self._memo.clear()
            self._memo[text] = done
        return done

    @classmethod
    def from_environment(cls, extra_env_names: Iterable[str] = ()) -> Redactor:
        return cls(secret_values(extra_env_names))

    def text(self, value: str | None) -> str | None:
        if value is None:
            return None
        return self._scrub(value)

    def messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``value`` for a message list, with a fast path for messages whose values are all
        strings (the writer scrubs every call's input; the generic walk adds up)."""
        out: list[dict[str, Any]] = []
        for m in messages:
            if all(isinstance(v, str) for v in m.values()):
                out.append({str(k): self._scrub(v) for k, v in m.items()})
            else:
                out.append(self.value(m))
        return out

    def value(self, value: Any) -> Any:
        """A copy of a JSON-like value with every string (keys included) scrubbed."""
        if isinstance(value, str):
            return self._scrub(value)
        if isinstance(value, Mapping):
            return {self.value(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value
