"""`Runtime`: what every process under the supervisor shares, an agent (smx.sdk.Agent) or an
extension (extensions.sdk.Extension): its environment and typed settings, one `Client`, the
lifecycle hooks, background tasks, health (the health file for the supervisor, and the point
`<name>/ext.state` where the policy lets it write), logs, signals and exit codes.

Lifecycle: `start()` connects in the background and runs the `on_start` hooks; `on_connect`
hooks run after every (re)connection; `stop()` (SIGTERM, SIGINT, `request_stop()`) cancels the
tasks, runs the `on_stop` hooks, writes what is pending (briefly) and closes. `run()` is the
process entry point: exit code 0 after a clean stop, 1 after a crash, 2 when it cannot start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from smx.health import WRITE_PERIOD_S, DeviceHealth, HealthReport, write_health_file
from smx.process_env import ProcessEnv, RunPaths, SetupError
from smx.v1 import point_pb2
from smx.values import to_value

from .certificate import check_certificate
from .client import Client
from .config import parse_settings
from .logs import configure_logging
from .outcomes import OutcomeCallback, SetpointState
from .points import PointSpec
from .tasks import TaskSet
from .watch import Subscription, WatchCallback

__all__ = ["Runtime"]

log = logging.getLogger(__name__)

STOP_FLUSH_TIMEOUT = 2.0
# The health points are rewritten every WRITE_PERIOD_S: a process that stopped writing them is
# shown STALE by the core after a few missed writes.
HEALTH_POINT_PERIOD = 3 * WRITE_PERIOD_S
Hook = TypeVar("Hook", bound=Callable[[], Awaitable[None]])
T = TypeVar("T")
R = TypeVar("R", bound="Runtime")


class Runtime:
    def __init__(self, env: ProcessEnv) -> None:
        self.env = env
        self.tasks = TaskSet(on_crash=self._crashed)
        self.client = Client.from_env(env, tasks=self.tasks)
        self.state = "starting"
        self.crash = ""  # why a task crashed: the process stops as failed
        self._stop = asyncio.Event()
        self._config: dict[str, Any] | None = None
        self._on_start: list[Callable[[], Awaitable[None]]] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []
        self._background: list[tuple[Callable[[], Coroutine[Any, Any, Any]], str]] = []
        self._declared_health: dict[str, PointSpec] = {}
        self.client.on_connect(self._tell_supervisor_soon)

    @classmethod
    def from_environ(cls: type[R], environ: Mapping[str, str] | None = None) -> R:
        return cls(ProcessEnv.from_environ(os.environ if environ is None else environ))

    @classmethod
    def main_of(cls: type[R], setup: Callable[[R], object]) -> NoReturn:
        """`if __name__ == "__main__": Agent.main_of(setup)`: build the process from the
        environment, let `setup(process)` configure it, run it, exit with its code. A
        SetupError (a bad config, a missing variable) is one clear line and exit code 2."""
        try:
            process = cls.from_environ()
            setup(process)
        except SetupError as err:
            print(f"cannot start: {err}", file=sys.stderr)
            raise SystemExit(2) from err
        raise SystemExit(process.run())

    # -- who and where ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.env.name

    @property
    def site_dir(self) -> Path:
        """The site directory: relative paths in the config are relative to it."""
        return self.env.site_dir

    @property
    def state_dir(self) -> Path:
        """This process's own directory (`run/<name>/`): what must survive its restarts."""
        return RunPaths(self.site_dir).private_dir(self.name)

    @property
    def config(self) -> Mapping[str, Any]:
        """The raw `config` table from site.toml; prefer `settings(Schema)`."""
        if self._config is None:
            self._config = self.env.load_config()
        return self._config

    @property
    def config_key(self) -> str:
        """Where the config table is in site.toml, for error messages."""
        section = "agents" if self.env.domain == "untrusted" else "extensions"
        return f"{section}.{self.name}.config"

    def settings(self, schema: type[T]) -> T:
        """The config table checked against a dataclass (smx.sdk.config); SetupError names the
        key that is wrong, missing or unknown."""
        return parse_settings(schema, self.config, where=self.config_key, base_dir=self.site_dir)

    # -- hooks --------------------------------------------------------------------------------

    def on_start(self, hook: Hook) -> Hook:
        """Decorator: `await hook()` once, when the process starts (before it is connected)."""
        self._on_start.append(hook)
        return hook

    def on_connect(self, hook: Hook) -> Hook:
        """Decorator: `await hook()` after every (re)connection to the core."""
        return self.client.on_connect(hook)

    def on_stop(self, hook: Hook) -> Hook:
        """Decorator: `await hook()` once when stopping, after the background tasks ended and
        before the last writes: release what the process holds (the client still works)."""
        self._on_stop.append(hook)
        return hook

    def background(self, task: Callable[[], Coroutine[Any, Any, Any]], name: str = "") -> None:
        """Run `task()` (a coroutine function of yours) from `start` until `stop`; if it
        crashes, the process stops (exit code 1) and the supervisor restarts it cleanly."""
        self._background.append((task, name or getattr(task, "__name__", "background")))
        if self.tasks.named("health") is not None:  # already running
            self.tasks.spawn(task(), self._background[-1][1])

    # -- reading points and requesting setpoints (the client's, for short) -------------------

    def subscribe(self, patterns: list[str], callback: WatchCallback) -> Subscription:
        """Follow points (read rights needed): `callback(PointUpdate)` for the snapshot, then
        per change; resumed after a reconnect, re-snapshot after a core restart."""
        return self.client.watch(patterns, callback)

    async def request_setpoint(self, name: str, value: Any, valid_for: float) -> SetpointState:
        """Ask the owner of `name` to apply `value` for `valid_for` seconds (PENDING); raises
        grpc.aio.AioRpcError when the core refuses or is away."""
        return await self.client.request_setpoint(name, value, valid_for)

    async def outcome(self, setpoint_id: str, timeout: float | None = None) -> SetpointState:
        """Wait for the owner's answer to a setpoint this process requested (on a stream)."""
        return await self.client.outcome(setpoint_id, timeout)

    def on_outcome(self, callback: OutcomeCallback) -> OutcomeCallback:
        """Decorator: `callback(SetpointState)` for every change of this process's setpoints."""
        return self.client.on_outcome(callback)

    # -- running ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.client.start()
        self.tasks.spawn(self._health_loop(), "health")
        for task, name in self._background:
            self.tasks.spawn(task(), name)
        for hook in self._on_start:
            await hook()

    async def stop(self) -> None:
        if not self.crash:
            self.state = "stopping"
        self._write_health_file()
        await self.tasks.stop(keep={"core-link", "publisher"})
        for hook in self._on_stop:
            try:
                await hook()
            except Exception:
                log.exception("on_stop hook %s failed", getattr(hook, "__name__", hook))
        await self.client.flush(STOP_FLUSH_TIMEOUT)
        await self._close()
        await self.client.close()

    async def _close(self) -> None:
        """Release what the process holds (devices), after the last write."""

    def request_stop(self) -> None:
        self._stop.set()

    async def main(self) -> None:
        """Run until SIGTERM or SIGINT (or `request_stop`, or a crashed task)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        await self.start()
        log.info("%s started: %s", self.name, self.describe())
        await self._stop.wait()
        log.info("stopping")
        await self.stop()

    def run(self) -> int:
        """The process entry point: logs, certificate check, main loop; the exit code."""
        configure_logging(self.name)
        try:
            check_certificate(self.env.credentials, self.name, self.env.domain)
        except SetupError as err:
            log.error("cannot start: %s", err)
            return 2
        asyncio.run(self.main())
        return 1 if self.crash else 0

    def describe(self) -> str:
        """What the process runs, for its start-up log line."""
        return f"{len(self._background)} background tasks"

    # -- health -------------------------------------------------------------------------------

    def _crashed(self, why: str) -> None:
        self.crash = why
        self.state = "failed"
        self._write_health_file()
        self._stop.set()

    def devices_health(self) -> dict[str, DeviceHealth]:
        return {}

    def health(self) -> dict[str, Any]:
        """The health report as the health file holds it (state, last_error, devices...)."""
        return self.health_report().to_json()

    def health_report(self) -> HealthReport:
        devices = self.devices_health()
        client = self.client
        if self.crash:
            self.state = "failed"  # until the process exits
        elif self.state != "stopping":
            if client.refused:
                self.state = "failed"  # the core refuses our certificate: nothing can work
            elif not client.connected:
                self.state = "degraded" if client.identity else "starting"
            else:
                self.state = "running" if all(d.ok for d in devices.values()) else "degraded"
        errors = [f"{n}: {d.last_error}" for n, d in devices.items() if not d.ok and d.last_error]
        return HealthReport(
            state=self.state,
            core_connected=client.connected,
            last_error=self.crash or client.last_error or "; ".join(errors),
            devices=devices,
        )

    def _write_health_file(self) -> HealthReport:
        report = self.health_report()
        if self.env.health_file is not None:
            try:
                write_health_file(self.env.health_file, report)
            except OSError as err:
                log.warning("cannot write health file %s: %s", self.env.health_file, err)
        return report

    async def _tell_supervisor_soon(self) -> None:
        # Runs before the client counts as connected: write the health file right after, so
        # `smx status` shows the process up without waiting for the next period.
        asyncio.get_running_loop().call_soon(self._write_health_file)

    def health_points(self, report: HealthReport) -> dict[str, Any]:
        """The process's health as point values; extensions add their devices."""
        return {f"{self.name}/ext.state": report.state}

    async def _health_loop(self) -> None:
        # Looked at every second, written when it changed (state, connection, an error, a
        # device) and else every WRITE_PERIOD_S: each write costs an SD card a block.
        written: tuple[Any, ...] | None = None
        written_at = 0.0
        while True:
            report = self.health_report()
            now = time.monotonic()
            content = (report.state, report.core_connected, report.last_error, report.devices)
            if content != written or now - written_at >= WRITE_PERIOD_S:
                report = self._write_health_file()
                written = (report.state, report.core_connected, report.last_error, report.devices)
                written_at = now
                if self.client.connected:
                    self._publish_health(report)
            await asyncio.sleep(1.0)

    def _publish_health(self, report: HealthReport) -> None:
        # Only the points the policy lets this process write: a refused write is an audited
        # denial, and an agent's role may not grant it.
        for name, value in self.health_points(report).items():
            if not self.client.may("write", name):
                continue
            if name not in self._declared_health:
                kind = "string" if isinstance(value, str) else "int"
                spec = PointSpec(name, kind=kind, period=HEALTH_POINT_PERIOD)
                self._declared_health[name] = spec
                self.client.declare([spec])
            self.client.publish_sample(point_pb2.PointSample(name=name, value=to_value(value)))
