"""Faults from the fault-injecting backend, at a first-layer proposer, a middle-layer proposer and
the final aggregator. Each case has a hard wall-time bound."""

from __future__ import annotations

import asyncio

import pytest

from moakit import Stack, parse_config
from moakit.testing.fake_backend import Behavior, FakeBackend, Fault, FaultKind

CONV = [{"role": "user", "content": "q"}]


def stack(base_url: str, bad: str) -> Stack:
    return Stack(
        parse_config(
            {
                "defaults": {"base_url": base_url, "timeout_s": 0.5, "max_tokens": 30},
                "retry": {"initial_s": 0.01, "max_s": 0.05},
                "layers": [
                    [{"model": "l1a"}, {"model": "l1b"}, {"model": "l1c"}],
                    [{"model": "l2a"}, {"model": "l2b"}, {"model": "l2c"}],
                ],
                "aggregator": {"model": "agg", "retries": 0, "fallbacks": [{"model": "backup"}]},
            }
        )
    )


PERSISTENT: list[FaultKind] = [
    "http_500",
    "http_503",
    "http_429",
    "hang",
    "reset_mid_stream",
    "malformed_json",
    "empty",
]


@pytest.mark.parametrize("kind", PERSISTENT)
@pytest.mark.parametrize("where", ["l1a", "l2b", "agg"])
async def test_persistent_fault_degrades_gracefully(kind: FaultKind, where: str) -> None:
    fault = Fault(kind, retry_after_s=0.01)
    async with FakeBackend(models={where: Behavior(fault=fault)}) as fb:
        async with stack(fb.base_url, where) as s:
            result = await asyncio.wait_for(s.run(CONV), 10)
        await fb.wait_idle(5)
    failed = [m for m in result.calls() if m.error]
    assert [m.label for m in failed] == [where]
    if where == "agg":
        assert [a.label for a in result.aggregators] == ["agg", "backup"]
        assert result.final.startswith("backup saw")
    else:
        layer = result.layers[0 if where.startswith("l1") else 1]
        assert layer.answered == 2
        assert result.final.startswith("agg saw")


@pytest.mark.parametrize("kind", ["http_500", "http_429", "reset_mid_stream", "malformed_json"])
async def test_transient_fault_is_retried(kind: FaultKind) -> None:
    fault = Fault(kind, times=1, retry_after_s=0.01)
    async with (
        FakeBackend(models={"l1a": Behavior(fault=fault)}) as fb,
        stack(fb.base_url, "l1a") as s,
    ):
        result = await asyncio.wait_for(s.run(CONV), 10)
    member = result.layers[0].members[0]
    assert member.ok and len(member.attempts) == 2


async def test_truncated_answer_is_kept_and_marked() -> None:
    async with (
        FakeBackend(models={"l2c": Behavior(fault=Fault("truncated"))}) as fb,
        stack(fb.base_url, "l2c") as s,
    ):
        result = await asyncio.wait_for(s.run(CONV), 10)
    member = result.layers[1].members[2]
    assert member.ok and member.truncated


async def test_cancelled_query_leaves_nothing_in_flight() -> None:
    async with FakeBackend(default=Behavior(fault=Fault("hang"))) as fb:
        async with stack(fb.base_url, "") as s:
            task = asyncio.create_task(s.run(CONV))
            await asyncio.sleep(0.2)
            assert fb.stats.in_flight == 3
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await fb.wait_idle(5)
    assert fb.stats.in_flight == 0 and fb.stats.cancelled >= 3
