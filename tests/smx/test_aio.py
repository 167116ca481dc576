"""smx.aio.wait_event against the two holes of Python 3.11's own waits: a cancellation arriving
in the same turn as the event is never lost, and the waiting task is never cancelled by the
time limit."""

from __future__ import annotations

import asyncio
import random

import pytest

from smx.aio import Wakeup, wait_event


class _Event:
    """An asyncio.Event waited through wait_event, with Wakeup's interface: the same contract
    tested on both."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.set, self.clear = self.event.set, self.event.clear

    async def wait(self, seconds: float) -> bool:
        return await wait_event(self.event, seconds)


FLAGS = pytest.mark.parametrize("make", [_Event, Wakeup], ids=["wait_event", "Wakeup"])


@FLAGS
async def test_set_in_time_timed_out_and_already_set(make):
    flag = make()
    asyncio.get_running_loop().call_later(0.01, flag.set)
    assert await flag.wait(5.0) is True
    assert await flag.wait(0.0) is True  # already set
    flag.clear()
    t0 = asyncio.get_running_loop().time()
    assert await flag.wait(0.02) is False
    assert asyncio.get_running_loop().time() - t0 >= 0.015


@FLAGS
async def test_a_loop_around_it_always_stops_when_cancelled(make):
    # The shape that hung with asyncio.wait_for: the event comes in the very turn of the cancel.
    async def loop(flag) -> None:
        while True:
            await flag.wait(1.0)
            flag.clear()
            asyncio.get_running_loop().call_soon(flag.set)

    hung = 0
    for _ in range(300):
        flag = make()
        flag.set()
        task = asyncio.create_task(loop(flag))
        for _ in range(random.randint(1, 20)):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=0.5)
        hung += not done
    assert hung == 0


@FLAGS
async def test_the_time_limit_never_cancels_the_waiting_task(make):
    flag = make()
    for _ in range(200):
        assert await flag.wait(0.0005) is False
    assert asyncio.current_task().cancelling() == 0
    await asyncio.sleep(0)  # no cancellation left pending for this task


# -- Wakeup: one timer for many waits ---------------------------------------------------------


async def test_wakeup_leaves_no_timer_after_its_waits_time_out():
    flag = Wakeup()
    for _ in range(200):
        assert await flag.wait(0.0005) is False
    loop = asyncio.get_running_loop()
    assert not [h for h in loop._scheduled if not h.cancelled()]  # every timer cancelled


async def test_wakeup_one_timer_still_keeps_every_waits_own_time_limit():
    loop = asyncio.get_running_loop()
    flag = Wakeup()
    # A wait ended by the flag leaves its timer armed; the next wait must still last its own
    # full time, not end when that earlier timer fires.
    loop.call_later(0.05, flag.set)
    assert await flag.wait(0.2) is True
    flag.clear()
    t0 = loop.time()
    assert await flag.wait(0.2) is False
    assert loop.time() - t0 >= 0.19
    # And a shorter wait after a long one is not held to the long one's timer.
    loop.call_later(0.01, flag.set)
    assert await flag.wait(5.0) is True
    flag.clear()
    t0 = loop.time()
    assert await flag.wait(0.05) is False
    assert loop.time() - t0 < 1.0
