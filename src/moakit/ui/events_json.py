"""A run's events as JSON objects for the UI's live stream: ``{"type": "<EventClass>", ...}``.

Generic over the event dataclasses (today's and the engine contract's: any field of any event is
carried), so a new event class reaches the browser without a change here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from moakit.messages import Message, ToolSpec


def jsonable(value: Any) -> Any:
    if isinstance(value, Message | ToolSpec):
        return value.to_openai()  # the shape every client (and the UI) already reads
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def event_json(event: object) -> dict[str, Any]:
    body = jsonable(event)
    out: dict[str, Any] = {"type": type(event).__name__}
    if isinstance(body, dict):
        out.update(body)
    return out
