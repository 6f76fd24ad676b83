"""Errors on the wire: always OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.

One place maps everything that can go wrong (bad input, a failed query, a bug) to a status,
a body and the headers clients act on (``x-should-retry``, ``Retry-After``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse

from moakit.errors import AggregatorFailed, DeadlineExceeded, LayerFailed, QueryFailed

# The official SDKs retry 408/409/429/5xx twice by default unless told not to. A whole stack
# that already retried each call, or a deadline that passed, is not worth running three times.
NO_RETRY = {"x-should-retry": "false"}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def internal_error(request_id: str) -> ApiError:
    return ApiError(
        500,
        f"internal server error (request id {request_id}); the server log has the details",
        type="server_error",
        code="internal_error",
    )


def query_error(err: QueryFailed) -> ApiError:
    if isinstance(err, DeadlineExceeded):
        return ApiError(
            504, str(err), type="upstream_error", code="deadline_exceeded", headers=NO_RETRY
        )
    if isinstance(err, LayerFailed):
        return ApiError(502, str(err), type="upstream_error", code="layer_failed", headers=NO_RETRY)
    if isinstance(err, AggregatorFailed):
        return ApiError(
            502, str(err), type="upstream_error", code="aggregator_failed", headers=NO_RETRY
        )
    return ApiError(502, str(err), type="upstream_error", code="query_failed", headers=NO_RETRY)


# Fields a client may send that MoA stacks cannot honour: named in the error, never ignored.
UNSUPPORTED = {
    "logprobs": "'logprobs' is not supported: a MoA answer is a synthesis, not one model's tokens",
    "top_logprobs": "'top_logprobs' is not supported by MoA stacks",
    "logit_bias": "'logit_bias' is not supported by MoA stacks",
    "n": "only n=1 is supported: a MoA stack writes one answer",
    "functions": "'functions' is the deprecated functions API: use 'tools'",
    "function_call": "'function_call' is the deprecated functions API: use 'tool_choice'",
    "prediction": "'prediction' is not supported by MoA stacks",
    "audio": "'audio' output is not supported by MoA stacks",
    "modalities": "only text output is supported",
    "web_search_options": "'web_search_options' is not supported by MoA stacks",
    "reasoning_effort": "'reasoning_effort' is not supported by MoA stacks",
}
# Stack fields that carry the operator's authority; a request stack may not set them.
_OPERATOR_ONLY = {"base_url", "api_key_env", "provider", "options", "defaults"}


def _dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc)


def from_validation(
    exc: ValidationError, *, unsupported: Mapping[str, str] = UNSUPPORTED
) -> ApiError:
    """The first validation error as a 400 whose ``param`` is the dotted path of the field."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    param = _dotted(loc) or None
    kind = err["type"]
    field = str(loc[-1]) if loc else ""
    if len(loc) == 1 and field in unsupported:
        return bad_request(unsupported[field], param, "unsupported_parameter")
    if kind == "extra_forbidden":
        if loc and loc[0] == "moa":
            why = (
                "it carries the operator's authority"
                if field in _OPERATOR_ONLY
                else "request stacks accept only their documented fields"
            )
            return bad_request(
                f"{field!r} is not allowed in a request stack ({why}): a member names a "
                "declared `endpoint` and one of its `models`, or an embedded model",
                param,
                "forbidden_field",
            )
        return bad_request(
            f"unrecognized request argument supplied: {param}", param, "unknown_parameter"
        )
    if kind == "missing":
        return bad_request(
            f"missing required parameter: {param}", param, "missing_required_parameter"
        )
    where = f" ({param})" if param else ""
    return bad_request(f"{err['msg']}{where}", param, _CODES.get(kind, "invalid_value"))


# pydantic error types (ours from wire.py, and pydantic's own) -> OpenAI-style error codes.
_CODES = {
    "legacy_functions": "unsupported_parameter",
    "unsupported_tool": "unsupported_parameter",
    "unknown_field": "unknown_parameter",
    "unsupported_content": "unsupported_parameter",
    "invalid_unicode": "invalid_unicode",
    "string_unicode": "invalid_unicode",
}
