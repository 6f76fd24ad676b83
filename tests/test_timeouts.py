"""The engine's shared per-attempt timeouts (``moakit.engine.timeouts``) behave as
``asyncio.timeout`` does: a block past its time raises ``TimeoutError``, a cancellation from
elsewhere stays a cancellation, and a block that ended is never cancelled by its old timer."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from moakit.engine.timeouts import for_loop


async def test_a_block_past_its_time_raises_timeout_error() -> None:
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        async with for_loop().after(0.05):
            await asyncio.sleep(10)
    assert 0.04 <= time.monotonic() - t0 < 1.0


async def test_a_block_within_its_time_is_left_alone() -> None:
    async with for_loop().after(0.2) as expiry:
        await asyncio.sleep(0.01)
    assert not expiry.expired
    await asyncio.sleep(0.3)  # its timer fires on an ended entry: nothing is cancelled
    assert asyncio.current_task() is not None and asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_one_length_shares_a_timer_and_each_expires_on_its_own_time() -> None:
    """Ten blocks of one length started 20 ms apart: the ones that answer are untouched, the
    ones that hang time out, each ~its own delay after its own start."""
    timeouts = for_loop()
    ended: dict[int, float] = {}

    async def block(i: int) -> str:
        start = time.monotonic()
        try:
            async with timeouts.after(0.15):
                await asyncio.sleep(0.01 if i % 2 else 10)
            return "answered"
        except TimeoutError:
            ended[i] = time.monotonic() - start
            return "timed out"

    tasks = []
    for i in range(10):
        tasks.append(asyncio.create_task(block(i)))
        await asyncio.sleep(0.02)
    outcomes = await asyncio.gather(*tasks)
    assert outcomes == ["timed out", "answered"] * 5
    assert all(0.14 <= took < 0.6 for took in ended.values()), ended
    assert not timeouts._groups  # every group is forgotten once its queue is empty


async def test_a_cancellation_from_elsewhere_is_not_a_timeout() -> None:
    async def block() -> None:
        async with for_loop().after(10):
            await asyncio.sleep(10)

    task = asyncio.create_task(block())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _asyncio_at(when: float) -> AbstractAsyncContextManager[object]:
    return asyncio.timeout_at(when)


def _shared_at(when: float) -> AbstractAsyncContextManager[object]:
    return for_loop().at(when)


@pytest.mark.parametrize("timeout_at", [_asyncio_at, _shared_at], ids=["asyncio", "shared"])
async def test_a_cancellation_as_the_time_expires_stays_a_cancellation(
    timeout_at: Callable[[float], AbstractAsyncContextManager[object]],
) -> None:
    """The caller cancels the task in the loop step where its timeout expires: the
    cancellation must reach the caller, as ``asyncio.timeout`` lets it (the reference row)."""
    loop = asyncio.get_running_loop()
    when = loop.time() + 0.05

    async def block() -> None:
        async with timeout_at(when):
            await asyncio.sleep(10)

    task = asyncio.create_task(block())
    await asyncio.sleep(0)  # entered: its timer is scheduled before the caller's cancel
    loop.call_at(when, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("timeout_at", [_asyncio_at, _shared_at], ids=["asyncio", "shared"])
async def test_a_timeout_inside_a_timeout(
    timeout_at: Callable[[float], AbstractAsyncContextManager[object]],
) -> None:
    """The inner (sooner) one expires; the outer block goes on and ends in time."""
    loop = asyncio.get_running_loop()
    async with timeout_at(loop.time() + 1.0):
        with pytest.raises(TimeoutError):
            async with timeout_at(loop.time() + 0.02):
                await asyncio.sleep(10)
        await asyncio.sleep(0.01)


async def test_at_expires_every_block_at_one_moment() -> None:
    timeouts = for_loop()
    when = asyncio.get_running_loop().time() + 0.05

    async def block() -> str:
        try:
            async with timeouts.at(when):
                await asyncio.sleep(10)
        except TimeoutError:
            return f"{asyncio.get_running_loop().time() - when:.2f}"
        return "answered"

    outcomes = await asyncio.gather(*(block() for _ in range(5)))
    assert all(0.0 <= float(o) < 0.5 for o in outcomes), outcomes


async def test_a_time_already_past_expires_at_once() -> None:
    with pytest.raises(TimeoutError):
        async with for_loop().at(asyncio.get_running_loop().time() - 1):
            await asyncio.sleep(10)


def test_a_finished_loop_is_not_kept_alive_by_its_timeouts() -> None:
    """The registry is keyed by each loop's weak reference: nothing it holds (a group's armed
    timer refers to its loop) may keep a loop that has finished alive."""
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def one() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        async with for_loop().after(30):
            await asyncio.sleep(0)

    for _ in range(3):
        asyncio.run(one())
    gc.collect()
    assert [ref() for ref in loops] == [None, None, None]
