"""Devices and their bookkeeping: what the SDK records for every device, whether it is polled
(`PolledDevice`, here) or pushes its data (`PushedDevice`, pushed.py).

Both shapes share the same bookkeeping, so they look the same in health and in the core: a
success marks the device ok and publishes its readings; after a failure its points are
republished as BAD (last value kept, docs/DATA-MODEL.md), the device is not ok, and the next try
backs off exponentially up to `max_backoff`.

Polling: one task per device. Each poll gets a timeout, so a dead device costs its own task a
timeout and nothing else; devices that share a bus (one RS-485 line) take turns through a
per-bus lock with a minimum gap between polls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from smx.sdk.points import PointSpec
from smx.vocabulary import is_billing_snapshot

from .values import Reading

__all__ = [
    "Device",
    "DeviceState",
    "PolledDevice",
    "Publish",
    "backoff",
    "poll_forever",
    "record_failure",
    "record_success",
]

log = logging.getLogger(__name__)

# publish(name, value, quality, source_time)
Publish = Callable[[str, Any, str, Any], None]
# 2**1024 does not fit a float: a device dead for days must not crash its loop.
_MAX_DOUBLINGS = 32


@dataclass
class DeviceState:
    ok: bool = False
    polls: int = 0  # tries: polls, or sessions and failures of a pushed device
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str = ""
    last_ok: float = 0.0  # unix seconds of the last readings
    last_values: dict[str, Any] = field(default_factory=dict)
    last_times: dict[str, Any] = field(default_factory=dict)  # their source times (None: read)


def backoff(base: float, doublings: int, max_backoff: float) -> float:
    """Seconds to wait before the next try: `base` doubled `doublings` times, at most
    `max_backoff`."""
    return float(min(base * 2 ** max(0, min(doublings, _MAX_DOUBLINGS)), max_backoff))


def record_success(
    name: str, state: DeviceState, readings: Mapping[str, Any], publish: Publish
) -> None:
    """Readings arrived: the device is ok, each reading is published (GOOD unless a `Reading`
    says otherwise)."""
    if not state.ok and state.failures:
        log.info("device %s is back after %d failures", name, state.consecutive_failures)
    state.ok, state.consecutive_failures, state.last_error = True, 0, ""
    state.polls += 1
    state.last_ok = time.time()
    for point, reading in readings.items():
        if isinstance(reading, Reading):
            publish(point, reading.value, reading.quality, reading.source_time)
            state.last_values[point] = reading.value
            state.last_times[point] = reading.source_time
        else:
            publish(point, reading, "GOOD", None)
            state.last_values[point] = reading
            state.last_times[point] = None


def record_failure(
    name: str,
    state: DeviceState,
    err: BaseException | str,
    publish: Publish,
    *,
    keep_source_times: bool = False,
    stating: Mapping[str, Any] | None = None,
) -> None:
    """A read, a session or the device itself failed: not ok, last values BAD, logged without
    flooding (the 1st, 5th, 50th and every 500th failure in a row).

    `keep_source_times`: the BAD samples carry each value's own source time (a device with a
    clock of its own: the time it measured the value), not the time of the failure.
    `stating`: readings that state the failure itself (a connection flag turned False),
    published as given (GOOD unless a `Reading` says otherwise) instead of marked BAD."""
    state.polls += 1
    state.failures += 1
    state.consecutive_failures += 1
    text = describe_failure(err)
    state.last_error = text
    if state.consecutive_failures == 1:
        log.warning("device %s failed: %s", name, text)
        # docs/DATA-MODEL.md: BAD = the last read failed; the value is the last good one.
        # A billing snapshot is a record the meter dated: a failed read does not make it bad
        # (and a BAD sample "now" would sit in its history among the billing dates).
        for point, value in state.last_values.items():
            if not is_billing_snapshot(point) and point not in (stating or {}):
                at = state.last_times.get(point) if keep_source_times else None
                publish(point, value, "BAD", at)
    elif state.consecutive_failures in (5, 50) or state.consecutive_failures % 500 == 0:
        log.warning(
            "device %s: %d failures in a row, last: %s", name, state.consecutive_failures, text
        )
    for point, reading in (stating or {}).items():
        if isinstance(reading, Reading):
            publish(point, reading.value, reading.quality, reading.source_time)
            state.last_values[point], state.last_times[point] = reading.value, reading.source_time
        else:
            publish(point, reading, "GOOD", None)
            state.last_values[point], state.last_times[point] = reading, None
    state.ok = False


def describe_failure(err: BaseException | str) -> str:
    if isinstance(err, str):
        return err
    if isinstance(err, TimeoutError) and not str(err):
        return "timed out"
    return f"{type(err).__name__}: {err}"


class PolledDevice(ABC):
    """A device the SDK asks for its readings: subclass and implement `poll`. Class attributes
    are the defaults; set them per instance from the extension's config as needed."""

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


Device = PolledDevice  # the name of the polled shape before pushed devices existed

_bus_locks: dict[str, asyncio.Lock] = {}


async def poll_forever(device: PolledDevice, state: DeviceState, publish: Publish) -> None:
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
                    async with asyncio.timeout(device.timeout):
                        readings = await device.poll()
                    if device.bus_gap:
                        await asyncio.sleep(device.bus_gap)
            else:
                async with asyncio.timeout(device.timeout):
                    readings = await device.poll()
        except asyncio.CancelledError as err:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being stopped
            # A library cancelled something inside the poll: a failed poll, not our end.
            record_failure(device.name, state, err, publish)
            next_start = max(started + device.interval, loop.time())
            continue
        except Exception as err:  # a device error must never end the loop
            record_failure(device.name, state, err, publish)
            wait = backoff(device.interval, state.consecutive_failures, device.max_backoff)
            next_start = max(started + wait, loop.time())
            continue
        record_success(device.name, state, readings, publish)
        # Fixed-rate pacing; a poll that overran its interval starts the next one now rather
        # than piling up missed ticks.
        next_start = max(next_start + device.interval, loop.time())
