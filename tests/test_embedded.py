"""The real embedded llama.cpp model, end to end: library and CLI. No network, no key."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import moakit
from moakit import Stack, parse_config
from moakit.models.local import LocalModel, resolve_model_path
from moakit.models.local.runtime import shared_runtime

pytestmark = pytest.mark.embedded

TINY = {
    "defaults": {"provider": "local", "max_tokens": 16},
    "layers": [[{"model": "smollm2-135m", "n": 2, "seed": 1}]],
    "aggregator": {"model": "smollm2-135m", "seed": 7, "max_tokens": 24},
}


def test_weights_come_from_the_installed_package() -> None:
    path = resolve_model_path("smollm2-135m")
    assert path.is_file() and path.suffix == ".gguf" and "site-packages" in str(path)


async def test_library_runs_a_real_stack() -> None:
    async with Stack(parse_config(TINY)) as stack:
        result = await stack.run([{"role": "user", "content": "Name a fruit."}])
    assert result.final.strip()
    assert [m.ok for m in result.layers[0].members] == [True, True]
    assert result.usage.completion_tokens > 0
    assert result.llm_calls == 3


async def test_one_instance_shared_and_seeded_outputs_reproducible() -> None:
    async with Stack(parse_config(TINY)) as stack:
        a = await stack.run([{"role": "user", "content": "Say hi."}])
        b = await stack.run([{"role": "user", "content": "Say hi."}])
    assert a.final == b.final  # same seeds, same answer
    spec = parse_config(TINY).aggregators()[0]
    model = LocalModel(spec.model, dict(spec.options))
    assert model.loaded()
    assert shared_runtime(model.key) is shared_runtime(LocalModel(spec.model).key)


def test_sync_wrapper() -> None:
    result = moakit.run("Name a color.", config=parse_config(TINY))
    assert result.final.strip()


def test_cli_ask_json_with_local_preset() -> None:
    env = {**os.environ, "MOAKIT_LLAMA_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "moakit.cli.main", "ask", "--json", "--preset", "local-fast", "Hi!"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["final"].strip()
    assert len(data["layers"]) == 2
    member = data["layers"][0]["members"][0]
    assert {"model", "output", "error", "latency_s", "usage"} <= member.keys()
    assert data["llm_calls"] == 7 and data["total_tokens"] > 0


def test_cli_ask_streams_answer_on_stdout_progress_on_stderr(tmp_path: object) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "moakit.cli.main", "ask", "--preset", "local"],
        input="What is 2+2?",
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    # The local preset is a cascade: reason and program first, and either an early exit (they
    # state the same answer) or an escalation to check and the aggregator, said on stderr.
    assert "layer 1" in proc.stderr
    exited = "early exit: 2 answers agree" in proc.stderr
    escalated = "escalate: " in proc.stderr and "aggregator" in proc.stderr
    assert exited != escalated, proc.stderr
