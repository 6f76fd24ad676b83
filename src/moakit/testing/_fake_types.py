"""Behaviour dataclasses, latency sampling, counters and the TOML config loader of the fake backend.

Kept apart from the server so that benchmarks and the CLI can build behaviours without importing
uvicorn.
"""

from __future__ import annotations

import hashlib
import math
import random
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from moakit.testing._fake_tools import ToolCaller, ToolScript, rounds_from_config

FaultKind = Literal[
    "http_500",
    "http_503",
    "http_429",
    # 401 whose message echoes the Bearer token it got, as real providers do ("Incorrect API
    # key provided: sk-..."): what a key-leak test needs to be able to fail.
    "http_401_echo_key",
    "hang",
    "reset_mid_stream",
    "malformed_json",
    "empty",
    "truncated",
    # An answer with tool calls whose arguments the tool's schema refuses (still a JSON
    # object, one property of the wrong type): what the stream rule's tests need.
    "bad_tool_arguments",
]
Distribution = Literal["fixed", "lognormal"]

FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
DISTRIBUTIONS: tuple[str, ...] = get_args(Distribution)

# `received` keeps the tail only: benchmarks send thousands of requests and nobody reads them all.
RECEIVED_LIMIT = 10_000


@dataclass
class Latency:
    ttft_s: float = 0.0
    per_token_s: float = 0.0
    # Reading the prompt: this much more before the first token per prompt word (no prefix
    # cache: every request reads its whole prompt), so longer prompts answer later.
    prompt_per_token_s: float = 0.0
    distribution: Distribution = "fixed"
    sigma: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.ttft_s < 0 or self.per_token_s < 0 or self.prompt_per_token_s < 0:
            raise ValueError("latency: ttft_s, per_token_s and prompt_per_token_s must be >= 0")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"latency: distribution must be one of {DISTRIBUTIONS}, got {self.distribution!r}"
            )
        if self.sigma < 0:
            raise ValueError("latency: sigma must be >= 0")


@dataclass
class Fault:
    kind: FaultKind
    times: int | None = None
    retry_after_s: float | None = 1.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault: kind must be one of {FAULT_KINDS}, got {self.kind!r}")
        if self.times is not None and self.times < 0:
            raise ValueError("fault: times must be >= 0 or None")
        if self.retry_after_s is not None and self.retry_after_s < 0:
            raise ValueError("fault: retry_after_s must be >= 0 or None")


@dataclass
class Behavior:
    latency: Latency = field(default_factory=Latency)
    fault: Fault | None = None
    tokens: int = 12
    # Answers with tool calls when a request offers tools (see ``ToolScript``); ``None``: text.
    tool_calls: ToolCaller | None = None

    def __post_init__(self) -> None:
        if self.tokens < 0:
            raise ValueError("behavior: tokens must be >= 0")


class LatencySampler:
    """Draws the time to first token of successive requests to one model.

    The model name is mixed into the seed: with a shared seed, three lognormal proposers would
    otherwise draw identical delays on every call, which hides exactly the tail effects that
    benchmarks are meant to expose. Same (seed, model) -> same sequence, in any process.
    """

    __slots__ = ("_latency", "_rng")

    def __init__(self, latency: Latency, model: str) -> None:
        self._latency = latency
        material = f"{latency.seed}\x00{model}".encode()
        self._rng = random.Random(int.from_bytes(hashlib.sha256(material).digest()[:8], "big"))

    def ttft(self) -> float:
        lat = self._latency
        if lat.distribution == "fixed" or lat.ttft_s <= 0:
            return lat.ttft_s
        return self._rng.lognormvariate(math.log(lat.ttft_s), lat.sigma)


def sample_ttfts(latency: Latency, model: str, n: int) -> list[float]:
    """The first `n` TTFT draws a fresh backend will make for `model` (for tests and reports)."""
    sampler = LatencySampler(latency, model)
    return [sampler.ttft() for _ in range(n)]


