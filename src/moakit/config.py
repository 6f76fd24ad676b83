"""Stack configuration: pydantic models, defaults, and loading from presets or files.

A stack is data. Presets are TOML files shipped in ``moakit/presets``; users add their own in
``$MOAKIT_HOME/presets`` (default ``~/.config/moakit/presets``) or pass a path. Every validation
error becomes a ``ConfigError`` naming the dotted field path and the offending value.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from moakit.errors import ConfigError
from moakit.hashing import content_hash

# Re-exported: a member is part of a stack's configuration, and code names it from here.
from moakit.members import DEFAULT_KEY_ENV as DEFAULT_KEY_ENV
from moakit.members import DEFAULT_PROVIDER as DEFAULT_PROVIDER
from moakit.members import EMBEDDED_MODELS as EMBEDDED_MODELS
from moakit.members import EndpointId as EndpointId
from moakit.members import MemberDefaults as MemberDefaults
from moakit.members import MemberSpec as MemberSpec
from moakit.members import ResolvedMember as ResolvedMember
from moakit.members import key_env_for as key_env_for
from moakit.members import looks_embedded as looks_embedded
from moakit.policies import (
    AdaptiveConfig,
    AdviceConfig,
    BudgetConfig,
    ReferencesConfig,
    RetryPolicy,
    RouterConfig,
    StaircaseConfig,
    StragglerPolicy,
    StrictModel,
    VoteConfig,
)
from moakit.prompts import AGGREGATE_AND_SYNTHESIZE

PRESET_SUFFIXES = (".toml", ".yaml", ".yml")


class AggregatorSpec(MemberSpec):
    """The final model. ``fallbacks`` take over, in order, if it fails."""

    fallbacks: list[MemberSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _single_sample(self) -> AggregatorSpec:
        if self.n != 1:
            raise ValueError(f"the aggregator writes one answer; n must be 1 (got {self.n})")
        return self


class LayerSpec(StrictModel):
    members: list[MemberSpec] = Field(min_length=1)
    min_successful: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _accept_bare_list(cls, data: Any) -> Any:
        # ``layers = [[{...}, {...}], ...]`` is the natural way to write a stack in TOML/YAML.
        if isinstance(data, list):
            return {"members": data}
        return data


class StackConfig(StrictModel):
    name: str = "custom"
    description: str = ""
    defaults: MemberDefaults = Field(default_factory=MemberDefaults)
    layers: list[LayerSpec] = Field(min_length=1)
    aggregator: AggregatorSpec
    # The paper's temperature split: diverse proposals, a steadier synthesis.
    proposer_temperature: float = Field(default=0.7, ge=0, le=2)
    aggregator_temperature: float = Field(default=0.4, ge=0, le=2)
    min_successful: int = Field(default=1, ge=1)
    deadline_s: float | None = Field(default=None, gt=0)
    default_timeout_s: float = Field(default=120.0, gt=0)
    straggler: StragglerPolicy | None = None
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    aggregate_prompt: str = AGGREGATE_AND_SYNTHESIZE
    references: ReferencesConfig = Field(default_factory=ReferencesConfig)
    # How the layers run (``moakit.engine.strategies``): "layered" is the paper's, one layer
    # after another. Checked against the registered strategies when a Stack is built.
    strategy: str = "layered"
    staircase: StaircaseConfig = Field(default_factory=StaircaseConfig)
    vote: VoteConfig = Field(default_factory=VoteConfig)
    # How proposers advise when the caller's tools are in play (``engine.advice``). Left out
    # of the dump (and so of ``config_hash``) at its default, so adding the setting changed
    # no existing stack's identity or the eval records keyed by it.
    advice: AdviceConfig = Field(
        default_factory=AdviceConfig, exclude_if=lambda value: value == AdviceConfig()
    )
    # Adaptive compute (``engine.adaptive``): early exit on agreement and cascades. Off by
    # default, and then left out of ``config_hash`` like ``advice``.
    adaptive: AdaptiveConfig = Field(
        default_factory=AdaptiveConfig, exclude_if=lambda value: value == AdaptiveConfig()
    )
    # Per-query spending limits (``engine.budget``); a request may tighten them.
    budget: BudgetConfig = Field(
        default_factory=BudgetConfig, exclude_if=lambda value: value == BudgetConfig()
    )
    # Which members each query is worth (``moakit.routing``); none: every member, always.
    router: RouterConfig | None = Field(default=None, exclude_if=lambda value: value is None)

    @model_validator(mode="after")
    def _embedded_needs_local(self) -> StackConfig:
        # An embedded model left on the default provider would be sent to OpenAI (and ask for
        # OPENAI_API_KEY): almost surely a forgotten `provider = "local"`.
        if self.defaults.provider is not None:
            return self
        members = [
            (f"layers.{i}.members.{j}", m)
            for i, layer in enumerate(self.layers)
            for j, m in enumerate(layer.members)
        ]
        members.append(("aggregator", self.aggregator))
        members += [
            (f"aggregator.fallbacks.{k}", f) for k, f in enumerate(self.aggregator.fallbacks)
        ]
        for where, m in members:
            if m.provider is None and looks_embedded(m.model):
                raise ValueError(
                    f'{where}: {m.model!r} is an embedded model: add provider = "local" to '
                    'the member (or to [defaults]); members use provider "openai" unless told'
                )
        return self

    @model_validator(mode="after")
    def _quorum_reachable(self) -> StackConfig:
        for i, layer in enumerate(self.layers):
            size = sum(m.n for m in layer.members)
            needed = layer.min_successful or self.min_successful
            if needed > size:
                where = "min_successful" if layer.min_successful else "(stack) min_successful"
                raise ValueError(
                    f"layers.{i}.{where} = {needed} exceeds the layer's {size} members"
                )
        return self

    # -- resolution: what the engine actually runs -------------------------------------------

    def layer_members(self, index: int) -> list[ResolvedMember]:
        """Layer ``index`` (0-based position in ``layers``) resolved, ``n`` samples expanded."""
        out: list[ResolvedMember] = []
        for spec in self.layers[index].members:
            for i in range(spec.n):
                if spec.n == 1:
                    out.append(self._resolve(spec, self.proposer_temperature))
                    continue
                base = spec.temperature
                temperature = (
                    self.proposer_temperature if base is None else base
                ) + i * spec.temperature_step
                out.append(
                    self._resolve(
                        spec,
                        self.proposer_temperature,
                        n=1,
                        seed=(spec.seed or 0) + i,
                        temperature=round(max(0.0, min(2.0, temperature)), 4),
                        label=f"{spec.display}#{i + 1}",
                    )
                )
        return _unique_labels(out)

    def min_successful_for(self, index: int) -> int:
        return self.layers[index].min_successful or self.min_successful

    def aggregators(self) -> list[ResolvedMember]:
        """The aggregator followed by its fallbacks, resolved."""
        return [
            self._resolve(spec, self.aggregator_temperature)
            for spec in (self.aggregator, *self.aggregator.fallbacks)
        ]

    def _resolve(
        self, spec: MemberSpec, default_temperature: float, **update: Any
    ) -> ResolvedMember:
        """Every default decided here, once: the member's own value, else the stack's
        ``defaults``, else the stack-wide setting (temperature split, timeout, retries)."""
        d = self.defaults
        data = spec.model_dump(exclude={"fallbacks"})
        for name in ("provider", "base_url", "api_key_env", "max_tokens", "timeout_s"):
            if data[name] is None:
                data[name] = getattr(d, name)
        for name in ("retries", "max_concurrency", "price_in_per_mtok", "price_out_per_mtok"):
            if data[name] is None:
                data[name] = getattr(d, name)
        data["options"] = {**d.options, **spec.options}
        data["provider"] = data["provider"] or DEFAULT_PROVIDER
        data["label"] = spec.display
        if data["temperature"] is None:
            data["temperature"] = default_temperature
        if data["timeout_s"] is None:
            data["timeout_s"] = self.default_timeout_s
        if data["retries"] is None:
            data["retries"] = self.retry.retries
        data.update(update)
        resolved = ResolvedMember.model_validate(data)
        key_env = key_env_for(resolved)
        if key_env != resolved.api_key_env:
            resolved = resolved.model_copy(update={"api_key_env": key_env})
        return resolved


def config_hash(config: StackConfig) -> str:
    """Which stack answered: ``sha256:`` of the config's canonical JSON. The one definition,
    used by ``Stack`` (``RunStarted``), the trace store and eval records."""
    return content_hash(config.model_dump(mode="json"))


def _unique_labels(members: list[ResolvedMember]) -> list[ResolvedMember]:
    seen: dict[str, int] = {}
    out = []
    for m in members:
        label = m.label
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            m = m.model_copy(update={"label": f"{label}#{seen[label]}"})
        out.append(m)
    return out


# -- validation errors -> ConfigError ---------------------------------------------------------


def format_validation_error(exc: ValidationError, prefix: str = "") -> ConfigError:
    parts = []
    first_field: str | None = None
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        field = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "stack"
        first_field = first_field or field
        msg = err["msg"].removeprefix("Value error, ")
        shown = (
            ""
            if err["type"] in ("missing", "value_error")
            else f" (got {_short(err.get('input'))})"
        )
        parts.append(f"{field}: {msg}{shown}")
    return ConfigError("invalid stack config: " + "; ".join(parts), field=first_field)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_config(data: Mapping[str, Any], *, source: str = "config") -> StackConfig:
    try:
        return StackConfig.model_validate(dict(data))
    except ValidationError as exc:
        err = format_validation_error(exc)
        raise ConfigError(f"{source}: {err}", field=err.field) from None


# -- files and presets ------------------------------------------------------------------------


def user_dir() -> Path:
    """Per-user directory (``MOAKIT_HOME`` overrides, like simonw/llm's ``LLM_USER_PATH``)."""
    env = os.environ.get("MOAKIT_HOME")
    return Path(env) if env else Path.home() / ".config" / "moakit"


def _load_yaml(text: str) -> Any:
    """PyYAML is imported only for a YAML file (most configs are TOML; it costs start-up time).
    Its parse errors come back as ``ValueError``, like ``tomllib``'s."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc)) from None


def read_config_file(path: str | Path) -> StackConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}", field="path") from None
    try:
        data = _load_yaml(text) if path.suffix in (".yaml", ".yml") else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.') or 'TOML'}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table/mapping at the top level")
    data.setdefault("name", path.stem)
    return parse_config(data, source=str(path))


def _preset_files() -> dict[str, Path | Traversable]:
    found: dict[str, Path | Traversable] = {}
    for entry in resources.files("moakit.presets").iterdir():
        if entry.name.endswith(PRESET_SUFFIXES):
            found[entry.name.rsplit(".", 1)[0]] = entry
    user = user_dir() / "presets"
    if user.is_dir():
        # User presets shadow shipped ones of the same name, deliberately.
        for path in sorted(user.iterdir()):
            if path.suffix in PRESET_SUFFIXES:
                found[path.stem] = path
    return found


def list_presets() -> dict[str, StackConfig]:
    """Every preset by name. A broken user preset raises, naming its file."""
    return {name: load_preset(name) for name in sorted(_preset_files())}


def preset_names() -> list[str]:
    return sorted(_preset_files())


def load_preset(name: str) -> StackConfig:
    files = _preset_files()
    entry = files.get(name)
    if entry is None:
        known = ", ".join(sorted(files)) or "none"
        raise ConfigError(f"unknown preset {name!r} (known: {known})", field="preset")
    if isinstance(entry, Path):
        return read_config_file(entry)
    data = tomllib.loads(entry.read_text(encoding="utf-8"))
    data.setdefault("name", name)
    return parse_config(data, source=f"preset {name}")


def resolve_stack(preset: str | None = None, config: str | Path | None = None) -> StackConfig:
    """The CLI/server rule: an explicit file wins, else the named preset, else ``local``."""
    if config is not None:
        return read_config_file(config)
    return load_preset(preset or "local")
