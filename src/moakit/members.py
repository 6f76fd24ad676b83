"""A stack's members: what one model call in a stack is (``MemberSpec``), the defaults a stack
sets for all of them (``MemberDefaults``), a member as the engine calls it (``ResolvedMember``),
and who it talks to (``EndpointId``, the key variable it needs)."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from moakit.policies import StrictModel


class MemberDefaults(StrictModel):
    """Fields a stack may set once for all of its members. A member's own value wins."""

    provider: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    timeout_s: float | None = Field(default=None, gt=0)
    retries: int | None = Field(default=None, ge=0, le=10)
    max_concurrency: int | None = Field(default=None, ge=1)
    # Set once for a stack whose members share an endpoint's prices.
    price_in_per_mtok: float | None = Field(default=None, ge=0)
    price_out_per_mtok: float | None = Field(default=None, ge=0)
    options: dict[str, Any] = Field(default_factory=dict)

    @model_serializer(mode="wrap")
    def _unset_prices_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Prices were added to [defaults] after stacks had been hashed (eval records, traces
        # key a stack by its dump): unset, they stay out of the dump, so those hashes hold.
        data: dict[str, Any] = handler(self)
        for name in ("price_in_per_mtok", "price_out_per_mtok"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


class MemberSpec(StrictModel):
    """One model call in a layer (or ``n`` samples of one model, the single-proposer variant)."""

    # Unset means "the stack's default provider, else openai" (decided in ``resolve_member``).
    provider: str | None = None
    model: str = Field(min_length=1)
    label: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    seed: int | None = None
    stop: list[str] | None = None
    system: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    retries: int | None = Field(default=None, ge=0, le=10)
    # At most this many calls at once to this member's endpoint (provider, base_url, key
    # variable), shared by every member of the stack on that endpoint; the smallest limit set on
    # an endpoint wins. Unset: no limit. A call waiting for a slot counts against its timeout.
    max_concurrency: int | None = Field(default=None, ge=1)
    # n > 1 samples the same model n times with seeds seed, seed+1, ... and temperatures
    # temperature, temperature + temperature_step, ... (MoA's single-proposer variant).
    n: int = Field(default=1, ge=1, le=64)
    temperature_step: float = Field(default=0.0, ge=-1, le=1)
    # US dollars per million tokens, for cost accounting. Unset means "unknown", not free.
    price_in_per_mtok: float | None = Field(default=None, ge=0)
    price_out_per_mtok: float | None = Field(default=None, ge=0)
    # Provider-specific knobs (e.g. ``n_ctx`` for the embedded model). Passed through untouched.
    options: dict[str, Any] = Field(default_factory=dict)
    # Member trust (``moakit.defenses``): with the ``trust`` reference transform on, an
    # untrusted member's references are labelled to the next layer, or dropped when enough
    # trusted members answered. Nothing changes while that transform is off.
    trust: Literal["trusted", "untrusted"] = "trusted"
    # Built-in tools the member may use inside its own answer (``engine.member_tools``):
    # "python" runs a program it writes in ``moakit.sandbox`` and shows it the output. Left out
    # of the dump (and of config hashes) when empty, so existing stacks keep their identity.
    tools: list[Literal["python"]] = Field(default_factory=list, exclude_if=lambda v: not v)
    # "required": the member's first request must call one of its built-in tools (a member
    # whose strategy is to write and run a program does run it; a small model told to in
    # words often writes the program and imagines its output). Later rounds may answer.
    tool_choice: Literal["auto", "required"] = Field(
        default="auto", exclude_if=lambda v: v == "auto"
    )

    @model_validator(mode="after")
    def _tool_choice_needs_tools(self) -> MemberSpec:
        if self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice = 'required' needs built-in tools (tools = ['python'])")
        return self

    @property
    def display(self) -> str:
        return self.label or self.model

    @property
    def endpoint(self) -> EndpointId:
        """Who this member talks to: calls with one endpoint share one provider (client,
        connection pool) and one concurrency limiter, and an eval cache keys answers by it."""
        return EndpointId(self.provider or DEFAULT_PROVIDER, self.base_url, key_env_for(self))


class EndpointId(NamedTuple):
    """The identity of an endpoint: provider, base URL and the variable holding its key (the
    variable's name, never its value)."""

    provider: str
    base_url: str | None
    api_key_env: str | None


class ResolvedMember(MemberSpec):
    """A member exactly as the engine calls it: stack defaults applied, ``n`` expanded, the key
    variable decided. Every field that has a default is set; ``None`` left in ``max_tokens``,
    ``seed``, ``stop``, ``system``, ``base_url`` or ``api_key_env`` means "none" (the backend's
    own default, no key), never "not decided yet"."""

    provider: str
    label: str
    temperature: float = Field(ge=0, le=2)
    timeout_s: float = Field(gt=0)
    retries: int = Field(ge=0, le=10)


# The one place that says which environment variable holds a provider's key by default. The
# OpenAI-compatible provider only needs one for OpenAI itself: a self-hosted endpoint (vLLM,
# Ollama, llama.cpp server) given by ``base_url`` usually wants none.
DEFAULT_KEY_ENV: dict[str, str] = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
DEFAULT_PROVIDER = "openai"
# The embedded models moakit ships weights for (``moakit.models.local.KNOWN_MODELS``).
EMBEDDED_MODELS = ("qwen2.5-coder-0.5b", "smollm2-135m", "gemma3-270m")


def looks_embedded(model: str) -> bool:
    return model in EMBEDDED_MODELS or model.lower().endswith(".gguf")


def key_env_for(spec: MemberSpec, provider: str | None = None) -> str | None:
    """The variable holding ``spec``'s API key, or ``None`` when it needs no key. ``provider``
    (an adapter naming itself) wins over ``spec.provider``."""
    if spec.api_key_env:
        return spec.api_key_env
    provider = provider or spec.provider or DEFAULT_PROVIDER
    if provider == "openai" and spec.base_url is not None:
        return None
    return DEFAULT_KEY_ENV.get(provider)


__all__ = [
    "DEFAULT_KEY_ENV",
    "DEFAULT_PROVIDER",
    "EMBEDDED_MODELS",
    "EndpointId",
    "MemberDefaults",
    "MemberSpec",
    "ResolvedMember",
    "key_env_for",
    "looks_embedded",
]
