"""What each system kind runs (``systems`` describes the kinds): the stack, or the one
member, built from the stack a system spec names, with the spec's options applied."""

from __future__ import annotations

import re

from moakit.config import MemberSpec, StackConfig, parse_config
from moakit.errors import ConfigError
from moakit.eval.redteam import red_team_options
from moakit.eval.systems import (
    RANKER_MAX_TOKENS,
    RANKER_PROMPT,
    System,
    load_stack,
    parse_system_spec,
    positive,
)


def expand(kind: str, config: StackConfig, opts: dict[str, str], text: str) -> list[System]:
    stack = config.name
    name = opts.get("name")
    aggregator = config.aggregators()[0].model_copy(update={"fallbacks": []})
    first_layer = config.layer_members(0)
    if kind == "single":
        member = aggregator
        if "member" in opts:
            found = [
                m for m in [*first_layer, aggregator] if opts["member"] in (m.model, m.display)
            ]
            if not found:
                raise ConfigError(
                    f"system {text!r}: no member {opts['member']!r} in {stack}", field="system"
                )
            member = found[0]
        return [System(name or f"single:{stack}", "single", stack, member=_as_member(member))]
    if kind == "moa":
        config, suffix, compromised = red_team_options(config, opts)
        if "chunk" in opts:
            config, suffix = _chunked(config, text, opts), suffix + f",chunk={opts['chunk']}"
        moa_name = name or f"moa:{stack}{suffix}"
        return [System(moa_name, "moa", stack, config=config, compromised=compromised)]
    if kind == "majority":
        return [
            System(
                name or f"majority:{stack}",
                "majority",
                stack,
                source=opts.get("source", f"moa:{stack}"),
            )
        ]
    if kind == "ranker":
        ranker = config.model_copy(
            update={
                "name": f"{stack}-ranker",
                "layers": config.layers[:1],
                "aggregate_prompt": RANKER_PROMPT,
                "aggregator": config.aggregator.model_copy(
                    update={"max_tokens": RANKER_MAX_TOKENS, "temperature": 0.0}
                ),
            }
        )
        return [System(name or f"ranker:{stack}", "ranker", stack, config=_revalidate(ranker))]
    if kind == "self-moa":
        n = positive(text, opts, "n") or max(2, len(first_layer))
        proposer = aggregator.model_dump(exclude={"fallbacks", "label"}, exclude_unset=True)
        proposer.update(
            n=n,
            seed=(aggregator.seed or 0) + 1000,
            temperature=config.proposer_temperature,
            temperature_step=0.1,
        )
        if first_layer and first_layer[0].max_tokens:
            proposer["max_tokens"] = first_layer[0].max_tokens
        data = config.model_dump(exclude_unset=True)
        data.update(name=f"{stack}-self-moa", layers=[{"members": [proposer]}], min_successful=1)
        return [
            System(
                name or f"self-moa:{stack}",
                "self-moa",
                stack,
                config=parse_config(data, source=text),
            )
        ]
    if kind == "sweep":
        out = []
        seen: set[tuple[str, str, str | None]] = set()
        for member in [
            aggregator,
            *first_layer,
            *(m for i in range(1, len(config.layers)) for m in config.layer_members(i)),
        ]:
            ident = (member.provider, member.model, member.base_url)
            if ident in seen:
                continue
            seen.add(ident)
            agg = config.aggregator.model_copy(
                update={
                    "provider": member.provider,
                    "model": member.model,
                    "base_url": member.base_url,
                    "api_key_env": member.api_key_env,
                    "options": member.options,
                    "label": None,
                    "fallbacks": [],
                }
            )
            swept = config.model_copy(
                update={"name": f"{stack}-agg-{_slug(member.model)}", "aggregator": agg}
            )
            out.append(
                System(
                    f"sweep:{stack}:agg={member.display}",
                    "sweep",
                    stack,
                    config=_revalidate(swept),
                    extra={"aggregator": member.display},
                )
            )
        return out
    if kind == "collab":
        if len(first_layer) < 2:
            raise ConfigError(
                f"system {text!r}: collaborativeness needs 2+ first-layer members", field="system"
            )
        out = []
        for i, member in enumerate(first_layer):
            others = [m for j, m in enumerate(first_layer) if j != i]
            data = config.model_dump(exclude_unset=True)
            own = member.model_dump(exclude={"n", "temperature_step"}, exclude_unset=True)
            data.update(
                name=f"{stack}-collab-{i + 1}",
                min_successful=1,
                layers=[{"members": [m.model_dump(exclude_unset=True) for m in others]}],
                aggregator=own,
            )
            out.append(
                System(
                    f"collab:{stack}:{member.display}",
                    "collab",
                    stack,
                    config=parse_config(data, source=text),
                    member=_as_member(member),
                    extra={"member": member.display},
                )
            )
        return out
    raise AssertionError(kind)


def _chunked(config: StackConfig, text: str, opts: dict[str, str]) -> StackConfig:
    """``chunk=N``: a staircase stack's chunk size, for the chunk-size sweep."""
    if config.strategy != "staircase":
        raise ConfigError(
            f"system {text!r}: chunk= is for staircase stacks ({config.name} is "
            f"{config.strategy!r})",
            field="system",
        )
    chunk = positive(text, opts, "chunk")
    staircase = config.staircase.model_copy(update={"chunk_tokens": chunk})
    return _revalidate(config.model_copy(update={"staircase": staircase}))


def _as_member(spec: MemberSpec) -> MemberSpec:
    return MemberSpec.model_validate(spec.model_dump(exclude={"fallbacks"}))


def _revalidate(config: StackConfig) -> StackConfig:
    # model_copy skips validation; run the config through it again (quorum, field checks).
    return parse_config(config.model_dump(exclude_unset=True), source=config.name)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def build_systems(
    specs: list[str], *, max_tokens: int | None = None, timeout_s: float | None = None
) -> list[System]:
    systems: list[System] = []
    for text in specs:
        kind, stack_ref, opts = parse_system_spec(text)
        config = load_stack(stack_ref, max_tokens=max_tokens, timeout_s=timeout_s)
        limit = positive(text, opts, "items")
        if opts.get("cache", "on") not in ("on", "off"):
            raise ConfigError(f"system {text!r}: cache must be on or off", field="system")
        if "name" in opts and not opts["name"]:
            raise ConfigError(f"system {text!r}: name= needs a name", field="system")
        for system in expand(kind, config, opts, text):
            system.max_items = limit
            system.live = opts.get("cache") == "off"
            system.spec = text
            systems.append(system)
    names = [s.name for s in systems]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(
            f"two systems share the name {dupes[0]!r}; rename one with name=", field="system"
        )
    by_name = {s.name: s for s in systems}
    for s in systems:
        if s.source is not None and s.source not in by_name:
            raise ConfigError(
                f"system {s.name!r} votes over {s.source!r}, which is not in the "
                f"run; add --system moa:{s.stack_name}",
                field="system",
            )
    return systems
