"""Devices that push their data (OCPP chargers, MQTT sources, IEC 62056-21 mode D meters,
mirrors): the source receives on its own schedule and hands over what arrives with
`self.publish(readings)`; it reports trouble with `self.failed(err)`.

The SDK runs `run()` — one session: connect, then receive until the connection ends — and calls
it again after a back-off whenever it returns or raises. It keeps the same bookkeeping as for
polled devices (devices.py): readings mark the device ok; a failure, an ended session or
`silence_timeout` seconds without data mark it not ok and its points BAD (last value kept; with
`keep_source_times` each with its own source time; `failure_readings` state the failure itself,
e.g. a connection flag turned False, GOOD), and reconnects back off exponentially up to
`max_backoff`, from `reconnect_delay` again once a session delivered data.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smx.sdk.points import PointSpec

from .devices import DeviceState, Publish, backoff, record_failure, record_success

__all__ = ["PushedDevice", "push_forever"]

log = logging.getLogger(__name__)


class SessionEnded(Exception):
    """`run()` returned: the connection is gone, reconnect."""


@dataclass
class _Feed:
    """Where a pushed device's data goes, once the extension owns it."""

    state: DeviceState
    publish: Publish
    arrived: asyncio.Event


class PushedDevice(ABC):
    """Subclass and implement `run`; call `self.publish(...)` from it (or from callbacks it
    sets up) for every batch of readings. Class attributes are the defaults."""

    name: str = "device"
    # No data for this long since the session started or the last readings: failed, reconnect.
    # None: a quiet source is fine.
    silence_timeout: float | None = None
    reconnect_delay: float = 1.0  # first wait before calling `run` again
    max_backoff: float = 60.0
    # At a failure, the BAD samples keep each value's own source time (a source that dates its
    # data, e.g. OCPP MeterValues), not the failure's time.
    keep_source_times: bool = False
    _feed: _Feed | None = None  # set by Extension.add_device

    @abstractmethod
    async def run(self) -> None:
        """One session: connect, receive and `publish` until the connection ends."""

    def publish(self, readings: Mapping[str, Any]) -> None:
        """Readings by full point name: plain values (GOOD, read now) or `Reading`s."""
        feed = self._attached()
        record_success(self.name, feed.state, readings, feed.publish)
        feed.arrived.set()

    def failed(self, err: BaseException | str) -> None:
        """The source is in trouble but the session goes on (an error frame, a fault state):
        the device is not ok and its points BAD until the next readings."""
        feed = self._attached()
        record_failure(
            self.name,
            feed.state,
            err,
            feed.publish,
            keep_source_times=self.keep_source_times,
            stating=self.failure_readings(err),
        )

    def failure_readings(self, err: BaseException | str) -> Mapping[str, Any]:
        """Readings that state a failure itself (e.g. `{"ev1/online": False}`), published as
        given instead of marked BAD with the other points. None by default."""
        return {}

    def describe(self, name: str) -> PointSpec | None:
        """The spec of a point this device reports that was not declared up front."""
        return None

    async def close(self) -> None:  # noqa: B027 - optional hook, most devices hold nothing
        """Release the device (port, socket) on shutdown."""

    def _attached(self) -> _Feed:
        if self._feed is None:
            raise RuntimeError(f"device {self.name}: add it to an Extension before publishing")
        return self._feed


def attach(device: PushedDevice, state: DeviceState, publish: Publish) -> None:
    device._feed = _Feed(state, publish, asyncio.Event())


async def push_forever(device: PushedDevice, state: DeviceState) -> None:
    """Run `device`'s sessions until cancelled (the device must be attached)."""
    feed = device._attached()
    while True:
        feed.arrived.clear()
        try:
            await _session(device, feed)
            err: BaseException = SessionEnded("the connection ended")
        except asyncio.CancelledError as cancelled:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being stopped
            err = cancelled  # cancelled inside the session by a library: a failed session
        except Exception as failure:  # a device error must never end the loop
            err = failure
        record_failure(
            device.name,
            state,
            err,
            feed.publish,
            keep_source_times=device.keep_source_times,
            stating=device.failure_readings(err),
        )
        # The first retry after `reconnect_delay`, then doubling.
        doublings = state.consecutive_failures - 1
        await asyncio.sleep(backoff(device.reconnect_delay, doublings, device.max_backoff))


async def _session(device: PushedDevice, feed: _Feed) -> None:
    """`device.run()`, cut off after `silence_timeout` seconds without data."""
    session = asyncio.ensure_future(device.run())
    try:
        while True:
            if device.silence_timeout is None:
                await session
                return
            arrived = asyncio.ensure_future(feed.arrived.wait())
            done, _ = await asyncio.wait(
                {session, arrived},
                timeout=device.silence_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            arrived.cancel()
            if session in done:
                session.result()  # raises what the session raised
                return
            if not done:
                raise TimeoutError(f"no data for {device.silence_timeout:g} s")
            feed.arrived.clear()
    finally:
        if not session.done():
            session.cancel()
            await asyncio.gather(session, return_exceptions=True)
