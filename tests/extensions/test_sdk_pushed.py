"""Pushed devices (a source that delivers on its own schedule: OCPP, MQTT, IEC mode D) get the
same bookkeeping as polled ones: GOOD readings, BAD on failure or silence, health, and
reconnects that back off — against a real core."""

from __future__ import annotations

import asyncio
import time

import pytest

from extensions.sdk import Extension, PointSpec, PushedDevice, Reading
from extensions.sdk.testing import TestSite, until
from smx.quality import QUALITIES
from tests.extensions.test_sdk import get, points_or_none


class Feed(PushedDevice):
    """A push source fed by the test: each session connects, then delivers what is queued."""

    silence_timeout = 0.6
    reconnect_delay = 0.1
    max_backoff = 0.4

    def __init__(self) -> None:
        self.name = "feed"
        self.queue: asyncio.Queue[dict | Exception | None] = asyncio.Queue()
        self.sessions: list[float] = []

    async def run(self) -> None:
        self.sessions.append(time.monotonic())
        while True:
            item = await self.queue.get()
            if item is None:
                return  # the peer closed the connection
            if isinstance(item, Exception):
                raise item
            self.publish(item)


@pytest.fixture(scope="module")
def site():
    with TestSite({"ev1": ("trusted", ["trusted-extension"], [])}) as s:
        yield s


async def test_pushed_readings_failures_silence_and_reconnects(site):
    ext = Extension(site.env("ev1"))
    ext.declare(PointSpec("ev1/P", unit="W"), PointSpec("ev1/SoC", unit="%"))
    feed = Feed()
    ext.add_device(feed)
    await ext.start()
    try:
        feed.queue.put_nowait({"ev1/P": 7400.0, "ev1/SoC": Reading(40.0, "UNCERTAIN", 1.7e9)})
        got = await until(lambda: points_or_none(site, "ev1/P", "ev1/SoC"))
        assert got["ev1/P"].value.double_value == 7400.0
        assert got["ev1/SoC"].quality == QUALITIES["UNCERTAIN"]
        assert got["ev1/SoC"].source_time.seconds == int(1.7e9)
        assert ext.health()["state"] == "running"

        # The source reports trouble without losing its connection: BAD, degraded.
        feed.failed("charger reports fault F12")
        got = await until(lambda: _quality(site, "ev1/P", "BAD"))
        assert got["ev1/P"].value.double_value == 7400.0  # the last good value, marked BAD
        health = ext.health()
        assert health["state"] == "degraded" and "F12" in health["last_error"]
        feed.queue.put_nowait({"ev1/P": 7000.0})
        await until(lambda: _quality(site, "ev1/P", "GOOD"))
        assert len(feed.sessions) == 1  # still the same session

        # Silence longer than silence_timeout: BAD, and the SDK reconnects.
        got = await until(lambda: _quality(site, "ev1/P", "BAD"), timeout=5)
        assert "no data for 0.6 s" in ext.health()["last_error"]
        await until(lambda: len(feed.sessions) >= 2, timeout=5)

        # Sessions that fail at once back off: 0.1, 0.2, 0.4, 0.4 s apart.
        for _ in range(5):
            feed.queue.put_nowait(ConnectionResetError("peer reset"))
        await until(lambda: len(feed.sessions) >= 6, timeout=10)
        gaps = [b - a for a, b in zip(feed.sessions[-5:], feed.sessions[-4:], strict=False)]
        assert gaps[-1] >= 0.35 and gaps[-1] > gaps[0]
        state = dict((d.name, s) for d, s in ext.devices)["feed"]
        assert not state.ok and "peer reset" in state.last_error

        # Data again: ok, back-off reset.
        feed.queue.put_nowait({"ev1/P": 6000.0})
        await until(lambda: _quality(site, "ev1/P", "GOOD"), timeout=5)
        assert state.ok and state.consecutive_failures == 0
    finally:
        await ext.stop()


async def _quality(site, name, quality):
    got = await get(site, name)
    return got if got[name].quality == QUALITIES[quality] else None


def test_a_device_publishes_only_once_added():
    with pytest.raises(RuntimeError, match="add it to an Extension"):
        Feed().publish({"ev1/P": 1.0})


class DatedFeed(Feed):
    """A source that dates its data and has a connection flag (an OCPP charger)."""

    silence_timeout = None
    keep_source_times = True

    def __init__(self) -> None:
        super().__init__()
        self.name = "dated"

    def failure_readings(self, err: BaseException | str) -> dict[str, bool]:
        return {"ev1/online": False}


async def test_a_failure_can_keep_source_times_and_state_itself(site):
    ext = Extension(site.env("ev1"))
    ext.declare(PointSpec("ev1/P2", unit="W"), PointSpec("ev1/online", kind="bool"))
    feed = DatedFeed()
    ext.add_device(feed)
    await ext.start()
    try:
        feed.queue.put_nowait({"ev1/online": True, "ev1/P2": Reading(7400.0, "GOOD", 1.7e9)})
        await until(lambda: _quality(site, "ev1/P2", "GOOD"))
        feed.queue.put_nowait(ConnectionResetError("charger gone"))
        got = await until(lambda: _quality(site, "ev1/P2", "BAD"))
        assert got["ev1/P2"].value.double_value == 7400.0
        assert got["ev1/P2"].source_time.seconds == int(1.7e9)  # its own time, not now
        online = (await get(site, "ev1/online"))["ev1/online"]
        assert online.quality == QUALITIES["GOOD"] and online.value.bool_value is False
        assert ext.health()["state"] == "degraded"
    finally:
        await ext.stop()
