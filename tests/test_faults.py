"""Faults from the fault-injecting backend, at a first-layer proposer, a middle-layer proposer and
the final aggregator. Each case has a hard wall-time bound."""

from __future__ import annotations

import asyncio
import re
from typing import Any, get_args

import pytest

from moakit import Stack, parse_config
from moakit.testing.fake_backend import Behavior, FakeBackend, Fault, FaultKind

CONV = [{"role": "user", "content": "q"}]
WALL_S = 10  # no case may take longer than this, whatever the engine does

L1 = ["l1a", "l1b", "l1c"]
L2 = ["l2a", "l2b", "l2c"]


def stack(base_url: str, bad: str = "") -> Stack:
    return Stack(
        parse_config(
            {
                "defaults": {"base_url": base_url, "timeout_s": 0.3, "max_tokens": 30},
                "retry": {"initial_s": 0.01, "max_s": 0.05},
                "layers": [[{"model": m} for m in L1], [{"model": m} for m in L2]],
                "aggregator": {"model": "agg", "retries": 0, "fallbacks": [{"model": "backup"}]},
                "references": {"formatter": "paper"},  # REF_LINE reads the numbered block
            }
        )
    )


# What the failed member's error must start with (``kind[ status]: ...``).
ERROR_PREFIX: dict[str, str] = {
    "http_500": "http 500",
    "http_503": "http 503",
    "http_429": "http 429",
    "hang": "timeout",
    "reset_mid_stream": "connection",
    "malformed_json": "malformed",
    "empty": "empty",
}
# Every fault that fails a call each time (everything but "truncated", which still answers).
PERSISTENT: list[FaultKind] = [k for k in get_args(FaultKind) if k in ERROR_PREFIX]
# Retryable kinds are tried 1 + retries (default 2) times; "empty" is not retried.
ATTEMPTS = {kind: (1 if kind == "empty" else 3) for kind in PERSISTENT}

# Faults worth a retry; an empty answer is a failure, never retried.
TRANSIENT: list[FaultKind] = [k for k in PERSISTENT if k != "empty"]

REF_LINE = re.compile(r"^\d+\. ", re.MULTILINE)


def last_body(fb: FakeBackend, model: str) -> dict[str, Any]:
    bodies = [b for b in fb.stats.received if b["model"] == model]
    assert bodies, f"{model} was never called"
    return bodies[-1]


def references_in(body: dict[str, Any]) -> list[str]:
    """The models whose answers a request carried as references (``N. <model> saw ...``)."""
    first = body["messages"][0]
    if first["role"] != "system":
        return []
    block = first["content"].split("Responses from models:", 1)[-1]
    return [
        line.split(". ", 1)[1].split(" ", 1)[0]
        for line in block.splitlines()
        if REF_LINE.match(line)
    ]


async def run_with(models: dict[str, Behavior]) -> tuple[Any, FakeBackend]:
    async with FakeBackend(models=models) as fb:
        async with stack(fb.base_url) as s:
            result = await asyncio.wait_for(s.run(CONV), WALL_S)
        await fb.wait_idle(5)
    return result, fb


@pytest.mark.parametrize("kind", PERSISTENT)
@pytest.mark.parametrize("where", ["l1a", "l2b", "agg"])
async def test_persistent_fault_degrades_gracefully(kind: FaultKind, where: str) -> None:
    result, fb = await run_with({where: Behavior(fault=Fault(kind, retry_after_s=0.01))})
    failed = [m for m in result.calls() if m.error]
    assert [m.label for m in failed] == [where]
    assert failed[0].error.startswith(ERROR_PREFIX[kind]), failed[0].error
    if where == "agg":
        assert [a.label for a in result.aggregators] == ["agg", "backup"]
        assert not result.aggregators[0].ok and result.aggregators[1].ok
        assert result.final.startswith("backup saw")
        # The fallback sees every reference.
        assert references_in(last_body(fb, "backup")) == L2
        return
    first = where.startswith("l1")
    layer = result.layers[0 if first else 1]
    member = next(m for m in layer.members if m.label == where)
    assert len(member.attempts) == ATTEMPTS[kind]
    assert layer.answered == 2
    assert result.final.startswith("agg saw")
    survivors = [m for m in (L1 if first else L2) if m != where]
    if first:
        # Layer 2 was fed only the survivors of layer 1; the aggregator all of layer 2.
        for m in L2:
            assert references_in(last_body(fb, m)) == survivors
        assert references_in(last_body(fb, "agg")) == L2
    else:
        assert references_in(last_body(fb, "agg")) == survivors
    assert "backup" not in fb.stats.requests_by_model


