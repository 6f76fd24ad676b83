"""Defaults decided once (ResolvedMember), one home for key variables, names, strategies, and
which presets wait for every member."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import moakit
from moakit import ConfigError, Stack, parse_config
from moakit.config import DEFAULT_KEY_ENV, ResolvedMember, key_env_for, load_preset
from moakit.testing.models import echo_model

SRC = Path(moakit.__file__).parent


def test_resolved_member_has_no_optional_field_where_a_default_exists() -> None:
    hints = typing.get_type_hints(ResolvedMember)
    for name in ("provider", "label", "temperature", "timeout_s", "retries"):
        assert type(None) not in typing.get_args(hints[name]), name
        assert hints[name] in (str, float, int), name


def test_members_resolve_stack_defaults_then_stack_settings() -> None:
    config = parse_config(
        {
            "defaults": {"provider": "local", "max_tokens": 64, "retries": 1},
            "default_timeout_s": 33,
            "layers": [[{"model": "m", "n": 2, "temperature_step": 0.1}]],
            "aggregator": {"model": "m", "provider": "openai", "base_url": "http://127.0.0.1:9/v1"},
        }
    )
    a, b = config.layer_members(0)
    agg = config.aggregators()[0]
    assert (a.provider, a.max_tokens, a.retries, a.timeout_s) == ("local", 64, 1, 33)
    assert (a.label, b.label, a.temperature, b.temperature) == ("m#1", "m#2", 0.7, 0.8)
    assert (agg.provider, agg.temperature, agg.api_key_env) == ("openai", 0.4, None)


def test_presets_show_prints_the_provider_members_really_use() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "moakit.cli.main", "presets", "show", "local"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    resolved = doc["resolved"]
    providers = {m["provider"] for layer in resolved["layers"] for m in layer}
    providers |= {m["provider"] for m in resolved["aggregators"]}
    assert providers == {"local"}
    assert resolved["aggregators"][0]["max_tokens"] == 384  # the preset's own, not the default


def test_key_variables_are_defined_in_one_place() -> None:
    assert (
        key_env_for(
            ResolvedMember(
                provider="anthropic", model="c", label="c", temperature=0, timeout_s=1, retries=0
            )
        )
        == "ANTHROPIC_API_KEY"
    )
    together = load_preset("together-moa").layer_members(0)[0]
    assert together.api_key_env == "TOGETHER_API_KEY"
    openai = parse_config({"layers": [[{"model": "g"}]], "aggregator": {"model": "g"}})
    assert openai.aggregators()[0].api_key_env == DEFAULT_KEY_ENV["openai"]
    # No adapter or CLI module spells a provider's key variable itself.
    for path in [*SRC.glob("models/*.py"), *SRC.glob("cli/*.py")]:
        for name in DEFAULT_KEY_ENV.values():
            assert f'"{name}"' not in path.read_text(), f"{path.name} hard-codes {name}"


def test_no_two_classes_share_a_name() -> None:
    seen: dict[str, Path] = {}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                assert node.name not in seen, f"{node.name}: {seen.get(node.name)} and {path}"
                seen[node.name] = path


def test_interactive_presets_cut_stragglers_paper_presets_wait() -> None:
    for name in ("local-staircase", "claude-trio"):
        assert load_preset(name).straggler is not None, name
    # The paper's presets wait for every proposer; so does the local cascade, whose early exit
    # needs the answers of both first members (a cut one could only force an escalation).
    for name in ("together-moa", "moa-lite", "moa-gpt4o", "local"):
        assert load_preset(name).straggler is None, name


def test_unknown_strategy_is_a_config_error_naming_the_field() -> None:
    config = parse_config(
        {"strategy": "spiral", "layers": [[{"model": "a"}]], "aggregator": {"model": "a"}}
    )
    with pytest.raises(ConfigError, match="unknown strategy 'spiral'") as info:
        Stack(config, models={"a": echo_model("a")})
    assert info.value.field == "strategy"
