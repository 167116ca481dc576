"""`smx demo`: a whole temporary site run by the supervisor, shown live.

The demo writes a site.toml into a temporary directory and runs it exactly as `smx run` would:
the core, every extension that exists so far against its device simulator, and the planner
agent, each an OS process with its own certificate. This process shows the points and the
processes live (read-only, with the site's admin certificate) and stops everything on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import grpc

from smx.client import Credentials, Stubs, unix_target
from smx.quality import quality_name
from smx.setpoint_status import status_name
from smx.timestamps import ts_to_seconds
from smx.v1 import control_service_pb2 as cpb
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb
from trusted.supervisor.runner import Supervisor
from trusted.supervisor.site_config import load_site_config

__all__ = ["register", "site_toml"]

SITE = "demo-site"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a temporary demo site and show it live")
    p.add_argument("--seconds", type=float, default=0, help="stop after N seconds (0: Ctrl-C)")
    p.add_argument("--plain", action="store_true", help="print lines instead of a live table")
    p.add_argument("--keep", action="store_true", help="keep the site directory afterwards")
    p.set_defaults(func=run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def site_toml() -> str:
    """The demo site: what exists so far, each extension against its simulator (the PCC meter
    is an Eastron SDM630 on Modbus TCP, the battery the example extension's)."""
    battery_port, meter_port = _free_port(), _free_port()
    return f"""\
site = "{SITE}"

[core.history]
flush_interval = "2s"

[supervisor]
backoff_initial = "500ms"

[simulators.battery-sim]
module = "examples.battery.simulator"
[simulators.battery-sim.config]
port = {battery_port}

[extensions.battery]
module = "examples.battery"
[extensions.battery.config]
port = {battery_port}

[simulators.meter-sim]
command = ["{sys.executable}", "-m", "extensions.smm.modbus_simulator", "--tcp",
           "127.0.0.1:{meter_port}", "--meter", "1:eastron_sdm630"]

[extensions.smm]
module = "extensions.smm"
[[extensions.smm.config.modbus]]
device = "smm"
map = "eastron_sdm630"
unit = 1
host = "127.0.0.1"
port = {meter_port}

[agents.planner]
module = "untrusted.planner"
[agents.planner.config]
target = "battery/P_set"
plan = [3000.0, -2000.0, 8000.0]
every = 10.0
valid_for = 8.0
"""


def run(args: argparse.Namespace) -> int:
    plain = args.plain or not sys.stdout.isatty()
    tmp = Path(tempfile.mkdtemp(prefix="smx-demo-"))  # short: socket paths max 108 bytes
    (tmp / "site.toml").write_text(site_toml())
    try:
        asyncio.run(_demo(tmp, args.seconds, plain))
    except KeyboardInterrupt:
        pass
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print("demo stopped; nothing left running" + (f" (site kept in {tmp})" if args.keep else ""))
    return 0


async def _demo(home: Path, seconds: float, plain: bool) -> None:
    supervisor = Supervisor(load_site_config(home / "site.toml"), reap_strays=True)
    site = asyncio.create_task(supervisor.run(), name="supervisor")
    viewer: asyncio.Task[None] | None = None
    try:
        while supervisor.state != "running":
            if site.done():
                await site  # raises why the site could not start
                return
            await asyncio.sleep(0.1)
        print(
            f"site {SITE} running in {home}: "
            + ", ".join(f"{p.name} ({p.kind})" for p in supervisor.processes),
            flush=True,
        )
        stubs = Stubs(
            Credentials.from_site(home, "admin").aio_channel(unix_target(home / "core.sock"))
        )
        viewer = asyncio.create_task(_view(stubs, supervisor, plain))
        stop = asyncio.sleep(seconds) if seconds else asyncio.Event().wait()
        await asyncio.wait(
            [site, viewer, asyncio.ensure_future(stop)], return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        if viewer is not None:
            viewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await viewer
        supervisor.request_stop()
        with contextlib.suppress(asyncio.CancelledError):
            await site


async def _view(stubs: Stubs, supervisor: Supervisor, plain: bool) -> None:
    """Follow every point; redraw with the processes and the storage setpoint's status."""
    points: dict[str, ppb.Point] = {}
    while True:
        try:
            stream = stubs.points.WatchPoints(spb.WatchPointsRequest(patterns=["**"]))
            if plain:
                async for msg in stream:
                    for p in msg.points:
                        if not p.name.startswith("core/"):
                            print(
                                f"rev {p.revision:>8}  {p.name:<20} {_fmt(p.value):>12} "
                                f"{p.unit:<4} {_quality(p)}",
                                flush=True,
                            )
                    if any(p.name == "battery/P_set" for p in msg.points):
                        print(await _setpoint_line(stubs), flush=True)
                return
            await _live(stream, stubs, supervisor, points)
            return
        except grpc.aio.AioRpcError:
            await asyncio.sleep(1)  # the core is restarting: the supervisor brings it back


async def _live(stream, stubs: Stubs, supervisor: Supervisor, points: dict) -> None:
    from rich.console import Group
    from rich.live import Live
    from rich.table import Table

    caption = ""

    def render() -> Group:
        values = Table(
            title=f"SMX demo site {SITE}: live points (Ctrl-C stops everything)", caption=caption
        )
        for col in ("point", "value", "unit", "quality", "writer", "revision"):
            values.add_column(col, justify="right" if col in ("value", "revision") else "left")
        for name in sorted(points):
            p = points[name]
            values.add_row(
                name,
                _fmt(p.value),
                p.unit,
                _quality(p),
                p.writer.rsplit("/", 1)[-1],
                str(p.revision),
            )
        procs = Table(title="processes (one certificate each)")
        for col in ("name", "kind", "state", "health", "restarts", "pid"):
            procs.add_column(col)
        for p in supervisor.processes:
            procs.add_row(p.name, p.kind, p.state, p.health, str(p.restarts), str(p.pid or "-"))
        return Group(values, procs)

    last = 0.0
    with Live(render(), refresh_per_second=4) as live:
        async for msg in stream:
            for p in msg.points:
                points[p.name] = p
            if time.monotonic() - last > 1:
                caption, last = await _setpoint_line(stubs), time.monotonic()
            live.update(render())


async def _setpoint_line(stubs: Stubs) -> str:
    try:
        sp = (
            await stubs.control.GetSetpoint(cpb.GetSetpointRequest(name="battery/P_set"))
        ).setpoint
    except grpc.aio.AioRpcError:
        return "no setpoint requested yet"
    status = status_name(sp.status)
    applied = f" -> {_fmt(sp.applied_value)} W" if sp.HasField("applied_value") else ""
    why = f" ({sp.reason})" if sp.reason else ""
    left = max(0.0, ts_to_seconds(sp.expire_time) - time.time())
    return (
        f"setpoint battery/P_set = {_fmt(sp.value)} W from "
        f"{sp.requester.rsplit('/', 1)[-1]}: {status}{applied}{why}, {left:.0f} s left"
    )


def _quality(p: ppb.Point) -> str:
    return quality_name(p.quality)


def _fmt(v: ppb.Value) -> str:
    field = v.WhichOneof("kind")
    value = getattr(v, field) if field else "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)
