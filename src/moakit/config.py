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

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from moakit.errors import ConfigError
from moakit.prompts import AGGREGATE_AND_SYNTHESIZE

PRESET_SUFFIXES = (".toml", ".yaml", ".yml")


class _Strict(BaseModel):
    # extra="forbid" turns a typo such as ``temprature`` into an error naming it.
    model_config = ConfigDict(extra="forbid", frozen=True)


class MemberDefaults(_Strict):
    """Fields a stack may set once for all of its members. A member's own value wins."""

    provider: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    timeout_s: float | None = Field(default=None, gt=0)
    retries: int | None = Field(default=None, ge=0, le=10)
    options: dict[str, Any] = Field(default_factory=dict)


class MemberSpec(_Strict):
    """One model call in a layer (or ``n`` samples of one model, the single-proposer variant)."""

    provider: str = "openai"
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
    # n > 1 samples the same model n times with seeds seed, seed+1, ... and temperatures
    # temperature, temperature + temperature_step, ... (MoA's single-proposer variant).
    n: int = Field(default=1, ge=1, le=64)
    temperature_step: float = Field(default=0.0, ge=-1, le=1)
    # US dollars per million tokens, for cost accounting. Unset means "unknown", not free.
    price_in_per_mtok: float | None = Field(default=None, ge=0)
    price_out_per_mtok: float | None = Field(default=None, ge=0)
    # Provider-specific knobs (e.g. ``n_ctx`` for the embedded model). Passed through untouched.
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def display(self) -> str:
        return self.label or self.model


class AggregatorSpec(MemberSpec):
    """The final model. ``fallbacks`` take over, in order, if it fails."""

    fallbacks: list[MemberSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _single_sample(self) -> AggregatorSpec:
        if self.n != 1:
            raise ValueError(f"the aggregator writes one answer; n must be 1 (got {self.n})")
        return self


class LayerSpec(_Strict):
    members: list[MemberSpec] = Field(min_length=1)
    min_successful: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _accept_bare_list(cls, data: Any) -> Any:
        # ``layers = [[{...}, {...}], ...]`` is the natural way to write a stack in TOML/YAML.
        if isinstance(data, list):
            return {"members": data}
        return data


class StragglerPolicy(_Strict):
    """Early aggregation: once ``min_successful`` members of a layer have answered, wait at most
    ``grace_s`` seconds, or ``grace_factor`` × the slowest finished member's latency, for the
    rest; then cancel them and move on. With both set, the later cut-off wins."""

    grace_s: float | None = Field(default=None, ge=0)
    grace_factor: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_needed(self) -> StragglerPolicy:
        if self.grace_s is None and self.grace_factor is None:
            raise ValueError("set grace_s or grace_factor")
        return self


class RetryPolicy(_Strict):
    """The one retry policy (openai-python's): exponential backoff from ``initial_s`` to
    ``max_s`` with jitter, honouring Retry-After; SDK-level retries are switched off."""

    retries: int = Field(default=2, ge=0, le=10)
    initial_s: float = Field(default=0.5, ge=0)
    max_s: float = Field(default=8.0, ge=0)
    # Never wait longer than this for a server's Retry-After; beyond it the member just fails.
    max_retry_after_s: float = Field(default=60.0, ge=0)


class StackConfig(_Strict):
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

    def layer_members(self, index: int) -> list[MemberSpec]:
        """Layer ``index``'s members with defaults applied and ``n`` samples expanded."""
        out: list[MemberSpec] = []
        for spec in self.layers[index].members:
            base = self._with_defaults(spec, self.proposer_temperature)
            for i in range(spec.n):
                if spec.n == 1:
                    out.append(base)
                    continue
                temperature = max(
                    0.0, min(2.0, (base.temperature or 0.0) + i * spec.temperature_step)
                )
                out.append(
                    base.model_copy(
                        update={
                            "n": 1,
                            "seed": (spec.seed or 0) + i,
                            "temperature": round(temperature, 4),
                            "label": f"{spec.display}#{i + 1}",
                        }
                    )
                )
        return _unique_labels(out)

    def min_successful_for(self, index: int) -> int:
        return self.layers[index].min_successful or self.min_successful

    def aggregators(self) -> list[MemberSpec]:
        """The aggregator followed by its fallbacks, defaults applied."""
        head = self._with_defaults(self.aggregator, self.aggregator_temperature)
        head = (
            head.model_copy(update={"fallbacks": []}) if isinstance(head, AggregatorSpec) else head
        )
        rest = [
            self._with_defaults(f, self.aggregator_temperature) for f in self.aggregator.fallbacks
        ]
        return [head, *rest]

    def _with_defaults(self, spec: MemberSpec, temperature: float) -> MemberSpec:
        d = self.defaults
        explicit = spec.model_fields_set
        update: dict[str, Any] = {}
        for name in ("provider", "base_url", "api_key_env", "max_tokens", "timeout_s", "retries"):
            value = getattr(d, name)
            if value is not None and name not in explicit:
                update[name] = value
        if d.options:
            update["options"] = {**d.options, **spec.options}
        if spec.temperature is None:
            update["temperature"] = temperature
        if spec.timeout_s is None and "timeout_s" not in update:
            update["timeout_s"] = self.default_timeout_s
        if spec.retries is None and "retries" not in update:
            update["retries"] = self.retry.retries
        return spec.model_copy(update=update)


def _unique_labels(members: list[MemberSpec]) -> list[MemberSpec]:
    seen: dict[str, int] = {}
    out = []
    for m in members:
        label = m.display
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


def read_config_file(path: str | Path) -> StackConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}", field="path") from None
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
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