@pytest.mark.parametrize("kind", TRANSIENT)
@pytest.mark.parametrize("where", ["l1a", "l2b"])
async def test_transient_proposer_fault_is_retried(kind: FaultKind, where: str) -> None:
    result, fb = await run_with({where: Behavior(fault=Fault(kind, times=1, retry_after_s=0.01))})
    layer = result.layers[0 if where.startswith("l1") else 1]
    member = next(m for m in layer.members if m.label == where)
    assert member.ok and member.error is None
    assert len(member.attempts) == 2
    assert (member.attempts[0].error or "").startswith(ERROR_PREFIX[kind])
    assert member.attempts[1].error is None
    assert layer.answered == 3 and result.failures == []
    assert references_in(last_body(fb, "agg")) == L2
    assert fb.stats.requests_by_model[where] == 2


@pytest.mark.parametrize("kind", TRANSIENT)
async def test_transient_aggregator_fault_uses_fallback(kind: FaultKind) -> None:
    # The aggregator has retries=0, so even a one-off fault hands over to the fallback.
    result, fb = await run_with({"agg": Behavior(fault=Fault(kind, times=1, retry_after_s=0.01))})
    assert [a.label for a in result.aggregators] == ["agg", "backup"]
    assert (result.aggregators[0].error or "").startswith(ERROR_PREFIX[kind])
    assert result.final.startswith("backup saw")
    assert fb.stats.requests_by_model["agg"] == 1


@pytest.mark.parametrize("where", ["l1a", "l2b", "agg"])
async def test_truncated_answer_is_kept_and_marked(where: str) -> None:
    result, fb = await run_with({where: Behavior(fault=Fault("truncated"))})
    assert result.failures == []
    if where == "agg":
        assert [a.label for a in result.aggregators] == ["agg"]
        agg = result.aggregators[0]
        assert agg.ok and agg.truncated and agg.finish_reason == "length"
        assert result.truncated and result.final.startswith("agg saw")
        return
    first = where.startswith("l1")
    layer = result.layers[0 if first else 1]
    member = next(m for m in layer.members if m.label == where)
    assert member.ok and member.truncated and member.finish_reason == "length"
    assert layer.answered == 3
    # A truncated answer is still passed on as a reference.
    if first:
        assert references_in(last_body(fb, "l2a")) == L1
    else:
        assert references_in(last_body(fb, "agg")) == L2
    assert not result.truncated


async def test_hang_times_out_quickly() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result, fb = await run_with({"l1b": Behavior(fault=Fault("hang"))})
    member = result.layers[0].members[1]
    assert member.error == "timeout: no answer within 0.30s"
    assert [a.error for a in member.attempts] == [member.error] * 3
    assert loop.time() - t0 < 3
    assert fb.stats.in_flight == 0


async def test_cancelled_query_leaves_nothing_in_flight() -> None:
    async with FakeBackend(default=Behavior(fault=Fault("hang"))) as fb:
        async with Stack(
            parse_config(
                {
                    "defaults": {"base_url": fb.base_url, "timeout_s": 30, "max_tokens": 30},
                    "layers": [[{"model": m} for m in L1], [{"model": m} for m in L2]],
                    "aggregator": {"model": "agg"},
                }
            )
        ) as s:
            task = asyncio.create_task(s.run(CONV))
            for _ in range(200):
                if fb.stats.in_flight == 3:
                    break
                await asyncio.sleep(0.01)
            assert fb.stats.in_flight == 3
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, WALL_S)
            await fb.wait_idle(5)
        assert fb.stats.in_flight == 0 and fb.stats.cancelled >= 3
