"""Up: the points of each configured device, followed on the core's watch (the snapshot, then
every change), published every `publish_every` seconds as one message per device, and, with
`on_change`, as soon as a point moves beyond its deadband (at most one such message per
`min_gap` per device). docs/LESSAG.md, "Measurements"."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from smx.sdk import PointUpdate

from .formats import influx_line, point_of, senml_json
from .settings import KIND_CODES, DeviceConfig, LessagConfig

__all__ = ["Device", "Measurements"]

log = logging.getLogger(__name__)

Submit = Callable[[str, bytes], object]


@dataclass
class Device:
    cfg: DeviceConfig
    topic: str
    measurement: str
    base_name: str
    format: str
    latest: dict[str, PointUpdate] = field(default_factory=dict)
    published: dict[str, float] = field(default_factory=dict)  # point -> value last sent
    last_sent: float = 0.0  # monotonic
    changed: bool = False  # something new since the last message
    due: bool = False  # an on-change message is scheduled

    def patterns(self) -> list[str]:
        return [f"{self.cfg.id}/{p}" for p in self.cfg.points]


def build_devices(cfg: LessagConfig, site: str, prefix: str) -> dict[str, Device]:
    devices = {}
    for d in cfg.devices:
        flat = d.id.replace("/", "-")
        fill = {"site": site, "prefix": prefix, "device": d.id}
        devices[d.id] = Device(
            cfg=d,
            topic=(d.topic or cfg.topic).format(**fill),
            measurement=(d.measurement or cfg.measurement).format(**{**fill, "device": flat}),
            base_name=f"{site}/{d.id}/",
            format=d.format or cfg.format,
        )
    return devices


class Measurements:
    def __init__(self, cfg: LessagConfig, devices: dict[str, Device], submit: Submit) -> None:
        self.cfg = cfg
        self.devices = devices
        self.submit = submit
        self.marked = cfg.other_qualities == "mark"
        self.messages = 0

    def patterns(self) -> list[str]:
        return [p for d in self.devices.values() for p in d.patterns()]

    def update(self, p: PointUpdate) -> None:
        """A value from the core's watch."""
        device = self.devices.get(p.name.rsplit("/", 1)[0])
        if device is None:
            return
        device.latest[p.name] = p
        device.changed = True
        if self.cfg.on_change and not device.due and self._beyond_deadband(device, p):
            if time.monotonic() - device.last_sent >= self.cfg.min_gap:
                # Soon, not now: the rest of the watch message (the device's other points
                # written in the same batch) is delivered first and goes in the same message.
                device.due = True
                asyncio.get_running_loop().call_soon(self._publish_due, device)

    def _publish_due(self, device: Device) -> None:
        if device.due:
            self.publish(device)

    def _beyond_deadband(self, device: Device, p: PointUpdate) -> bool:
        band = self.cfg.deadband.get(point_of(p.name))
        if band is None or not isinstance(p.value, int | float) or isinstance(p.value, bool):
            return False
        last = device.published.get(p.name)
        return last is None or abs(float(p.value) - last) > float(band)

    def encode(self, device: Device) -> bytes:
        readings = list(device.latest.values())
        if device.format == "influx":
            return influx_line(
                device.measurement, KIND_CODES[device.cfg.type], readings, self.marked
            )
        return senml_json(device.base_name, readings, self.marked)

    def publish(self, device: Device) -> None:
        payload = self.encode(device)
        device.last_sent = time.monotonic()
        device.changed = device.due = False
        if not payload:
            return
        for name, p in device.latest.items():
            if isinstance(p.value, int | float) and not isinstance(p.value, bool):
                device.published[name] = float(p.value)
        self.submit(device.topic, payload)
        self.messages += 1

    async def run(self) -> None:
        """Every `publish_every`, on a fixed rate: one message per device that has values."""
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.cfg.publish_every
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += self.cfg.publish_every
            if next_at < loop.time():  # far behind (a suspended process): no burst
                next_at = loop.time() + self.cfg.publish_every
            for device in self.devices.values():
                if device.latest:
                    self.publish(device)
