"""The base of every wire schema (Chat Completions, Responses, tools)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    # strict: "5" is not an integer and "yes" is not a boolean, as on OpenAI's own API.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


__all__ = ["WireModel"]
