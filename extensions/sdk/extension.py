"""`Extension`: what an extension author uses. It ties together the core link, the publisher,
device polling, setpoint handlers, point subscriptions and health, and runs until SIGTERM.

    ext = Extension.from_environ()
    ext.declare(PointSpec("battery/P", unit="W", period=1.0))
    ext.add_device(MyBattery(ext.config))

    @ext.on_setpoint("battery/P_set")
    async def set_power(req): ...

    ext.run()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc

from smx.v1 import control_service_pb2 as control_pb
from smx.v1 import point_pb2
from smx.v1 import point_service_pb2 as pb

from .devices import Device, DeviceState, poll_forever
from .env import ExtensionEnv, SetupError
from .health import write_health_file
from .link import TRANSIENT, CoreLink
from .logs import configure_logging
from .publisher import Publisher
from .setpoints import ExpiryHandler, Handler, SetpointRouter
from .subscriptions import Callback, Subscription
from .values import QUALITIES, PointSpec, timestamp, to_value

__all__ = ["Extension"]

log = logging.getLogger(__name__)

HEALTH_PERIOD = 2.0
STOP_FLUSH_TIMEOUT = 2.0


class Extension:
    def __init__(self, env: ExtensionEnv) -> None:
        self.env = env
        self.link = CoreLink(env)
        self.publisher = Publisher(self.link)
        self.setpoints = SetpointRouter(self.link)
        self.specs: dict[str, PointSpec] = {}
        self.devices: list[tuple[Device, DeviceState]] = []
        self.subscriptions: list[Subscription] = []
        self.state = "starting"
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: list[tuple[Callable[[], Any], str]] = []
        self.link.on_connect(self._declare)
        self._undeclared: list[str] = []  # described by their device, not declared yet
        self.publisher.before_flush = self._declare_new
        self.link.on_connect(self._connected)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Extension:
        return cls(ExtensionEnv.from_environ(environ))

    @property
    def name(self) -> str:
        return self.env.name

    @property
    def config(self) -> Mapping[str, Any]:
        return self.env.config

    # -- what the author declares -------------------------------------------------------------

    def declare(self, *specs: PointSpec | Iterable[PointSpec]) -> None:
        for item in specs:
            for spec in [item] if isinstance(item, PointSpec) else item:
                self.specs[spec.name] = spec

    def add_device(self, device: Device) -> None:
        self.devices.append((device, DeviceState()))

    def on_setpoint(
        self, name: str, *, on_expire: ExpiryHandler | None = None
    ) -> Callable[[Handler], Handler]:
        """Decorator: `handler(request) -> Applied | Clamped | Rejected` for setpoint `name`
        (a point of this extension's devices, e.g. "battery/P_set")."""

        def register(handler: Handler) -> Handler:
            self.setpoints.add(name, handler, on_expire)
            return handler

        return register

    def on_setpoint_expired(self, name: str) -> Callable[[ExpiryHandler], ExpiryHandler]:
        """Decorator: called once when the setpoint in force for `name` expires (fall back)."""

        def register(handler: ExpiryHandler) -> ExpiryHandler:
            self.setpoints.expiry_handlers[name] = handler
            return handler

        return register

    def background(self, task: Callable[[], Any], name: str = "background") -> None:
        """Run `task()` (an author's own coroutine function) alongside the extension, from
        `start` until `stop`; if it crashes, the extension stops so the supervisor restarts
        the process cleanly."""
        self._background.append((task, name))

    def subscribe(self, patterns: list[str], callback: Callback) -> Subscription:
        """Follow other points (read rights needed); `callback(PointUpdate)` per change."""
        sub = Subscription(self.link, patterns, callback)
        self.subscriptions.append(sub)
        return sub

    async def request_setpoint(
        self, name: str, value: Any, valid_for: float
    ) -> control_pb.Setpoint:
        """For agents and controllers: ask the owner of `name` to apply `value` for
        `valid_for` seconds. Raises grpc.aio.AioRpcError when refused or the core is away."""
        await self.link.connected.wait()
        assert self.link.stubs is not None
        request = control_pb.RequestSetpointRequest(name=name, value=to_value(value))
        request.valid_for.FromNanoseconds(int(valid_for * 1e9))
        reply = await self.link.stubs.control.RequestSetpoint(request, timeout=10)
        return reply.setpoint

    async def setpoint_status(self, setpoint_id: str) -> control_pb.Setpoint:
        assert self.link.stubs is not None
        reply = await self.link.stubs.control.GetSetpoint(
            control_pb.GetSetpointRequest(id=setpoint_id), timeout=10
        )
        return reply.setpoint

    def publish(
        self, name: str, value: Any, quality: str = "GOOD", source_time: Any = None
    ) -> None:
        """Record a new value; it is written with the next batch (or when the core is back)."""
        spec = self.specs.get(name)
        sample = point_pb2.PointSample(
            name=name,
            value=to_value(value, spec.kind if spec else None),
            source_time=timestamp(source_time),
            quality=QUALITIES[quality],
        )
        self.publisher.publish(sample)

    # -- running ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every task (the core link, polling, setpoints, subscriptions, health)."""
        self.link.open()
        spawn = self._spawn
        spawn(self.link.run(), "core-link")
        spawn(self.publisher.run(), "publisher")
        spawn(self.setpoints.run(), "setpoints")
        for device, state in self.devices:
            spawn(poll_forever(device, state, self._publisher_of(device)), f"poll-{device.name}")
        for sub in self.subscriptions:
            spawn(sub.run(), f"watch-{','.join(sub.patterns)}")
        spawn(self._health_loop(), "health")
        for task, name in self._background:
            spawn(task(), name)

    async def stop(self) -> None:
        """Clean shutdown: stop polling, write what is pending (briefly), close devices."""
        self.state = "stopping"
        self._write_health()
        for task in self._tasks:
            if task.get_name() not in ("core-link", "publisher"):
                task.cancel()
        if self.link.connected.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.publisher.flush(), STOP_FLUSH_TIMEOUT)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for device, _ in self.devices:
            with contextlib.suppress(Exception):
                await device.close()
        await self.link.close()

    async def main(self) -> None:
        """Run until SIGTERM or SIGINT."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        await self.start()
        log.info(
            "extension %s started: %d points, %d devices, %d setpoint handlers",
            self.name,
            len(self.specs),
            len(self.devices),
            len(self.setpoints.handlers),
        )
        await self._stop.wait()
        log.info("stopping")
        await self.stop()

    def run(self) -> int:
        """The process entry point: logs, environment checks, main loop; returns the exit code."""
        configure_logging(self.name)
        try:
            self.env.check_certificate()
        except SetupError as err:
            log.error("cannot start: %s", err)
            return 2
        asyncio.run(self.main())
        return 0

    def request_stop(self) -> None:
        self._stop.set()

    # -- internals ----------------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            if self.state == "stopping":
                return
            # Cancelled by something other than stop(): the task is gone all the same.
            log.error("task %s was cancelled unexpectedly; stopping", task.get_name())
            self.state = "failed"
            self._stop.set()
            return
        if task.exception() is None:
            return
        # A crashed internal task leaves the extension half-working: stop, let the supervisor
        # restart the process cleanly.
        log.error("task %s crashed: %r; stopping", task.get_name(), task.exception())
        self.state = "failed"
        self._stop.set()

    def _publisher_of(self, device: Device) -> Callable[[str, Any, str, Any], None]:
        def publish(name: str, value: Any, quality: str, source_time: Any) -> None:
            if name not in self.specs:
                spec = device.describe(name)
                if spec is not None:
                    self.specs[name] = spec
                    self._undeclared.append(name)
            self.publish(name, value, quality, source_time)

        return publish

    async def _declare_new(self) -> None:
        if not self._undeclared or self.link.stubs is None:
            return
        names, self._undeclared = self._undeclared, []
        try:
            await self.link.stubs.points.DeclarePoints(
                pb.DeclarePointsRequest(points=[self.specs[n].metadata() for n in names]),
                timeout=10,
            )
        except grpc.aio.AioRpcError as err:
            if err.code() in TRANSIENT:
                self._undeclared += names  # declared on reconnect anyway; keep for the retry
            else:
                log.error("core refused to declare %s: %s", names, err.details())

    async def _connected(self) -> None:
        # Runs before the link reports itself connected: tell the supervisor right after.
        asyncio.get_running_loop().call_soon(self._write_health)

    async def _declare(self) -> None:
        metas = [s.metadata() for s in self.specs.values()]
        # The core routes setpoints only to declared points: a handler declares its point
        # when the author did not (kind left open).
        metas += [
            point_pb2.PointMetadata(name=name, description="setpoint")
            for name in self.setpoints.handlers
            if name not in self.specs
        ]
        if not metas:
            return
        assert self.link.stubs is not None
        await self.link.stubs.points.DeclarePoints(
            pb.DeclarePointsRequest(points=metas), timeout=10
        )

    def health(self) -> dict[str, Any]:
        devices = {
            d.name: {"ok": s.ok, "last_error": s.last_error, "failures": s.failures}
            for d, s in self.devices
        }
        bad = [name for name, d in devices.items() if not d["ok"]]
        if self.state in ("starting", "running", "degraded"):
            self.state = "degraded" if bad or not self.link.connected.is_set() else "running"
            if not self.link.connected.is_set() and not self.link.identity:
                self.state = "starting"
        errors = [f"{n}: {devices[n]['last_error']}" for n in bad if devices[n]["last_error"]]
        last_error = self.link.last_error or "; ".join(errors)
        return {
            "state": self.state,
            "core_connected": self.link.connected.is_set(),
            "last_error": last_error,
            "devices": devices,
        }

    def _write_health(self) -> dict[str, Any]:
        h = self.health()
        if self.env.health_file is not None:
            try:
                write_health_file(
                    self.env.health_file,
                    h["state"],
                    h["core_connected"],
                    h["last_error"],
                    h["devices"],
                )
            except OSError as err:
                log.warning("cannot write health file %s: %s", self.env.health_file, err)
        return h

    async def _health_loop(self) -> None:
        while True:
            h = self._write_health()
            ok = sum(1 for d in h["devices"].values() if d["ok"])
            self.publisher.publish(
                point_pb2.PointSample(name=f"{self.name}/ext.state", value=to_value(h["state"]))
            )
            self.publisher.publish(
                point_pb2.PointSample(name=f"{self.name}/ext.devices_ok", value=to_value(ok))
            )
            await asyncio.sleep(HEALTH_PERIOD)


def main_of(build: Callable[[Extension], None]) -> None:
    """`if __name__ == "__main__": main_of(setup)` — build the extension from the environment,
    let `setup(ext)` declare points and devices, run it, exit with its code."""
    try:
        ext = Extension.from_environ()
        build(ext)  # a bad config raises SetupError: one clear line, exit code 2
    except SetupError as err:
        print(f"cannot start: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    raise SystemExit(ext.run())
