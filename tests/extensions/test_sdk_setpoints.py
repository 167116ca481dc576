"""Setpoint handlers against a real core: points are handled side by side, a superseded request
never reaches the device, the time limit holds even for a handler that swallows its
cancellation, and a handler's wrong answer is a rejection, not an APPLIED."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from extensions.sdk import Applied, Clamped, Extension, SetpointRequest
from extensions.sdk.testing import TestSite, until
from smx.sdk import Client, SetpointState

# One extension identity per test: setpoints still in force from one test never reach another.
CLIENTS = {
    "ess1": ("trusted", ["trusted-extension"], []),
    "ess2": ("trusted", ["trusted-extension"], []),
    "ess3": ("trusted", ["trusted-extension"], []),
    "ess4": ("trusted", ["trusted-extension"], []),
    "ess5": ("trusted", ["trusted-extension"], []),
    "ctrl": ("untrusted", ["untrusted-agent"], []),
}


@pytest.fixture(scope="module")
def site():
    with TestSite(CLIENTS) as s:
        yield s


@asynccontextmanager
async def running(ext: Extension, *points: str) -> AsyncIterator[None]:
    await ext.start()
    try:
        await until(lambda: ext.client.connected and all(map(ext.client.declared, points)))
        yield
    finally:
        await ext.stop()


async def request(ctrl: Client, name: str, value: float, valid_for: float = 30) -> SetpointState:
    # Retried until the core knows the point (the extension declares it as it starts).
    return await until(lambda: ctrl.request_setpoint(name, value, valid_for), what=f"{name} ok")


async def test_a_slow_handler_on_one_point_does_not_delay_another_point(site):
    ext = Extension(site.env("ess1"))
    p_running: list[float] = []
    q_calls: list[tuple[float, int]] = []

    @ext.on_setpoint("ess1/P_set", timeout=2.0)
    async def set_p(req: SetpointRequest) -> Applied:
        p_running.append(req.value)
        try:
            await asyncio.sleep(3600)  # the device does not answer: cut off at 2 s
        finally:
            p_running.remove(req.value)
        return Applied()

    @ext.on_setpoint("ess1/Q_set", timeout=2.0)
    async def set_q(req: SetpointRequest) -> Applied:
        q_calls.append((req.value, len(p_running)))
        return Applied()

    async with running(ext, "ess1/P_set", "ess1/Q_set"), site.client("ctrl") as ctrl:
        await request(ctrl, "ess1/P_set", 0.0)
        await until(lambda: p_running, what="P handler running")
        for value in range(1, 20):  # a flood of requests for P
            await request(ctrl, "ess1/P_set", float(value))
        t0 = time.monotonic()
        q = await request(ctrl, "ess1/Q_set", 500.0, valid_for=5)
        done = await ctrl.outcome(q.id, timeout=10)
        took = time.monotonic() - t0
        assert done.status == "APPLIED", done
        assert took < 1.5, f"Q_set waited {took:.1f} s behind P_set"
        assert q_calls == [(500.0, 1)]  # applied while P's handler was still running


async def test_superseded_requests_never_reach_the_handler(site):
    ext = Extension(site.env("ess2"))
    calls: list[float] = []
    gate = asyncio.Event()

    @ext.on_setpoint("ess2/P_set", timeout=20.0)
    async def set_p(req: SetpointRequest) -> Applied:
        calls.append(req.value)
        await gate.wait()  # the device is busy with the first request
        return Applied()

    async with running(ext, "ess2/P_set"), site.client("ctrl") as ctrl:
        await request(ctrl, "ess2/P_set", 1.0)
        await until(lambda: calls == [1.0], what="first request in the handler")
        sent = [await request(ctrl, "ess2/P_set", float(v)) for v in range(2, 11)]
        states = [await ctrl.outcome(sp.id, timeout=10) for sp in sent[:-1]]
        assert {s.status for s in states} == {"SUPERSEDED"}
        await asyncio.sleep(0.5)  # every request has reached the extension
        gate.set()
        last = await ctrl.outcome(sent[-1].id, timeout=10)
        assert (last.status, last.applied_value) == ("APPLIED", 10.0)
        await asyncio.sleep(0.3)
        assert calls == [1.0, 10.0]  # the running one finished, then only the newest ran


async def test_a_handler_that_swallows_cancellation_is_rejected_at_its_timeout(site):
    ext = Extension(site.env("ess3"))
    finished: list[float] = []

    @ext.on_setpoint("ess3/P_set", timeout=1.0)
    async def stubborn(req: SetpointRequest) -> Applied:
        try:
            await asyncio.sleep(3)
        except asyncio.CancelledError:
            await asyncio.sleep(2)  # goes on regardless
        finished.append(time.monotonic())
        return Applied()

    async with running(ext, "ess3/P_set"), site.client("ctrl") as ctrl:
        t0 = time.monotonic()
        sp = await request(ctrl, "ess3/P_set", 100.0)
        done = await ctrl.outcome(sp.id, timeout=10)
        took = time.monotonic() - t0
        assert (done.status, done.reason) == ("REJECTED", "no answer within 1 s")
        assert took < 1.8, f"rejected after {took:.1f} s, not at the 1 s timeout"
        await until(lambda: finished, timeout=5, what="the handler's late answer")
        await asyncio.sleep(0.3)
        assert (await ctrl.get_setpoint(id=sp.id)).status == "REJECTED"  # late answer ignored


async def test_a_wrong_answer_or_a_non_finite_value_is_rejected_and_logged_once(site, caplog):
    ext = Extension(site.env("ess4"))
    answers = {
        1.0: "garbage",
        2.0: Applied(math.nan),
        3.0: Clamped(math.inf, "limit"),
        4.0: "garbage",
        5.0: Applied(),
    }

    @ext.on_setpoint("ess4/P_set", timeout=2.0)
    async def sloppy(req: SetpointRequest):  # noqa: ANN202 - wrong on purpose
        return answers[req.value]

    caplog.set_level(logging.INFO, logger="extensions.sdk.setpoints")
    async with running(ext, "ess4/P_set"), site.client("ctrl") as ctrl:
        got = {}
        for value in answers:
            sp = await request(ctrl, "ess4/P_set", value)
            got[value] = await ctrl.outcome(sp.id, timeout=10)
    assert [s.status for s in got.values()] == ["REJECTED"] * 4 + ["APPLIED"]
    assert got[1.0].reason == (
        "handler test_a_wrong_answer_or_a_non_finite_value_is_rejected_and_logged_once."
        "<locals>.sloppy returned 'garbage' (str), not Applied, Clamped, Rejected or Unconfirmed"
    )
    assert got[2.0].reason.endswith("sloppy returned Applied(nan): not a finite number")
    assert got[3.0].reason.endswith("sloppy returned Clamped(inf): not a finite number")
    mistakes = [r for r in caplog.records if "sloppy returned" in r.getMessage()]
    assert len(mistakes) == 1 and mistakes[0].levelno == logging.ERROR


async def test_a_call_that_outlives_its_limit_refuses_the_points_next_requests_at_once(site):
    # Calls that never end must not pile up: while one is still running, the next is refused.
    ext = Extension(site.env("ess5"))
    calls: list[float] = []
    release = asyncio.Event()

    @ext.on_setpoint("ess5/P_set", timeout=0.5)
    async def stuck(req: SetpointRequest) -> Applied:
        calls.append(req.value)
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # refuses to stop
        return Applied()

    async with running(ext, "ess5/P_set"), site.client("ctrl") as ctrl:
        first = await request(ctrl, "ess5/P_set", 1.0)
        assert (await ctrl.outcome(first.id, timeout=5)).status == "REJECTED"
        t0 = time.monotonic()
        second = await request(ctrl, "ess5/P_set", 2.0)
        done = await ctrl.outcome(second.id, timeout=5)
        assert done.status == "REJECTED" and "still running" in done.reason
        assert time.monotonic() - t0 < 0.5  # at once, not after another time limit
        assert calls == [1.0]  # the handler was not called again
        release.set()
        await asyncio.sleep(0.1)
        third = await request(ctrl, "ess5/P_set", 3.0)
        assert (await ctrl.outcome(third.id, timeout=5)).status == "APPLIED"


def test_a_plain_function_is_refused_as_a_handler(site):
    ext = Extension(site.env("ess5"))

    def blocking(req: SetpointRequest) -> Applied:
        return Applied()

    with pytest.raises(TypeError, match="must be an `async def`"):
        ext.on_setpoint("ess5/P_set")(blocking)
    with pytest.raises(TypeError, match="must be an `async def`"):
        ext.on_setpoint_expired("ess5/P_set")(blocking)
