"""`Extension`: a process that owns devices — it declares their points, publishes their readings,
applies the setpoints the core routes to it, and runs until SIGTERM. It is an `smx.sdk.Runtime`
(settings, hooks, background tasks, health, logs, exit codes) with devices and setpoint handlers.

    ext = Extension.from_environ()
    ext.declare(PointSpec("battery/P", unit="W", period=1.0))
    ext.add_device(MyBattery(ext.settings(BatterySettings)))

    @ext.on_setpoint("battery/P_set", timeout=5.0)
    async def set_power(req): ...

    raise SystemExit(ext.run())
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from smx.health import DeviceHealth, HealthReport
from smx.process_env import ProcessEnv, SetupError
from smx.quality import quality_code
from smx.sdk import PointSpec, Runtime
from smx.timestamps import ts_of
from smx.v1 import point_pb2
from smx.values import to_value
from smx.vocabulary import check_declaration, lookup

from .devices import DeviceState, PolledDevice, Publish, poll_forever
from .pushed import PushedDevice, attach, push_forever
from .setpoint_worker import check_handler
from .setpoints import DEFAULT_TIMEOUT, ExpiryHandler, Handler, SetpointRouter

__all__ = ["Extension", "main_of"]

log = logging.getLogger(__name__)

AnyDevice = PolledDevice | PushedDevice


class Extension(Runtime):
    def __init__(self, env: ProcessEnv) -> None:
        super().__init__(env)
        self.setpoints = SetpointRouter(self.client)
        self.devices: list[tuple[AnyDevice, DeviceState]] = []
        # Health of what the extension drives itself (a link, a mirror): not polled by the SDK.
        self.links: dict[str, DeviceState] = {}
        self._refused_late: set[str] = set()  # described by a device against the vocabulary

    @property
    def device_ids(self) -> tuple[str, ...]:
        """The device ids this extension owns (site.toml `devices`, default its name)."""
        return self.env.device_ids

    # -- what the author declares -------------------------------------------------------------

    def declare(self, *specs: PointSpec | Iterable[PointSpec]) -> None:
        """Points this extension owns, declared before their first value and after every
        reconnect. A unit or kind that contradicts the vocabulary (docs/DATA-MODEL.md) is a
        SetupError naming the point."""
        flat = [
            spec for item in specs for spec in ([item] if isinstance(item, PointSpec) else item)
        ]
        for spec in flat:
            problem = check_declaration(spec.name, spec.unit, spec.kind)
            if problem:
                raise SetupError(problem)
        self.client.declare(flat)

    def add_device(self, device: AnyDevice) -> None:
        """A `PolledDevice` (polled every `interval`) or a `PushedDevice` (runs its sessions);
        both started with the extension, isolated from each other."""
        if any(known.name == device.name for known, _ in self.devices):
            # The name keys its health entry and its log lines: two would merge silently.
            raise ValueError(f"two devices named {device.name!r}: give each device its own name")
        state = DeviceState()
        if isinstance(device, PushedDevice):
            attach(device, state, self._publisher_of(device))
        elif not isinstance(device, PolledDevice):
            raise TypeError(f"{device!r} is neither a PolledDevice nor a PushedDevice")
        self.devices.append((device, state))

    def link_health(self, name: str) -> DeviceState:
        """The health entry of something this extension drives itself (a remote link): set
        its `ok` and `last_error`; a link not ok makes the extension degraded in `smx status`."""
        if name in self.links or any(known.name == name for known, _ in self.devices):
            raise ValueError(f"two health entries named {name!r}")
        state = self.links[name] = DeviceState()
        return state

    def on_setpoint(
        self,
        name: str,
        *,
        on_expire: ExpiryHandler | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Callable[[Handler], Handler]:
        """Decorator: `handler(request) -> Applied | Clamped | Rejected` for setpoint `name`
        (an exact name of this extension's devices, e.g. "battery/P_set", or a glob). A
        handler still running after `timeout` s has failed: the setpoint is rejected.
        `on_expire(request)` runs once when the setpoint in force expires (fall back)."""

        def register(handler: Handler) -> Handler:
            self.setpoints.add(name, handler, on_expire, timeout)
            return handler

        return register

    def on_setpoint_expired(self, name: str) -> Callable[[ExpiryHandler], ExpiryHandler]:
        """Decorator: called once when the setpoint in force for `name` expires (fall back)."""

        def register(handler: ExpiryHandler) -> ExpiryHandler:
            check_handler(handler, "expiry handler")
            self.setpoints.expiry_handlers[name] = handler
            return handler

        return register

    # -- writing ------------------------------------------------------------------------------

    def publish(
        self, name: str, value: Any, quality: str = "GOOD", source_time: Any = None
    ) -> None:
        """Record a new value (an int of a `double` point is sent as a double); it is written
        with the next batch, or when the core is back. `source_time`: unix seconds, a datetime
        or None for now."""
        spec = self.client.declared(name)
        self.client.publish_sample(
            point_pb2.PointSample(
                name=name,
                value=to_value(value, spec.kind if spec else None),
                source_time=ts_of(source_time),
                quality=quality_code(quality),
            )
        )

    def publish_sample(self, sample: point_pb2.PointSample) -> None:
        """Write a sample exactly as given — value kind, quality, source time (mirrors and
        proxies pass on what their source said)."""
        self.client.publish_sample(sample)

    # -- running ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._declare_setpoints_without_spec()
        await super().start()
        self.tasks.spawn(self.setpoints.run(), "setpoints")
        for device, state in self.devices:
            if isinstance(device, PushedDevice):
                self.tasks.spawn(push_forever(device, state), f"device-{device.name}")
            else:
                publish = self._publisher_of(device)
                self.tasks.spawn(poll_forever(device, state, publish), f"device-{device.name}")

    async def _close(self) -> None:
        for device, _ in self.devices:
            try:
                await device.close()
            except Exception as err:  # one device failing to close must not keep the others
                log.warning("closing device %s failed: %s", device.name, err)

    def describe(self) -> str:
        return (
            f"{len(self.client.declared_names())} points, {len(self.devices)} devices, "
            f"{len(self.setpoints.watched)} setpoint handlers"
        )

    # -- health -------------------------------------------------------------------------------

    def devices_health(self) -> dict[str, DeviceHealth]:
        states = [(d.name, s) for d, s in self.devices] + list(self.links.items())
        return {
            name: DeviceHealth(ok=s.ok, last_error=s.last_error, failures=s.failures)
            for name, s in states
        }

    def health_points(self, report: HealthReport) -> dict[str, Any]:
        points = super().health_points(report)
        points[f"{self.name}/ext.devices_ok"] = sum(1 for d in report.devices.values() if d.ok)
        return points

    # -- internals ----------------------------------------------------------------------------

    def _declare_setpoints_without_spec(self) -> None:
        # The core routes setpoints only to declared points: a handler declares its point when
        # the author did not, with the vocabulary's unit and kind where it has them.
        for name in self.setpoints.handlers:
            if self.client.declared(name) is None:
                term = lookup(name)
                unit, kind = (term.unit, term.kind) if term else ("", None)
                self.client.declare([PointSpec(name, unit=unit, kind=kind, description="setpoint")])

    def _publisher_of(self, device: AnyDevice) -> Publish:
        def publish(name: str, value: Any, quality: str, source_time: Any) -> None:
            if self.client.declared(name) is None and not self._declare_late(device, name):
                return
            self.publish(name, value, quality, source_time)

        return publish

    def _declare_late(self, device: AnyDevice, name: str) -> bool:
        """A point the device found after start (tariff, billing registers): declared before
        its first write when the device describes it; False when it must not be written."""
        if name in self._refused_late:
            return False
        spec = device.describe(name)
        if spec is None:
            return True  # written undeclared, as before declarations existed
        problem = check_declaration(spec.name, spec.unit, spec.kind)
        if problem:
            self._refused_late.add(name)
            log.error("device %s: %s; not written", device.name, problem)
            return False
        self.client.declare([spec])
        return True


main_of = Extension.main_of
