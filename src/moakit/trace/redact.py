"""Keeping secrets out of the trace store: every text that is written goes through ``Redactor``.

Model outputs and upstream errors are untrusted: a model may echo a key it saw, an error may
quote a header. So the store does not trust that adapters scrubbed: it replaces the value of
every key-like environment variable, and ``authorization``/``api_key`` patterns
(``moakit.secrets.scrub``), in every string it stores. The logic lives in ``moakit.secrets``,
shared with the scrubbing of answers and errors.
"""

from __future__ import annotations

from typing import Any

from moakit.secrets import Redactor, secret_values


def config_env_names(config: dict[str, Any] | None) -> set[str]:
    """Every ``api_key_env`` named anywhere in a stack config (members, defaults, fallbacks)."""
    names: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            env = value.get("api_key_env")
            if isinstance(env, str):
                names.add(env)
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(config)
    return names


__all__ = ["Redactor", "config_env_names", "secret_values"]
