"""The smxcore process: the gRPC server on a Unix socket (and optionally TCP) with mTLS.

Given a health file (``smx core`` under the supervisor: ``SMX_HEALTH_FILE``), the core writes it
like every other process (smx.health): ``starting``, ``running`` once it serves, ``stopping``;
rewritten from its event loop every `WRITE_PERIOD_S`, so a hung loop shows as a stale file.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from smx.health import WRITE_PERIOD_S, HealthReport, write_health_file
from smx.v1 import (
    admin_service_pb2,
    control_service_pb2,
    identity_service_pb2,
    point_service_pb2,
)
from trusted.core.config import CoreConfig, non_default_settings, tcp_is_loopback
from trusted.core.rpc import service_handler
from trusted.core.services.admin import AdminService
from trusted.core.services.control import ControlService
from trusted.core.services.identity import IdentityService
from trusted.core.services.points import PointService
from trusted.core.site_files import SHARED_DIR_MODE, check_site, private_dir
from trusted.core.standard_services import CheckedHealth, add_reflection
from trusted.core.state import CoreState

__all__ = ["Core", "run_core", "run_on_fast_loop"]

log = logging.getLogger(__name__)

# grpc's own receive limit sits above ours, so that an oversized request reaches rpc.py and
# gets INVALID_ARGUMENT with a reason instead of grpc's bare RESOURCE_EXHAUSTED.
GRPC_RECEIVE_HEADROOM = 4


class Core:
    """A running core; `start()` then `wait()` / `stop()`."""

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self.state = CoreState(config)
        self.server: grpc.aio.Server | None = None
        self.health = CheckedHealth(self.state.gate)

    async def start(self) -> None:
        cfg = self.config
        # Before anything is opened: the private files must not be readable by other users.
        check_site(cfg.home, history=cfg.history.path, audit=cfg.audit_path, policy=cfg.policy)
        await self.state.start()
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes * GRPC_RECEIVE_HEADROOM),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.keepalive_time_ms", 30_000),
                # HTTP/2 windows stay at their initial size: with BDP probing grpc widened
                # them for a client writing faster than the core stores, and held whatever it
                # sent ahead (32 write streams: +43 MB in 26 s and growing; without it the core
                # levelled at +21 MB and stored twice as many writes). docs/SECURITY.md.
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ]
        )
        services = [
            (point_service_pb2, "PointService", PointService),
            (control_service_pb2, "ControlService", ControlService),
            (identity_service_pb2, "IdentityService", IdentityService),
            (admin_service_pb2, "AdminService", AdminService),
        ]
        names = [
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        for module, name, impl in services:
            descriptor = module.DESCRIPTOR.services_by_name[name]
            server.add_generic_rpc_handlers(
                [
                    service_handler(
                        descriptor, impl(self.state), self.state.gate, cfg.max_message_bytes
                    )
                ]
            )
            names.append(descriptor.full_name)
        self.health.add_to(server)
        add_reflection(server, names, self.state.gate)

        ca = self.state.ca
        creds = grpc.ssl_server_credentials(
            [(ca.server_key_path.read_bytes(), ca.server_cert_path.read_bytes())],
            root_certificates=ca.ca_cert_path.read_bytes(),
            require_client_auth=True,
        )
        _clear_stale_socket(cfg.socket)
        private_dir(cfg.socket.parent, SHARED_DIR_MODE)
        old_umask = os.umask(0o117)  # the socket is born 0660, never briefly world-writable
        try:
            server.add_secure_port(f"unix://{cfg.socket}", creds)
            if cfg.tcp:
                server.add_secure_port(cfg.tcp, creds)
            await server.start()
        finally:
            os.umask(old_umask)
        os.chmod(cfg.socket, 0o660)
        self.server = server
        for name in names:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "smxcore serving site %s on unix://%s%s",
            self.state.site,
            cfg.socket,
            f" and {cfg.tcp}" if cfg.tcp else "",
        )
        changed = non_default_settings(cfg)
        if changed:
            log.info("core.toml settings in force (others at default): %s", ", ".join(changed))
        if cfg.tcp and not tcp_is_loopback(cfg.tcp):
            log.warning(
                "TCP listener %s is not a loopback address: the API is reachable from the "
                "network (mTLS is still required on every call)",
                cfg.tcp,
            )

    async def stop(self, grace: float = 2.0) -> None:
        if self.server is not None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(grace)
            self.server = None
        self.state.gate.refusal_log.close()  # the summaries still counting are written now
        await self.state.close()
        with contextlib.suppress(FileNotFoundError):
            self.config.socket.unlink()
        log.info("smxcore stopped")


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket left by a crashed core; refuse to steal one a live core listens on."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise RuntimeError(f"another core is already serving on {path}")


class _Heartbeat:
    """The core's health file (smx.health), when it was given one."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.state = "starting"

    def write(self, state: str | None = None, error: str = "") -> None:
        if self.path is None:
            return
        self.state = state or self.state
        try:
            write_health_file(self.path, HealthReport(self.state, last_error=error))
        except OSError as err:
            log.warning("cannot write the health file %s: %s", self.path, err.strerror or err)

    async def beat(self) -> None:
        """The file rewritten from the event loop: a loop that hangs stops it."""
        while True:
            await asyncio.sleep(WRITE_PERIOD_S)
            self.write()


def run_on_fast_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` (the core) to its end on uvloop's event loop, or on asyncio's when uvloop is
    not installed. With grpc.aio every call and streamed message is a few loop callbacks, and
    asyncio's pure-Python loop was ~30% of the core's instructions per call (docs/CORE.md)."""
    try:
        import uvloop
    except ImportError:
        log.warning("uvloop is not installed: the core runs on asyncio's loop (more CPU per call)")
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


async def run_core(
    config: CoreConfig,
    on_ready: Callable[[Core], None] | None = None,
    health_file: Path | None = None,
) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads the policy without dropping connections.
    ``health_file``: where to keep the core's heartbeat (see the module docstring); None: none."""
    heartbeat = _Heartbeat(health_file)
    heartbeat.write("starting")
    beat = asyncio.create_task(heartbeat.beat(), name="core-heartbeat")
    try:
        await _serve(config, on_ready, heartbeat)
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat


async def _serve(
    config: CoreConfig, on_ready: Callable[[Core], None] | None, heartbeat: _Heartbeat
) -> None:
    try:
        core = Core(config)
        await core.start()
    except Exception as err:
        heartbeat.write("failed", str(err))
        raise
    # What start-up built (imported modules, the restored database, the policy) lives as long
    # as the core: frozen, the cyclic collector no longer walks it, and a full collection holds
    # the loop under 1 ms instead of 15-22 ms, the longest pause a watch stream saw.
    gc.collect()
    gc.freeze()
    heartbeat.write("running")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def reload() -> None:
        with contextlib.suppress(Exception):  # a bad policy is logged and audited; keep serving
            core.state.reload_policy("signal:SIGHUP")

    loop.add_signal_handler(signal.SIGHUP, reload)
    if on_ready is not None:
        on_ready(core)
    await stop.wait()
    heartbeat.write("stopping")
    await core.stop()
