"""Stacks sent with a request (``moa`` in the body): a strict schema of their own, translated
into a ``StackConfig`` on the server side.

A request is untrusted. Its stack can only *name* what the operator declared in the server
config (an endpoint and one of that endpoint's models, or an embedded model by its packaged
name); it can never carry a URL, a key variable, a file path, a provider or provider
``options`` (the schema forbids those fields, so they get a 400 naming them), and its size is
capped by the server's settings.

A request stack may switch on the defenses (``references``: fencing, cluster-and-filter, member
trust; ``strategy = "vote"``) and pick the staircase strategy, within the same caps: the
cluster filter embeds with the offline TF-IDF embedder only (an embeddings endpoint is a URL
and a key, the operator's to declare), a vote's samples count as members of a layer, and a
staircase chunk is at least ``MIN_CHUNK_TOKENS`` (every step is one more aggregator call).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from moakit.config import StackConfig, format_validation_error
from moakit.policies import StrictModel
from moakit.server.errors import ApiError, bad_request
from moakit.server.settings import ServerSettings
from moakit.server.text import Text

STACK_PARAM = "moa"
MIN_CHUNK_TOKENS = 16


class RequestMember(StrictModel):
    endpoint: Text | None = Field(default=None, max_length=100)
    model: Text = Field(min_length=1, max_length=200)
    label: Text | None = Field(default=None, max_length=100)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    seed: int | None = None
    stop: list[Text] | None = Field(default=None, max_length=4)
    system: Text | None = Field(default=None, max_length=20_000)
    retries: int | None = Field(default=None, ge=0, le=10)
    n: int = Field(default=1, ge=1, le=64)
    temperature_step: float = Field(default=0.0, ge=-1, le=1)
    trust: Literal["trusted", "untrusted"] = "trusted"


class RequestAggregator(RequestMember):
    fallbacks: list[RequestMember] = Field(default_factory=list, max_length=8)


class RequestLayer(StrictModel):
    members: list[RequestMember] = Field(min_length=1)
    min_successful: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _accept_bare_list(cls, data: Any) -> Any:
        return {"members": data} if isinstance(data, list) else data


class RequestStraggler(StrictModel):
    grace_s: float | None = Field(default=None, ge=0, le=600)
    grace_factor: float | None = Field(default=None, ge=0, le=100)


class RequestCluster(StrictModel):
    min_references: int = Field(default=3, ge=3, le=64)
    min_majority: float = Field(default=0.6, gt=0.5, le=1.0)
    max_centroid_similarity: float = Field(default=0.9, ge=0.0, le=1.0)


class RequestTrust(StrictModel):
    mode: Literal["label", "drop"] = "label"
    quorum: int = Field(default=2, ge=1, le=64)


class RequestReferences(StrictModel):
    transforms: list[Literal["cluster", "trust"]] = Field(default_factory=list, max_length=4)
    formatter: Literal["paper", "fenced"] = "fenced"
    cluster: RequestCluster | None = None
    trust: RequestTrust | None = None


class RequestVote(StrictModel):
    samples: int = Field(default=5, ge=1, le=32)
    subset_size: int | None = Field(default=None, ge=1, le=64)
    seed: int = 0
    extractor: Literal["gsm8k"] = "gsm8k"


class RequestStaircase(StrictModel):
    chunk_tokens: int = Field(default=32, ge=MIN_CHUNK_TOKENS, le=4096)
    schedule: Literal["lockstep", "greedy"] = "lockstep"


class RequestStack(StrictModel):
    name: Text = Field(default="request", max_length=100)
    layers: list[RequestLayer] = Field(min_length=1)
    aggregator: RequestAggregator
    proposer_temperature: float | None = Field(default=None, ge=0, le=2)
    aggregator_temperature: float | None = Field(default=None, ge=0, le=2)
    min_successful: int | None = Field(default=None, ge=1)
    deadline_s: float | None = Field(default=None, gt=0)
    straggler: RequestStraggler | None = None
    aggregate_prompt: Text | None = Field(default=None, max_length=20_000)
    references: RequestReferences | None = None
    strategy: Literal["layered", "staircase", "vote"] = "layered"
    vote: RequestVote | None = None
    staircase: RequestStaircase | None = None


def _where(*parts: str | int) -> str:
    return ".".join(str(p) for p in (STACK_PARAM, *parts))


def _member(
    member: RequestMember, settings: ServerSettings, path: tuple[str | int, ...]
) -> dict[str, Any]:
    caps = settings.request_stacks
    spec: dict[str, Any] = member.model_dump(exclude_none=True, exclude={"endpoint", "fallbacks"})
    if member.endpoint is None:
        if member.model not in caps.embedded_models:
            allowed = ", ".join(caps.embedded_models) or "none"
            raise bad_request(
                f"{member.model!r} is not an embedded model this server offers to request "
                f"stacks (allowed: {allowed}); remote models go through a declared `endpoint`",
                _where(*path, "model"),
                "model_not_allowed",
            )
        spec["provider"] = "local"
    else:
        endpoint = settings.endpoints.get(member.endpoint)
        if endpoint is None:
            known = ", ".join(sorted(settings.endpoints)) or "none"
            raise bad_request(
                f"unknown endpoint {member.endpoint!r} (declared: {known})",
                _where(*path, "endpoint"),
                "endpoint_not_found",
            )
        if member.model not in endpoint.models:
            raise bad_request(
                f"model {member.model!r} is not allowed on endpoint {member.endpoint!r} "
                f"(allowed: {', '.join(endpoint.models)})",
                _where(*path, "model"),
                "model_not_allowed",
            )
        spec.update(
            provider=endpoint.provider,
            base_url=endpoint.base_url,
            api_key_env=endpoint.api_key_env,
            options=dict(endpoint.options),
            timeout_s=endpoint.timeout_s,
        )
        spec = {k: v for k, v in spec.items() if v is not None}
    if member.max_tokens is not None and member.max_tokens > caps.max_tokens:
        raise _over(path, "max_tokens", caps.max_tokens)
    if member.retries is not None and member.retries > caps.max_retries:
        raise _over(path, "retries", caps.max_retries)
    spec.setdefault("max_tokens", caps.max_tokens)
    spec.setdefault("retries", caps.max_retries)
    return spec


def _over(path: tuple[str | int, ...], name: str, cap: float) -> ApiError:
    return bad_request(
        f"{name} exceeds this server's cap for request stacks ({cap:g})",
        _where(*path, name),
        "limit_exceeded",
    )


def _too_many(param: str, what: str, cap: int) -> ApiError:
    return bad_request(
        f"too many {what}: this server allows at most {cap} in a request stack",
        param,
        "limit_exceeded",
    )


def translate(stack: RequestStack, settings: ServerSettings) -> StackConfig:
    """The ``StackConfig`` the engine runs for a validated request stack. Raises ``ApiError``
    (400, ``param`` naming the field) for anything the operator did not allow."""
    caps = settings.request_stacks
    if len(stack.layers) > caps.max_layers:
        raise _too_many(_where("layers"), "layers", caps.max_layers)
    layers: list[dict[str, Any]] = []
    for li, layer in enumerate(stack.layers):
        size = sum(m.n for m in layer.members)
        if size > caps.max_members_per_layer:
            raise _too_many(
                _where("layers", li, "members"), "members in a layer", caps.max_members_per_layer
            )
        members = [
            _member(m, settings, ("layers", li, "members", mi))
            for mi, m in enumerate(layer.members)
        ]
        layers.append({"members": members, "min_successful": layer.min_successful})
    agg = stack.aggregator
    if len(agg.fallbacks) > caps.max_fallbacks:
        raise _too_many(_where("aggregator", "fallbacks"), "fallbacks", caps.max_fallbacks)
    aggregator = _member(agg, settings, ("aggregator",))
    aggregator["fallbacks"] = [
        _member(f, settings, ("aggregator", "fallbacks", i)) for i, f in enumerate(agg.fallbacks)
    ]
    if stack.deadline_s is not None and stack.deadline_s > caps.deadline_s:
        raise _over((), "deadline_s", caps.deadline_s)
    # Each vote sample is one more final-aggregator call: capped like a layer's members.
    if stack.vote is not None and stack.vote.samples > caps.max_members_per_layer:
        raise _over(("vote",), "samples", caps.max_members_per_layer)
    data: dict[str, Any] = {
        **stack.model_dump(exclude_none=True, exclude={"layers", "aggregator", "deadline_s"}),
        "layers": [{k: v for k, v in layer.items() if v is not None} for layer in layers],
        "aggregator": aggregator,
        "deadline_s": stack.deadline_s or caps.deadline_s,
    }
    try:
        return StackConfig.model_validate(data)
    except ValidationError as exc:
        err = format_validation_error(exc, prefix=f"{STACK_PARAM}.")
        raise bad_request(str(err), err.field or STACK_PARAM, "invalid_stack") from None
