"""What a model can do, in one object (pydantic-ai's ``ModelProfile``).

The engine and the server ask a member's profile before sending a request its backend cannot
honour (a clear error up front instead of a silently ignored parameter), never the adapter's
class. An adapter builds its profile once, from its options; a wrapper (cache, limiter, fault
injector) reports the profile of the model it wraps, so nothing is patched per instance.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ModelProfile:
    # ``ChatRequest.prefill``: continue a partial assistant answer instead of answering it.
    prefill: bool = False
    # ``ChatRequest.response_format``: JSON mode / a JSON schema the backend constrains to.
    response_format: bool = False
    # ``presence_penalty`` / ``frequency_penalty``.
    penalties: bool = True
    # Function tools: the model may answer with tool calls.
    tools: bool = False
    # Image parts in user messages.
    images: bool = False

    def but(self, **changes: bool) -> ModelProfile:
        """This profile with ``changes`` (an adapter's option turning a capability on)."""
        return replace(self, **changes)


__all__ = ["ModelProfile"]
