"""Polling devices: one task per device, paced, with back-off, isolated from each other.

A device is anything with an `async poll()` returning the current readings. Each poll gets a
timeout, so a dead device costs its own task a timeout and nothing else; devices that share a
bus (one RS-485 line) take turns through a per-bus lock with a minimum gap between polls. After
a failure the device's points are republished as BAD (last value kept, DATA-MODEL.md) and the
next try backs off exponentially up to `max_backoff`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .values import PointSpec, Reading

__all__ = ["Device", "DeviceState", "poll_forever"]

log = logging.getLogger(__name__)


class Device(ABC):
    """Subclass and implement `poll`. Class attributes are the defaults; set them per instance
    from the extension's config as needed."""

    name: str = "device"
    interval: float = 1.0  # seconds between poll starts
    timeout: float = 5.0  # a poll taking longer counts as failed
    bus: str | None = None  # devices on the same bus are polled one at a time
    bus_gap: float = 0.0  # quiet time on the bus after each poll (e.g. Modbus RTU 3.5 chars)
    max_backoff: float = 60.0

    @abstractmethod
    async def poll(self) -> Mapping[str, Any]:
        """Readings by full point name: plain values (GOOD, read now) or `Reading`s."""

    def describe(self, name: str) -> PointSpec | None:
        """The spec of a point this device reports that was not declared up front (e.g. a
        meter's tariff or billing registers, known only after a first readout)."""
        return None

    async def close(self) -> None:  # noqa: B027 - optional hook, most devices hold nothing
        """Release the device (port, socket) on shutdown."""


@dataclass
class DeviceState:
    ok: bool = False
    polls: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str = ""
    last_ok: float = 0.0
    last_values: dict[str, Any] = field(default_factory=dict)


_bus_locks: dict[str, asyncio.Lock] = {}


async def poll_forever(
    device: Device,
    state: DeviceState,
    publish: Callable[[str, Any, str, Any], None],
) -> None:
    """Poll `device` until cancelled; `publish(name, value, quality, source_time)`."""
    lock = _bus_locks.setdefault(device.bus, asyncio.Lock()) if device.bus else None
    loop = asyncio.get_running_loop()
    next_start = loop.time()
    while True:
        delay = next_start - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        started = loop.time()
        try:
            if lock is not None:
                async with lock:
                    readings = await asyncio.wait_for(device.poll(), device.timeout)
                    if device.bus_gap:
                        await asyncio.sleep(device.bus_gap)
            else:
                readings = await asyncio.wait_for(device.poll(), device.timeout)
        except asyncio.CancelledError as err:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being stopped
            # A library cancelled something inside the poll: a failed poll, not our end.
            _failed(device, state, err, publish)
            next_start = max(started + device.interval, loop.time())
            continue
        except Exception as err:  # a device error must never end the loop
            _failed(device, state, err, publish)
            # Exponent capped: 2**1024 does not fit a float (a meter dead for 17 hours).
            tries = min(state.consecutive_failures, 32)
            backoff = min(device.interval * 2**tries, device.max_backoff)
            next_start = max(started + backoff, loop.time())
            continue
        _succeeded(device, state, readings, publish)
        # Fixed-rate pacing; a poll that overran its interval starts the next one now rather
        # than piling up missed ticks.
        next_start = max(next_start + device.interval, loop.time())


def _succeeded(
    device: Device,
    state: DeviceState,
    readings: Mapping[str, Any],
    publish: Callable[[str, Any, str, Any], None],
) -> None:
    if not state.ok and state.failures:
        log.info("device %s is back after %d failed polls", device.name, state.consecutive_failures)
    state.ok, state.consecutive_failures, state.last_error = True, 0, ""
    state.polls += 1
    state.last_ok = time.time()
    for name, reading in readings.items():
        if isinstance(reading, Reading):
            publish(name, reading.value, reading.quality, reading.source_time)
            state.last_values[name] = reading.value
        else:
            publish(name, reading, "GOOD", None)
            state.last_values[name] = reading


def _failed(
    device: Device,
    state: DeviceState,
    err: BaseException,
    publish: Callable[[str, Any, str, Any], None],
) -> None:
    state.polls += 1
    state.failures += 1
    state.consecutive_failures += 1
    text = "timed out" if isinstance(err, TimeoutError) else f"{type(err).__name__}: {err}"
    state.last_error = text
    if state.consecutive_failures == 1:
        log.warning("device %s poll failed: %s", device.name, text)
        # DATA-MODEL.md: BAD = the last read failed; the value is the last good one.
        for name, value in state.last_values.items():
            publish(name, value, "BAD", None)
    elif state.consecutive_failures in (5, 50) or state.consecutive_failures % 500 == 0:
        log.warning(
            "device %s: %d failed polls in a row, last: %s",
            device.name,
            state.consecutive_failures,
            text,
        )
    state.ok = False