@dataclass
class BackendStats:
    """Counters of one backend.

    Every request ends in exactly one of completed / cancelled / aborted, so
    ``requests == completed + cancelled + aborted + in_flight`` holds between requests.
    ``completed`` includes injected HTTP errors and malformed bodies: the server did send them
    in full. ``aborted`` counts connections the backend reset on purpose (reset_mid_stream).
    """

    requests: int = 0
    requests_by_model: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0  # the most requests in flight at once (concurrency limits' tests)
    completed: int = 0
    cancelled: int = 0
    aborted: int = 0
    faults_by_kind: dict[str, int] = field(default_factory=dict)
    received: list[dict[str, Any]] = field(default_factory=list)

    def _record_body(self, body: dict[str, Any]) -> None:
        received = self.received
        received.append(body)
        if len(received) > RECEIVED_LIMIT:
            del received[0]

    def _reset(self) -> None:
        # in_flight describes live requests, not history: zeroing it would drive it negative
        # when those requests finish.
        self.requests = self.completed = self.cancelled = self.aborted = 0
        self.max_in_flight = self.in_flight
        self.requests_by_model.clear()
        self.faults_by_kind.clear()
        self.received.clear()


# --- TOML config -------------------------------------------------------------------------------

_KEYS = frozenset(
    {
        "tokens",
        "ttft_s",
        "per_token_s",
        "prompt_per_token_s",
        "distribution",
        "sigma",
        "seed",
        "fault",
        "fault_times",
        "retry_after_s",
        "tool_rounds",
        "tool_final",
    }
)


def behavior_from_mapping(data: Mapping[str, Any], base: Behavior | None = None) -> Behavior:
    """Build a Behavior from flat config keys, starting from `base` (keys absent keep its values).

    ``fault = "none"`` clears a fault inherited from `base`. ``tool_rounds`` (a list of rounds,
    each a list of ``{name, arguments}``) and ``tool_final`` script a tool loop (``ToolScript``).
    """
    unknown = set(data) - _KEYS
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    base = base or Behavior()
    lat = base.latency
    latency = Latency(
        ttft_s=float(data.get("ttft_s", lat.ttft_s)),
        per_token_s=float(data.get("per_token_s", lat.per_token_s)),
        prompt_per_token_s=float(data.get("prompt_per_token_s", lat.prompt_per_token_s)),
        distribution=data.get("distribution", lat.distribution),
        sigma=float(data.get("sigma", lat.sigma)),
        seed=int(data.get("seed", lat.seed)),
    )
    fault = base.fault
    if "fault" in data:
        kind = data["fault"]
        fault = None if kind in (None, "none", "") else Fault(kind=kind)
    if fault is not None:
        updates: dict[str, Any] = {}
        if "fault_times" in data:
            updates["times"] = None if data["fault_times"] is None else int(data["fault_times"])
        if "retry_after_s" in data:
            ra = data["retry_after_s"]
            updates["retry_after_s"] = None if ra is None else float(ra)
        fault = replace(fault, **updates)
    tool_calls = base.tool_calls
    if "tool_rounds" in data or "tool_final" in data:
        inherited = tool_calls if isinstance(tool_calls, ToolScript) else ToolScript(rounds=[])
        final = data.get("tool_final", inherited.final)
        if final is not None and not isinstance(final, str):
            raise ValueError("tool_final must be a string")
        rounds = inherited.rounds
        if "tool_rounds" in data:
            rounds = rounds_from_config(data["tool_rounds"])
        tool_calls = ToolScript(rounds, final=final)
    return Behavior(
        latency=latency,
        fault=fault,
        tokens=int(data.get("tokens", base.tokens)),
        tool_calls=tool_calls,
    )


def load_behaviors(path: str | Path) -> tuple[Behavior, dict[str, Behavior]]:
    """Read a fake-backend TOML file: ``[default]`` plus ``[models."name"]`` tables.

    Model tables inherit every key from ``[default]`` and override what they set, so a file can
    state a common latency once.
    """
    with open(path, "rb") as fh:
        doc = tomllib.load(fh)
    extra = set(doc) - {"default", "models"}
    if extra:
        raise ValueError(f"{path}: unknown table(s) {sorted(extra)}; expected [default], [models]")
    try:
        default = behavior_from_mapping(doc.get("default", {}))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: [default]: {exc}") from exc
    models: dict[str, Behavior] = {}
    for name, table in doc.get("models", {}).items():
        if not isinstance(table, dict):
            raise ValueError(f"{path}: models.{name} must be a table")
        try:
            models[name] = behavior_from_mapping(table, default)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: [models.{name!r}]: {exc}") from exc
    return default, models
