"""The systems an evaluation compares, each turned into something the engine runs.

A system spec on the command line is ``KIND:STACK[,key=value...]`` where STACK is a preset name
or a stack config file:

- ``single:S`` — S's aggregator model alone, with its settings (``member=MODEL`` picks another
  member of S): the model you use today.
- ``moa:S`` — the stack itself. Every layer's outputs are kept for the layer curve.
- ``ranker:S`` — LLM-Ranker: S's first-layer proposals, then S's aggregator *picks* one with
  ``RANKER_PROMPT`` instead of synthesizing; the picked proposal is the answer.
- ``self-moa:S[,n=N]`` — Self-MoA: S's aggregator model sampled N times (seeds and temperatures
  varied), then aggregated by the same model.
- ``majority:S`` — majority vote over the first-layer proposals of ``moa:S`` (closed-form tasks;
  no extra calls: it reuses that system's records).
- ``sweep:S`` — one system per distinct model of S, each as the final aggregator over S's
  proposer layers (identical proposer requests, so the response cache serves every aggregator
  the very same proposals: the paper's Table 4).
- ``collab:S`` — collaborativeness: for each first-layer member, the member alone vs. the same
  member given the *other* members' answers as references.

Red team (``moakit.defenses``): ``moa:S,adversary=deceptive@1:2`` makes member 2 (0-based) of
layer 1 adversarial (``deceptive``/``injector``/``compromised``; ``+ignore``: it ignores its
references), and
``defense=fence+cluster`` switches defenses on (``fence``, ``cluster``, ``trust``, ``vote``;
``trust`` marks the adversary's slot untrusted, and ``untrusted=LAYER:SLOT`` any other slot,
so ``moa:S,untrusted=1:2,defense=trust`` is what distrusting an honest member costs). Compare
``moa:S``, ``moa:S,adversary=...`` and ``moa:S,adversary=...,defense=...`` in one run to see
the gap each defense closes.

``name=`` renames a system; ``items=N`` runs it on the run's first N items only (an expensive
analysis such as ``collab`` on a subset; paired comparisons use the items both systems have);
``moa:S,chunk=N`` sets a staircase stack's chunk size (the chunk-size sweep);
``cache=off`` answers every call live (still storing the answers), e.g. to redo items whose
timing-dependent policy (a straggler cut) saw cache hits.
An unknown option is an error, not ignored. Each system has a hash of everything that decides
its answers; results of a changed system are kept apart, never mixed in.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from moakit.config import MemberSpec, StackConfig, load_preset, parse_config, read_config_file
from moakit.errors import ConfigError
from moakit.policies import AdaptiveConfig

Kind = Literal["single", "moa", "ranker", "self-moa", "majority", "sweep", "collab"]
KINDS: tuple[str, ...] = ("single", "moa", "ranker", "self-moa", "majority", "sweep", "collab")
# The options each kind understands, beyond the universal ``name`` and ``items``.
OPTIONS: dict[str, frozenset[str]] = {
    "single": frozenset({"member"}),
    "moa": frozenset({"adversary", "defense", "untrusted", "chunk"}),
    "ranker": frozenset(),
    "self-moa": frozenset({"n"}),
    "majority": frozenset({"source"}),
    "sweep": frozenset(),
    "collab": frozenset(),
}
DEFAULT_KINDS = ("single", "moa", "ranker", "self-moa", "majority")

# Written for moakit after the MoA paper's LLM-Ranker baseline (Wang et al. 2024, §3.3: an LLM
# selects one of the proposals instead of synthesizing). The engine appends "\n1. ..." per
# proposal, exactly as it does for the Aggregate-and-Synthesize prompt.
RANKER_PROMPT = (
    "You have been provided with a set of responses from various models to the latest user "
    "query. Your task is to select the single best response: the one that is most helpful, "
    "accurate and relevant, and that a careful human expert would prefer. Do not write a new "
    "response and do not explain your choice. Reply with only the number of the best response."
    "\n\nResponses from models:"
)
RANKER_MAX_TOKENS = 8


@dataclass
class System:
    name: str
    kind: Kind
    stack_name: str
    # What the engine runs: a stack, or one member alone (single; collab's "alone" half).
    config: StackConfig | None = None
    member: MemberSpec | None = None
    source: str | None = None  # majority: the system whose first-layer proposals it votes over
    extra: dict[str, Any] = field(default_factory=dict)
    # Run on the first N items only. Not in the hash: it decides which items, not any answer.
    max_items: int | None = None
    # cache=off: its calls are never served from the response cache (still stored). Not in the
    # hash either: the same requests, answered live.
    live: bool = False
    # adversary=compromised@L:S: member label -> the answer the payload appended to its output
    # pushes (moakit.eval.redteam.InjectingModel).
    compromised: dict[str, str] = field(default_factory=dict)
    spec: str = ""  # the command-line text it was built from (sweep/collab share one)

    @property
    def hash(self) -> str:
        payload: dict[str, Any] = {
            "kind": self.kind,
            "config": self.config.model_dump(mode="json") if self.config else None,
            "member": self.member.model_dump(mode="json") if self.member else None,
            "source": self.source,
            "ranker_prompt": RANKER_PROMPT if self.kind == "ranker" else None,
        }
        if self.compromised:  # only when set, so every earlier system keeps its hash
            payload["compromised"] = self.compromised
        blob = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def derived(self) -> bool:
        return self.kind == "majority"

    def info(self) -> SystemInfo:
        return SystemInfo(
            name=self.name,
            kind=self.kind,
            hash=self.hash,
            spec=self.spec,
            source=self.source,
            max_items=self.max_items,
            adaptive=self.config is not None
            and (self.config.adaptive != AdaptiveConfig() or self.config.budget.limited),
        )


class SystemInfo(BaseModel):
    """A system as a results directory knows it (its manifest, its summary rows): enough to
    report on its records without rebuilding it from stack files that may have changed."""

    name: str
    kind: str
    hash: str
    spec: str = ""
    source: str | None = None
    max_items: int | None = None
    # Early exit, cascades or a budget: it spends per query only what it decides to.
    adaptive: bool = False


def load_stack(
    ref: str, *, max_tokens: int | None = None, timeout_s: float | None = None
) -> StackConfig:
    """A preset or config file; ``max_tokens`` replaces every member's and the aggregator's
    budget (e.g. code needs more room than the embedded preset's chat-sized answers), and
    ``timeout_s`` every call's timeout (a loaded CPU needs longer than a preset expects)."""
    path = Path(ref)
    config = (
        read_config_file(path)
        if path.suffix in (".toml", ".yaml", ".yml") or path.exists()
        else load_preset(ref)
    )
    if max_tokens is None and timeout_s is None:
        return config
    data = config.model_dump(exclude_unset=True)
    members = [m for layer in data["layers"] for m in layer["members"]]
    members += [data["aggregator"], *data["aggregator"].get("fallbacks", [])]
    for field_name, value in (("max_tokens", max_tokens), ("timeout_s", timeout_s)):
        if value is None:
            continue
        data.setdefault("defaults", {})[field_name] = value
        for member in members:
            member.pop(field_name, None)
    if timeout_s is not None:
        data["default_timeout_s"] = timeout_s
    return parse_config(data, source=f"{ref} (overridden budgets)")


def parse_system_spec(text: str) -> tuple[str, str, dict[str, str]]:
    kind, sep, rest = text.partition(":")
    if not sep or kind not in KINDS:
        raise ConfigError(
            f"system {text!r}: expected KIND:STACK with KIND one of {', '.join(KINDS)}",
            field="system",
        )
    stack, *options = rest.split(",")
    opts: dict[str, str] = {}
    for option in options:
        key, eq, value = option.partition("=")
        if not eq or not key.strip():
            raise ConfigError(
                f"system {text!r}: option {option!r} is not key=value", field="system"
            )
        opts[key.strip()] = value.strip()
    if not stack:
        raise ConfigError(f"system {text!r}: no stack named", field="system")
    universal = {"name", "items", "cache"}
    unknown = sorted(set(opts) - OPTIONS[kind] - universal)
    if unknown:
        allowed = ", ".join(sorted(OPTIONS[kind] | universal))
        raise ConfigError(
            f"system {text!r}: unknown option {unknown[0]!r} for {kind} (known: {allowed})",
            field="system",
        )
    return kind, stack, opts


def positive(text: str, opts: dict[str, str], key: str) -> int | None:
    if key not in opts:
        return None
    value = opts[key]
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(
            f"system {text!r}: {key} must be a positive integer (got {value!r})", field="system"
        )
    return int(value)


def parse_ranker_choice(text: str, count: int) -> int | None:
    """The 0-based index of the proposal the ranker picked, or None."""
    for match in re.findall(r"\d+", text):
        choice = int(match)
        if 1 <= choice <= count:
            return choice - 1
    return None
