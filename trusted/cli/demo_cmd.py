"""`smx demo`: a temporary site with the core and simulated clients, shown live.

Every simulated party is a real client of the real core over the Unix socket with its own
certificate: a meter writing `smm/*`, a battery owning `ess/*` that applies setpoints, an
untrusted agent requesting setpoints (and being refused a write it has no right to), and a
read-only viewer that renders the watch stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import grpc
from google.protobuf.duration_pb2 import Duration

from smx.client import Credentials, Stubs, unix_target
from smx.v1 import control_service_pb2 as cpb
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb
from trusted.config import load_core_config
from trusted.pki import SiteCA
from trusted.policy import default_policy_text

__all__ = ["register", "make_site"]

SITE = "demo-site"
CLIENTS = {
    "admin": ("trusted", ["admin"]),
    "smm": ("trusted", ["trusted-extension"]),
    "ess": ("trusted", ["trusted-extension"]),
    "lessag": ("untrusted", ["untrusted-agent"]),
    "gui": ("trusted", ["gui"]),
}
ESS_LIMIT_W = 5000.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a temporary demo site and show its points live")
    p.add_argument("--seconds", type=float, default=0, help="stop after N seconds (0: Ctrl-C)")
    p.add_argument("--plain", action="store_true", help="print lines instead of a live table")
    p.set_defaults(func=run)


def make_site(home: Path) -> None:
    ca = SiteCA.init(home / "pki", SITE)
    for name, (domain, _) in CLIENTS.items():
        ca.issue(name, domain)
    bindings = [(f"{domain}/{name}", roles) for name, (domain, roles) in CLIENTS.items()]
    (home / "policy.toml").write_text(
        default_policy_text(SITE, bindings, extra_rules={"trusted/ess": [(["read"], ["smm/P"])]})
    )


def run(args: argparse.Namespace) -> int:
    plain = args.plain or not sys.stdout.isatty()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_demo(args.seconds, plain))
    print("demo stopped; nothing left running")
    return 0


async def _demo(seconds: float, plain: bool) -> None:
    from trusted.server import Core

    with tempfile.TemporaryDirectory(prefix="smx-demo-") as tmp:
        home = Path(tmp)
        make_site(home)
        core = Core(load_core_config(None, home=home))
        await core.start()
        print(f"smxcore serving site {SITE} on {core.config.socket}", flush=True)
        target = unix_target(core.config.socket)

        def stubs(name: str) -> Stubs:
            return Stubs(Credentials.from_site(home, name).aio_channel(target))

        tasks = [
            asyncio.create_task(_meter(stubs("smm"))),
            asyncio.create_task(_battery(stubs("ess"))),
            asyncio.create_task(_agent(stubs("lessag"))),
            asyncio.create_task(_viewer(stubs("gui"), plain)),
        ]
        try:
            if seconds:
                await asyncio.sleep(seconds)
            else:
                await asyncio.Event().wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await core.stop(grace=0.5)


def _period(seconds: float) -> Duration:
    d = Duration()
    d.FromMilliseconds(int(seconds * 1000))
    return d


async def _meter(s: Stubs) -> None:
    """A three-phase PCC meter: import/export follows a slow sine plus noise."""
    units = {"U1": "V", "U2": "V", "U3": "V", "P": "W", "f": "Hz", "Ap": "kWh"}
    await s.points.DeclarePoints(
        spb.DeclarePointsRequest(
            points=[
                ppb.PointMetadata(
                    name=f"smm/{n}", unit=u, kind=ppb.VALUE_KIND_DOUBLE, expected_period=_period(1)
                )
                for n, u in units.items()
            ]
        )
    )
    energy, last = 12345.6, time.monotonic()
    while True:
        t = time.time()
        p = 1800 * math.sin(t / 20) + random.gauss(0, 40)
        now = time.monotonic()
        energy += max(p, 0) * (now - last) / 3.6e6
        last = now
        values = {
            "U1": 230 + random.gauss(0, 0.8),
            "U2": 231 + random.gauss(0, 0.8),
            "U3": 229.5 + random.gauss(0, 0.8),
            "P": p,
            "f": 50 + random.gauss(0, 0.01),
            "Ap": energy,
        }
        await s.points.WritePoints(
            spb.WritePointsRequest(
                samples=[
                    ppb.PointSample(name=f"smm/{n}", value=ppb.Value(double_value=round(v, 3)))
                    for n, v in values.items()
                ]
            )
        )
        await asyncio.sleep(1)


async def _battery(s: Stubs) -> None:
    """A battery that owns ess/P_set: applies requests, clamped to its power limit."""
    await s.points.DeclarePoints(
        spb.DeclarePointsRequest(
            points=[
                ppb.PointMetadata(
                    name="ess/P", unit="W", kind=ppb.VALUE_KIND_DOUBLE, expected_period=_period(1)
                ),
                ppb.PointMetadata(name="ess/SoC", unit="%", kind=ppb.VALUE_KIND_DOUBLE),
                ppb.PointMetadata(
                    name="ess/P_set",
                    unit="W",
                    kind=ppb.VALUE_KIND_DOUBLE,
                    description="requested storage power, load reference",
                ),
            ]
        )
    )
    state = {"P": 0.0, "SoC": 50.0}

    async def apply_setpoints() -> None:
        async for msg in s.control.WatchSetpoints(cpb.WatchSetpointsRequest()):
            sp = msg.setpoint
            if msg.event == cpb.SETPOINT_EVENT_EXPIRED:
                state["P"] = 0.0  # fall back to autonomous mode
                continue
            want = sp.value.double_value
            got = max(-ESS_LIMIT_W, min(ESS_LIMIT_W, want))
            status = cpb.SETPOINT_STATUS_APPLIED if got == want else cpb.SETPOINT_STATUS_CLAMPED
            state["P"] = got
            await s.control.ReportSetpoint(
                cpb.ReportSetpointRequest(
                    id=sp.id,
                    status=status,
                    applied_value=ppb.Value(double_value=got),
                    reason="" if got == want else f"limited to {ESS_LIMIT_W:g} W",
                )
            )

    applier = asyncio.create_task(apply_setpoints())
    try:
        while True:
            state["SoC"] = min(100.0, max(0.0, state["SoC"] + state["P"] / 10000 / 3.6))
            await s.points.WritePoints(
                spb.WritePointsRequest(
                    samples=[
                        ppb.PointSample(name="ess/P", value=ppb.Value(double_value=state["P"])),
                        ppb.PointSample(
                            name="ess/SoC", value=ppb.Value(double_value=round(state["SoC"], 2))
                        ),
                    ]
                )
            )
            await asyncio.sleep(1)
    finally:
        applier.cancel()


async def _agent(s: Stubs) -> None:
    """The untrusted agent: recommends storage power; it may not write measurements."""
    try:
        await s.points.WritePoints(
            spb.WritePointsRequest(
                samples=[ppb.PointSample(name="smm/P", value=ppb.Value(double_value=0))]
            )
        )
    except grpc.aio.AioRpcError as err:
        print(f"lessag tried to write smm/P: refused ({err.code().name}), and audited", flush=True)
    plan = [3000.0, -2000.0, 8000.0]
    i = 0
    while True:
        await s.control.RequestSetpoint(
            cpb.RequestSetpointRequest(
                name="ess/P_set",
                value=ppb.Value(double_value=plan[i % len(plan)]),
                valid_for=_period(8),
            )
        )
        i += 1
        await asyncio.sleep(10)


async def _viewer(s: Stubs, plain: bool) -> None:
    """The read-only GUI client: the watch stream, plus the status of the storage setpoint."""
    points: dict[str, ppb.Point] = {}
    stream = s.points.WatchPoints(spb.WatchPointsRequest(patterns=["smm/*", "ess/*"]))
    if plain:
        async for msg in stream:
            for p in msg.points:
                print(f"rev {p.revision:>6}  {p.name:<12} {_fmt(p.value):>10} {p.unit}", flush=True)
            if any(p.name == "ess/P_set" for p in msg.points):
                print(await _setpoint_line(s), flush=True)
        return
    from rich.live import Live
    from rich.table import Table

    caption = ""

    def table() -> Table:
        t = Table(title=f"SMX demo site {SITE}: live points (Ctrl-C to stop)", caption=caption)
        for col in ("point", "value", "unit", "quality", "writer", "revision"):
            t.add_column(col, justify="right" if col in ("value", "revision") else "left")
        for name in sorted(points):
            p = points[name]
            t.add_row(
                name,
                _fmt(p.value),
                p.unit,
                ppb.Quality.Name(p.quality).removeprefix("QUALITY_"),
                p.writer.rsplit("/", 1)[-1],
                str(p.revision),
            )
        return t

    with Live(table(), refresh_per_second=4) as live:
        async for msg in stream:
            for p in msg.points:
                points[p.name] = p
            caption = await _setpoint_line(s)
            live.update(table())


async def _setpoint_line(s: Stubs) -> str:
    try:
        sp = (await s.control.GetSetpoint(cpb.GetSetpointRequest(name="ess/P_set"))).setpoint
    except grpc.aio.AioRpcError:
        return "no setpoint requested yet"
    status = cpb.SetpointStatus.Name(sp.status).removeprefix("SETPOINT_STATUS_")
    applied = f" -> {_fmt(sp.applied_value)} W" if sp.HasField("applied_value") else ""
    why = f" ({sp.reason})" if sp.reason else ""
    left = max(0.0, sp.expire_time.ToMilliseconds() / 1000 - time.time())
    return (
        f"setpoint ess/P_set = {_fmt(sp.value)} W from {sp.requester.rsplit('/', 1)[-1]}: "
        f"{status}{applied}{why}, {left:.0f} s left"
    )


def _fmt(v: ppb.Value) -> str:
    field = v.WhichOneof("kind")
    value = getattr(v, field) if field else "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)
