"""Typed errors, split the pydantic-ai way.

* ``ConfigError`` (and ``MissingKeyError``): the caller misused moakit. Fix the input; retrying is
  pointless. The message always names the offending field.
* ``ModelCallError``: one call to one model failed. The engine records it, may retry it, and
  degrades around it. It never carries a secret: adapters scrub messages at the boundary.
* ``QueryFailed`` and subclasses: the whole query could not be answered. They carry the partial
  ``Result`` so nothing that did succeed is lost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from moakit.messages import Usage
    from moakit.result import Result


class MoaError(Exception):
    """Base class of every error moakit raises on purpose."""


class ConfigError(MoaError, ValueError):
    """A stack, member or request is invalid. ``field`` is a dotted path such as
    ``layers.0.members.1.temperature``."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class MissingKeyError(ConfigError):
    """An API key is required but its environment variable is unset. Names the variable, never
    a value."""

    def __init__(self, env_var: str, *, who: str) -> None:
        super().__init__(
            f"{who} needs an API key: set the environment variable {env_var} "
            f"(or point api_key_env at another variable)",
            field="api_key_env",
        )
        self.env_var = env_var


CallErrorKind = Literal[
    "timeout",
    "http",
    "connection",
    "malformed",
    "empty",
    "cancelled",
    "deadline",
    "stack",
    "other",
]

# Statuses worth another attempt (openai-python's policy): timeouts, conflicts, rate limits and
# server errors. Every other 4xx means the request itself is wrong and will fail again.
RETRYABLE_STATUSES = frozenset({408, 409, 429})


class ModelCallError(MoaError):
    """One call to one model failed. ``usage``: tokens the failed call consumed, where the
    backend reported them (a stream that died after its usage chunk, a nested stack's layers);
    the engine counts them in the member's usage and the run's totals."""

    def __init__(
        self,
        message: str,
        *,
        kind: CallErrorKind = "other",
        status: int | None = None,
        retry_after_s: float | None = None,
        usage: Usage | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: CallErrorKind = kind
        self.status = status
        self.retry_after_s = retry_after_s
        self.usage = usage
        # The server's own verdict (OpenAI's ``x-should-retry`` header), which wins over the
        # status-based rule, as in openai-python.
        self.should_retry = should_retry

    @property
    def retryable(self) -> bool:
        if self.should_retry is not None:
            return self.should_retry
        if self.kind in ("timeout", "connection", "malformed"):
            return True
        if self.kind == "http" and self.status is not None:
            return self.status in RETRYABLE_STATUSES or self.status >= 500
        return False

    def describe(self) -> str:
        status = f" {self.status}" if self.status is not None else ""
        return f"{self.kind}{status}: {self}"


class QueryFailed(MoaError):
    """The query could not be answered. ``result`` holds everything that did happen.
    ``retryable``: the cause was transient (timeouts, 5xx, rate limits), so asking again may
    work; a stack used as a model passes it on in its ``StackFailed``."""

    def __init__(
        self, message: str, *, result: Result | None = None, retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.result = result
        self.retryable = retryable


class LayerFailed(QueryFailed):
    """Fewer than ``min_successful`` members of a layer answered. ``failures`` lists each failed
    member's label and reason."""

    def __init__(
        self,
        layer: int,
        failures: list[tuple[str, str]],
        *,
        answered: int,
        needed: int,
        result: Result | None = None,
        retryable: bool = False,
    ) -> None:
        listed = "; ".join(f"{label}: {reason}" for label, reason in failures)
        super().__init__(
            f"layer {layer}: {answered} of {answered + len(failures)} members answered, "
            f"{needed} needed ({listed})",
            result=result,
            retryable=retryable,
        )
        self.layer = layer
        self.failures = failures


class AggregatorFailed(QueryFailed):
    """The final aggregator and every fallback failed."""


class DeadlineExceeded(QueryFailed):
    """The per-query deadline passed before an answer could be produced."""

    def __init__(self, message: str, *, result: Result | None = None) -> None:
        # Like a timeout: another try, with a fresh deadline, may well answer.
        super().__init__(message, result=result, retryable=True)


class StackFailed(ModelCallError):
    """A ``Stack`` used as a model (a member of another stack, a served model) could not answer.

    It is the ``ModelCallError`` its caller expects: ``retryable`` where the inner failure was,
    ``usage`` the tokens the inner run spent, ``result`` the inner partial result."""

    def __init__(self, failure: QueryFailed, *, usage: Usage | None = None) -> None:
        super().__init__(str(failure), kind="stack", usage=usage)
        self.result = failure.result
        self._retryable = failure.retryable

    @property
    def retryable(self) -> bool:
        return self._retryable
