"""The server's state: which stacks it serves (built once, reused), its settings and limits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from moakit.config import StackConfig, load_preset, preset_names
from moakit.engine import Stack
from moakit.errors import ConfigError, MissingKeyError
from moakit.server.errors import ApiError
from moakit.server.limits import QueryLimiter
from moakit.server.settings import ServerSettings
from moakit.trace import TraceRecorder


@dataclass
class ServerState:
    # None: every preset, resolved on first use. A ready Stack may be given (tests, embedders).
    configs: Mapping[str, StackConfig | Stack] | None
    api_keys: list[bytes]
    limiter: QueryLimiter
    max_body_bytes: int
    preload: bool
    settings: ServerSettings = field(default_factory=ServerSettings)
    stacks: dict[str, Stack] = field(default_factory=dict)
    recorder: TraceRecorder | None = None  # records every query (the trace store, OTel)

    @property
    def in_flight(self) -> int:
        return self.limiter.in_flight

    def names(self) -> list[str]:
        return list(self.configs) if self.configs is not None else preset_names()

    def known(self, name: str) -> bool:
        return name in self.names()

    def not_found(self, name: str) -> ApiError:
        return ApiError(
            404,
            f"The model {name!r} does not exist (known: {', '.join(self.names())})",
            param="model",
            code="model_not_found",
        )

    def stack(self, name: str) -> Stack:
        if name in self.stacks:
            return self.stacks[name]
        if not self.known(name):
            raise self.not_found(name)
        given = self.configs[name] if self.configs is not None else load_preset(name)
        stack = given if isinstance(given, Stack) else build_stack(given)
        self.stacks[name] = stack
        return stack


def build_stack(config: StackConfig, *, reveal_key_names: bool = True) -> Stack:
    """A runnable stack, or a 400 saying why not. ``reveal_key_names=False`` for stacks built
    from a request: the operator's variable names are not the client's business."""
    try:
        return Stack(config)
    except MissingKeyError as err:
        detail = (
            f"environment variable {err.env_var} is not set"
            if reveal_key_names
            else "an endpoint it uses has no API key configured on this server"
        )
        raise ApiError(
            400,
            f"stack {config.name!r} cannot run: {detail}",
            param="model",
            code="missing_api_key",
        ) from None
    except ConfigError as err:
        raise ApiError(400, str(err), param=err.field, code="invalid_stack") from None
