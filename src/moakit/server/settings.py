"""The operator's server configuration: named endpoints request stacks may use, and caps.

Loaded from a TOML file (``moa serve --server-config server.toml``)::

    [request_stacks]
    enabled = true                      # or `moa serve --allow-request-stacks`
    embedded_models = ["smollm2-135m"]  # embedded models a request stack may name
    max_layers = 3
    max_members_per_layer = 6
    max_fallbacks = 2
    max_tokens = 1024                   # per call; also caps the request's own max_tokens
    deadline_s = 120                    # every request stack runs under at most this deadline

    [endpoints.together]
    provider = "openai"
    base_url = "https://api.together.xyz/v1"
    api_key_env = "TOGETHER_API_KEY"
    models = ["Qwen/Qwen2-72B-Instruct", "meta-llama/Llama-3.3-70B-Instruct-Turbo"]

Everything that carries the operator's authority (URLs, key variables, provider options) lives
here and only here: a request stack can only *name* an endpoint and one of its models.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from moakit.config import EMBEDDED_MODELS, format_validation_error
from moakit.errors import ConfigError
from moakit.policies import StrictModel

# The embedded models a request stack may name by default: packaged weights only, never a path.
DEFAULT_EMBEDDED = EMBEDDED_MODELS


class EndpointSettings(StrictModel):
    provider: Literal["openai", "anthropic"] = "openai"
    base_url: str | None = None
    api_key_env: str | None = None
    models: list[str] = Field(min_length=1)
    # Provider knobs (e.g. stream_usage); the operator's to set, never a request's.
    options: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(default=120.0, gt=0)


class RequestStackCaps(StrictModel):
    enabled: bool = False
    embedded_models: list[str] = Field(default_factory=lambda: list(DEFAULT_EMBEDDED))
    max_layers: int = Field(default=3, ge=1, le=16)
    max_members_per_layer: int = Field(default=6, ge=1, le=64)
    max_fallbacks: int = Field(default=2, ge=0, le=8)
    max_tokens: int = Field(default=1024, ge=1)
    deadline_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)


class ServerSettings(StrictModel):
    request_stacks: RequestStackCaps = Field(default_factory=RequestStackCaps)
    endpoints: dict[str, EndpointSettings] = Field(default_factory=dict)

    def with_request_stacks(self, enabled: bool) -> ServerSettings:
        caps = self.request_stacks.model_copy(update={"enabled": enabled})
        return self.model_copy(update={"request_stacks": caps})


def parse_server_settings(data: dict[str, Any], *, source: str = "server config") -> ServerSettings:
    try:
        return ServerSettings.model_validate(data)
    except ValidationError as exc:
        err = format_validation_error(exc)
        raise ConfigError(
            f"{source}: {err}".replace("invalid stack config", "invalid"), field=err.field
        ) from None


def read_server_settings(path: str | Path) -> ServerSettings:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read server config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_server_settings(data, source=str(path))
