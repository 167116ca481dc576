"""`smx demo`: a whole temporary site run by the supervisor, shown live.

The demo writes a site.toml into a temporary directory and runs it exactly as `smx run` would:
the core, every extension that exists so far against its device simulator, and the north-bound
agent lessag publishing to a real Mosquitto (TLS with client certificates, trusted/cli/demo_mqtt)
with a GESSCon simulator sending it a day profile; each an OS process, each client of the core
with its own certificate, lessag bound with exactly the rights its config needs. This process
shows the site live (read-only, with the site's admin certificate) and stops everything on
Ctrl-C.

The live view fits the terminal: the processes and their health (the agent's MQTT link and
queue on its row) and the setpoint flow (the last setpoint lessag's ESS control requested, its
status and what the battery did with it) on top, then the points
grouped by device, as many as the terminal's height leaves room for (`--all`: every one). On
Ctrl-C the view is drawn one last time from the site as it is at that moment, before anything
is stopped, so the last frame shows the state as it really was. Without a terminal (or with
`--plain`) each change is a line instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import math
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from smx.aio import wait_event
from smx.client import Credentials, Stubs, unix_target
from smx.files import write_atomic
from smx.process_env import RunPaths
from smx.quality import quality_name
from smx.setpoint_status import IN_FORCE_CODES, status_name
from smx.timestamps import ts_to_seconds
from smx.toml_text import toml_str
from smx.v1 import control_service_pb2 as cpb
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb
from trusted.cli.demo_mqtt import BROKER, MOSQUITTO, MqttFiles, give_files, make_pki, mosquitto_conf
from trusted.supervisor.runner import Supervisor
from trusted.supervisor.site_config import load_site_config

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = [
    "SetpointState",
    "lessag_config",
    "register",
    "render_view",
    "setpoint_line",
    "site_toml",
    "write_site",
]

SITE = "demo-site"
ESS_SETPOINT = "battery/P_set"  # what lessag's ESS control requests, on GESSCon's profile
AGENT = "lessag"
MQTT_PREFIX = f"{SITE}/{AGENT}"
ER_LINKS = "er-links"
MORE = "… {n} more, --all shows every point"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a temporary demo site and show it live")
    p.add_argument("--seconds", type=float, default=0, help="stop after N seconds (0: Ctrl-C)")
    p.add_argument("--plain", action="store_true", help="print lines instead of a live table")
    p.add_argument(
        "--all",
        action="store_true",
        dest="show_all",
        help="show every point, even where the terminal is too short for them",
    )
    p.add_argument("--keep", action="store_true", help="keep the site directory afterwards")
    p.set_defaults(func=run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lessag_config(home: Path, mqtt_port: int) -> dict[str, Any]:
    """lessag's config table in the demo (docs/LESSAG.md): every 5 s the meter, the battery and
    the Fronius (that one in the S4G line protocol) to the demo's Mosquitto over TLS with its
    client certificate; ESS control of the battery on GESSCon's profile; EVChCon limits for
    the OCPP proxy's charge point ev1."""
    mqtt = MqttFiles(home / "mqtt")
    return {
        "publish_every": "5s",
        "mqtt": {
            "host": "127.0.0.1",
            "port": mqtt_port,
            "prefix": MQTT_PREFIX,
            "ca": str(mqtt.ca),
            "cert": str(mqtt.cert(AGENT)),
            "key": str(mqtt.key(AGENT)),
            "backoff_max": "5s",
        },
        "devices": [
            {"id": "smm", "type": "SMM"},
            {"id": "battery", "type": "ESS"},
            {"id": "fronius", "type": "FRONIUS", "format": "influx"},
        ],
        "ess": {
            "setpoint": ESS_SETPOINT,
            "battery_power": "battery/P",
            "soc": "battery/SoC",
            "pcc_power": "smm/P",
        },
        "ev": {"charge_points": ["ev1"]},
    }


def _toml_scalar(value: Any) -> str:
    if isinstance(value, str):
        return toml_str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_scalar(v) for v in value) + "]"
    return repr(value)


def _toml_table(name: str, table: dict[str, Any], header: str = "[{}]") -> str:
    """`table` as TOML under `header` (`[name]`, or `[[name]]` for an array's item): plain
    keys, then its tables and arrays of tables."""
    nested = {k: v for k, v in table.items() if isinstance(v, dict)}
    arrays = {
        k: v
        for k, v in table.items()
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
    }
    lines = [header.format(name)]
    lines += [
        f"{k} = {_toml_scalar(v)}" for k, v in table.items() if k not in nested and k not in arrays
    ]
    text = "\n".join(lines) + "\n"
    for k, v in nested.items():
        text += _toml_table(f"{name}.{k}", v)
    for k, items in arrays.items():
        text += "".join(_toml_table(f"{name}.{k}", item, "[[{}]]") for item in items)
    return text


def _lessag_tables(home: Path, mqtt_port: int, broker: bool) -> str:
    """The broker, the GESSCon simulator and lessag, bound with exactly the rights its config
    needs (untrusted/lessag/rights.py: the same rules docs/LESSAG.md shows)."""
    from smx.sdk import parse_settings
    from untrusted.lessag.rights import site_keys
    from untrusted.lessag.settings import LessagConfig

    mqtt = MqttFiles(home / "mqtt")
    config = lessag_config(home, mqtt_port)
    rights = site_keys(parse_settings(LessagConfig, config), AGENT)
    agent = {"module": "untrusted.lessag", **rights, "config": config}
    out = ""
    if broker:
        out += f"""
[simulators.mqtt-broker]
command = [{toml_str(MOSQUITTO)}, "-c", {toml_str(str(mqtt.conf))}]

[simulators.gesscon-sim]
module = "untrusted.lessag.gesscon_sim"
[simulators.gesscon-sim.config]
port = {mqtt_port}
prefix = {toml_str(MQTT_PREFIX)}
ca = {toml_str(str(mqtt.ca))}
cert = {toml_str(str(mqtt.cert("gesscon")))}
key = {toml_str(str(mqtt.key("gesscon")))}
every = 3600
"""
    return out + "\n" + _toml_table(f"agents.{AGENT}", agent)


def site_toml(home: Path, mqtt_port: int = 0, broker: bool = True) -> str:
    """The demo site: what exists so far, each extension against its simulator (the PCC meter
    is an Eastron SDM630 on Modbus TCP, the battery the example extension's, the Fronius a
    simulated GEN24 Plus with battery and Smart Meter on the Solar API and Modbus SunSpec, the EV
    charging point an OCPP 1.6 charger behind the OCPP proxy, its SCADA a small CSMS, the
    Energy Router its two controllers simulated on pseudo-terminals), the GUI on loopback, and
    the north-bound agent lessag publishing to a Mosquitto, GESSCon simulated (`broker`: the
    broker and GESSCon run; without, lessag queues what it would publish)."""
    battery_port, meter_port = _free_port(), _free_port()
    fronius_http, fronius_modbus = _free_port(), _free_port()
    ocpp_port, csms_port = _free_port(), _free_port()
    er_links = home / ER_LINKS  # the ER simulator's ptys, reached by the simulator and the ER
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

[simulators.fronius-sim]
module = "extensions.fronius.simulator"
[simulators.fronius-sim.config]
http_port = {fronius_http}
modbus_port = {fronius_modbus}

[extensions.fronius]
module = "extensions.fronius"
devices = ["fronius", "fronius_meter"]
[extensions.fronius.config]
host = "127.0.0.1"
http_port = {fronius_http}
modbus_port = {fronius_modbus}
interval = "4s"

[simulators.ocpp-sim]
module = "extensions.ocpp_proxy.simulator"
[simulators.ocpp-sim.config]
csms_port = {csms_port}
charger = "ws://127.0.0.1:{ocpp_port}/CP001"
interval = 2.0
session = 120.0
pause = 20.0
speed = 60.0

[extensions.ocpp]
module = "extensions.ocpp_proxy"
devices = ["ev1"]
[extensions.ocpp.config]
port = {ocpp_port}
[[extensions.ocpp.config.charge_points]]
id = "CP001"
upstream = "ws://127.0.0.1:{csms_port}/ocpp"
connectors = ["ev1"]

[simulators.er-sim]
module = "extensions.energy_router.simulator"
[simulators.er-sim.config]
inverter_link = {toml_str(str(er_links / "inverter.pty"))}
battery_link = {toml_str(str(er_links / "battery.pty"))}

[extensions.er]
module = "extensions.energy_router"
[extensions.er.config]
inverter_port = {toml_str(str(er_links / "inverter.pty"))}
battery_port = {toml_str(str(er_links / "battery.pty"))}

[agents.gui]
module = "untrusted.gui"
role = "gui"
[agents.gui.config]
listen = "127.0.0.1:{_free_port()}"
{_lessag_tables(home, mqtt_port or _free_port(), broker)}"""


def write_site(home: Path) -> list[str]:
    """Everything the demo site needs in `home` before it runs: site.toml and the MQTT files
    (PKI, Mosquitto's config), the keys given to the users of the processes that read them when
    they run as their own users (root). Returns notes for the user (what is left out, why)."""
    notes = []
    broker = Path(MOSQUITTO).exists()
    if not broker:
        notes.append(
            f"{MOSQUITTO} not found (apt-get install mosquitto): the demo runs without its MQTT "
            "broker and GESSCon simulator; lessag queues what it would publish"
        )
    mqtt_port = _free_port()
    files = make_pki(home / "mqtt", [AGENT, "gesscon"])
    prefix = MQTT_PREFIX
    mosquitto_conf(
        files,
        mqtt_port,
        {
            AGENT: [f"topic readwrite {prefix}/#"],
            "gesscon": [
                f"topic write {prefix}/gesscon/profile",
                f"topic read {prefix}/gesscon/#",
                f"topic read {prefix}/status",
            ],
        },
    )
    # Both ER processes reach the simulator's ptys here; as root each is a user of its own.
    (home / ER_LINKS).mkdir(exist_ok=True)
    (home / ER_LINKS).chmod(0o1777)
    # 0600 as `smx run` wants a site file (it would tighten it, with a warning, at every start).
    write_atomic(home / "site.toml", site_toml(home, mqtt_port, broker).encode(), 0o600)
    from trusted.supervisor import isolation

    if isolation.isolation_wanted():
        # Each process runs as its own user (docs/SITE.md, "Isolation"), created here as its
        # provisioning would, so that its key is its own before it starts.
        cfg = load_site_config(home / "site.toml")
        accounts = isolation.ensure_accounts(cfg.site, cfg.home, [p.name for p in cfg.processes])
        owners = {accounts[AGENT].uid: [files.key(AGENT)]}
        if broker:
            owners[accounts["mqtt-broker"].uid] = [files.key(BROKER)]
            owners[accounts["gesscon-sim"].uid] = [files.key("gesscon")]
        give_files(files, accounts["core"].groups[0], owners)
    return notes


def run(args: argparse.Namespace) -> int:
    plain = args.plain or not sys.stdout.isatty()
    tmp = Path(tempfile.mkdtemp(prefix="smx-demo-"))  # short: socket paths max 108 bytes
    try:
        for note in write_site(tmp):
            print(note, flush=True)
        asyncio.run(_demo(tmp, args.seconds, plain=plain, show_all=args.show_all))
    except KeyboardInterrupt:
        pass
    finally:
        if not args.keep:
            _forget_site(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
    print("demo stopped; nothing left running" + (f" (site kept in {tmp})" if args.keep else ""))
    return 0


def _forget_site(home: Path) -> None:
    """As root the demo ran each process as a user made for this site home: the home goes,
    so do they."""
    if os.geteuid() != 0:
        return
    from trusted.supervisor import isolation
    from trusted.supervisor.site_config import SiteConfigError, load_site_config

    try:
        cfg = load_site_config(home / "site.toml")
    except SiteConfigError:
        return
    isolation.remove_accounts(cfg.site, cfg.home, [p.name for p in cfg.processes])


async def _demo(home: Path, seconds: float, *, plain: bool, show_all: bool) -> None:
    supervisor = Supervisor(load_site_config(home / "site.toml"), reap_strays=True)
    site = asyncio.create_task(supervisor.run(), name="supervisor")
    tasks: list[asyncio.Task[None]] = []
    channel = None
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
        for url in gui_addresses(supervisor).values():
            print(f"GUI: {url} (read-only, docs/GUI.md)", flush=True)
        # Ctrl-C from here on is the demo's: it draws the site as it is before stopping it.
        # (The supervisor installed its own handler at its start; SIGTERM stays its.)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        target = unix_target(RunPaths(home).socket)
        channel = Credentials.from_site(home, "admin").aio_channel(target)
        view = DemoView(Stubs(channel), supervisor, plain=plain, show_all=show_all)
        finished = asyncio.Event()
        tasks = [
            asyncio.create_task(view.follow_points(), name="demo-points"),
            asyncio.create_task(view.follow_setpoints(), name="demo-setpoints"),
        ]
        shower = None if plain else asyncio.create_task(_show_live(view, finished))
        waits: list[asyncio.Future[Any]] = [site, asyncio.ensure_future(stop.wait())]
        if seconds:
            waits.append(asyncio.ensure_future(asyncio.sleep(seconds)))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits[1:]:
            w.cancel()
        # The last frame: the site as it is now, read once more while the core still runs.
        if not site.done():
            await view.read_setpoints(timeout=2.0)
        view.stopped_at = time.time()
        for t in tasks:
            t.cancel()
        finished.set()
        if shower is not None:
            await shower
            # The last frame stays on the screen: no line per stopped process below it.
            logging.getLogger("trusted.supervisor").setLevel(logging.WARNING)
            print("stopping the site…", flush=True)
        else:
            view.print_final()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if channel is not None:
            await channel.close()
        supervisor.request_stop()
        with contextlib.suppress(asyncio.CancelledError):
            await site


# --- what the demo knows about the site


@dataclass
class SetpointState:
    """The latest setpoint of one point as last read from the core."""

    name: str
    setpoint: cpb.Setpoint | None = None  # None: none requested yet (or not read yet)
    read_at: float | None = None  # wall clock of the core's last answer
    error: str = ""  # why the last read failed; the setpoint shown is then as of read_at


class Process(Protocol):
    """What the view shows of a supervised process (trusted.supervisor.process)."""

    name: str
    kind: str
    state: str
    health: str
    health_error: str
    last_error: str | None
    restarts: int
    pid: int | None


class DemoView:
    """Follows the site through the core (every point, the setpoints) and draws it."""

    def __init__(
        self, stubs: Stubs, supervisor: Supervisor, *, plain: bool, show_all: bool
    ) -> None:
        self.stubs = stubs
        self.supervisor = supervisor
        self.addresses = gui_addresses(supervisor)  # the site file is read once
        self.plain = plain
        self.show_all = show_all
        self.points: dict[str, ppb.Point] = {}
        self.setpoints: dict[str, SetpointState] = {ESS_SETPOINT: SetpointState(ESS_SETPOINT)}
        self.core_error = ""
        self.stopped_at: float | None = None
        self.changed = asyncio.Event()
        self._setpoint_seen = asyncio.Event()

    async def follow_points(self) -> None:
        """Every point: a snapshot, then each change; back after a core restart."""
        while True:
            try:
                stream = self.stubs.points.WatchPoints(spb.WatchPointsRequest(patterns=["**"]))
                async for msg in stream:
                    self.core_error = ""
                    for p in msg.points:
                        self.points[p.name] = p
                        if p.name.endswith("_set"):
                            self.setpoints.setdefault(p.name, SetpointState(p.name))
                            self._setpoint_seen.set()
                        if self.plain and not p.name.startswith("core/"):
                            print(
                                f"rev {p.revision:>8}  {p.name:<20} {_fmt(p.value):>12} "
                                f"{p.unit:<4} {quality_name(p.quality)}",
                                flush=True,
                            )
                    self.changed.set()
            except grpc.aio.AioRpcError as err:
                self.core_error = _why(err)
                self.changed.set()
            await asyncio.sleep(1)  # the core is restarting: the supervisor brings it back

    async def follow_setpoints(self) -> None:
        """The setpoints' statuses, read every second and as soon as a setpoint point
        changes (the admin may read them, not follow their outcome streams)."""
        while True:
            await self.read_setpoints(timeout=2.0)
            await wait_event(self._setpoint_seen, 1.0)
            self._setpoint_seen.clear()

    async def read_setpoints(self, timeout: float) -> None:
        for state in list(self.setpoints.values()):
            before = _setpoint_key(state.setpoint)
            try:
                async with asyncio.timeout(timeout):
                    resp = await self.stubs.control.GetSetpoint(
                        cpb.GetSetpointRequest(name=state.name)
                    )
                state.setpoint, state.error = resp.setpoint, ""
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    state.setpoint, state.error = None, ""
                else:  # keep what was known, marked as of its time
                    state.error = _why(err)
                    continue
            except TimeoutError:
                state.error = "the core did not answer"
                continue
            state.read_at = time.time()
            if _setpoint_key(state.setpoint) != before:
                self.changed.set()
                if self.plain:
                    print(setpoint_line(state, self._unit(state.name), time.time()), flush=True)

    def _unit(self, name: str) -> str:
        p = self.points.get(name)
        return p.unit if p is not None else ""

    def render(self, width: int, height: int) -> RenderableType:
        return render_view(
            self.points.values(),
            self.supervisor.processes,
            self.setpoints.values(),
            width=width,
            height=height,
            show_all=self.show_all,
            now=self.stopped_at or time.time(),
            stopped=self.stopped_at is not None,
            core_error=self.core_error,
            addresses=self.addresses,
        )

    def print_final(self) -> None:
        """Plain mode: the site as it was when the demo was stopped."""
        when = time.strftime("%H:%M:%S", time.localtime(self.stopped_at))
        print(f"stopped at {when}; the site as it was then:")
        now = self.stopped_at or time.time()
        for state in self.setpoints.values():
            print("  " + setpoint_line(state, self._unit(state.name), now))
        for p in self.supervisor.processes:
            notes = [agent_state(p, self.points), _note(p)]
            print(
                f"  process {p.name} ({p.kind}): {p.state}, health {p.health}, "
                f"{p.restarts} restarts" + "".join(f", {n}" for n in notes if n)
            )
        print(flush=True)


async def _show_live(view: DemoView, finished: asyncio.Event) -> None:
    """Redraw on each change (at most 4 times a second) and every second; once `finished` is
    set, draw the last frame and leave it on the screen."""
    from rich.live import Live

    def frame() -> RenderableType:
        width, height = shutil.get_terminal_size()
        return view.render(width, height)

    with Live(
        frame(),
        auto_refresh=False,
        vertical_overflow="visible" if view.show_all else "ellipsis",
    ) as live:
        while not finished.is_set():
            waiters = [
                asyncio.ensure_future(view.changed.wait()),
                asyncio.ensure_future(finished.wait()),
            ]
            try:
                await asyncio.wait(waiters, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
            view.changed.clear()
            live.update(frame(), refresh=True)
            if not finished.is_set():
                await asyncio.sleep(0.25)
        live.update(frame(), refresh=True)


# --- the view


def setpoint_line(state: SetpointState, unit: str, now: float) -> str:
    """`setpoint battery/P_set = 3000.00 W from lessag: APPLIED -> 3000.00 W, 5 s left`: the
    latest request of a point, its status and the owner's outcome."""
    sp = state.setpoint
    stale = f" [as of {_clock(state.read_at)}: {state.error}]" if state.error else ""
    if sp is None:
        if state.read_at is None:
            return f"setpoint {state.name}: not known yet" + (
                f" ({state.error})" if state.error else ""
            )
        return f"setpoint {state.name}: none requested yet" + stale
    unit = f" {unit}" if unit else ""
    status = status_name(sp.status)
    applied = f"{_fmt(sp.applied_value)}{unit}" if sp.HasField("applied_value") else ""
    why = f" ({sp.reason})" if sp.reason else ""
    expire = ts_to_seconds(sp.expire_time)
    if sp.status in IN_FORCE_CODES:
        left = expire - now
        outcome = f" -> {applied}" if applied else ""
        until = f", {left:.0f} s left" if left >= 0.5 else ", expiring"
    else:  # over: say when, and what the device had run
        outcome = f" at {_clock(expire)}" if status == "EXPIRED" else ""
        until = f", after running at {applied}" if applied else ""
    return (
        f"setpoint {state.name} = {_fmt(sp.value)}{unit} from "
        f"{sp.requester.rsplit('/', 1)[-1]} at {_clock(ts_to_seconds(sp.request_time))}: "
        f"{status}{outcome}{why}{until}{stale}"
    )


def render_view(
    points: Iterable[ppb.Point],
    processes: Sequence[Process],
    setpoints: Iterable[SetpointState],
    *,
    width: int,
    height: int,
    show_all: bool = False,
    now: float | None = None,
    stopped: bool = False,
    core_error: str = "",
    addresses: dict[str, str] | None = None,
) -> RenderableType:
    """The demo's screen for a terminal of `width` x `height`: a title, the processes, the
    setpoints, then the points grouped by device, trimmed to the height left (one line is left
    free for the cursor) unless `show_all`. `addresses`: a process's address for a browser,
    shown on its row."""
    from rich.console import Console, Group
    from rich.table import Table
    from rich.text import Text

    now = time.time() if now is None else now
    by_name = {p.name: p for p in points}
    if stopped:
        title = f"SMX demo site {SITE}, stopped at {_clock(now)}: the site as it was then"
    else:
        title = f"SMX demo site {SITE} at {_clock(now)} (Ctrl-C stops everything)"
    if core_error:
        title += f"; core: {core_error}"

    # One space between columns: an 80-column terminal keeps room for the note.
    procs = Table(box=None, pad_edge=False, collapse_padding=True, header_style="bold")
    columns = ("process", "kind", "state", "health", "restarts", "pid", "note")
    for col in columns:
        procs.add_column(col, no_wrap=True, overflow="ellipsis")
    proc_rows = [
        (
            p.name,
            p.kind,
            p.state,
            p.health,
            str(p.restarts),
            str(p.pid or "-"),
            "; ".join(
                filter(None, [(addresses or {}).get(p.name), agent_state(p, by_name), _note(p)])
            ),
        )
        for p in processes
    ]
    # The note is what gives way on a narrow terminal, not the columns before it.
    fixed = sum(
        max([len(c), *(len(r[i]) for r in proc_rows)]) + 1 for i, c in enumerate(columns[:-1])
    )
    note_room = max(len(columns[-1]), width - fixed)
    for *cells, note in proc_rows:
        state = Text(cells[2], style="green" if cells[2] == "running" else "yellow")
        short = note if len(note) <= note_room else note[: note_room - 1] + "…"
        procs.add_row(*cells[:2], state, *cells[3:], short)
    lines = [
        setpoint_line(s, by_name[s.name].unit if s.name in by_name else "", now) for s in setpoints
    ]
    top = Group(
        Text(title, style="bold"),
        procs,
        *(Text(line, style="cyan") for line in lines),
        *([Text("")] if height > 30 else []),  # air where there is room for it
    )
    console = Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)
    options = console.options.update_width(width)
    room = height - 1 - len(console.render_lines(top, options, pad=False))

    groups = _groups(by_name.values())
    total = sum(len(g) for g in groups.values())
    pane = _pane([(d, p) for d, g in groups.items() for p in g])
    pane_width = console.measure(pane, options=options).maximum
    gap = 3
    fit = max(1, (width + gap) // (pane_width + gap))
    rows = room - 1  # each pane has its header line
    hidden = 0
    if not show_all and total > fit * max(rows, 0):
        rows -= 1  # the "… N more" line
        chosen = _trim(groups, fit * max(rows, 0))
        hidden = total - sum(len(g) for g in chosen.values())
    else:
        chosen = groups
    flat = [(d, p) for d, g in chosen.items() for p in g]
    panes = min(fit, max(1, math.ceil(len(flat) / max(rows, 1))))
    per_pane = math.ceil(len(flat) / panes)
    chunks = [flat[i : i + per_pane] for i in range(0, len(flat), per_pane)] if flat else []
    parts: list[RenderableType] = [top]
    if chunks and rows > 0:
        grid = Table.grid(padding=(0, gap))
        for _ in chunks:
            grid.add_column()
        grid.add_row(*(_pane(chunk) for chunk in chunks))
        parts.append(grid)
    if hidden:
        parts.append(Text(MORE.format(n=hidden), style="dim"))
    return Group(*parts)


# An agent's own state points (lessag's, docs/LESSAG.md), shown on its process's row.
AGENT_STATE = ("mqtt", "queued", "dropped")


def agent_state(p: Process, points: dict[str, ppb.Point]) -> str:
    """`MQTT connected, 0 queued` (and dropped when any): an agent's state from its points."""
    if p.kind != "agent" or f"{p.name}/mqtt" not in points:
        return ""
    got = {k: _fmt(points[f"{p.name}/{k}"].value) for k in AGENT_STATE if f"{p.name}/{k}" in points}
    text = f"MQTT {got['mqtt']}" + (f", {got['queued']} queued" if "queued" in got else "")
    return text + (f", {got['dropped']} dropped" if got.get("dropped", "0") != "0" else "")


def _groups(points: Iterable[ppb.Point]) -> dict[str, list[ppb.Point]]:
    """Points by device (the name's first part), devices alphabetically with the core last,
    each device's points the most telling first (totals, per phase, the rest, ext.*)."""
    groups: dict[str, list[ppb.Point]] = {}
    for p in points:
        groups.setdefault(p.name.split("/", 1)[0], []).append(p)
    return {
        d: sorted(groups[d], key=lambda p: _rank(p.name.split("/", 1)[-1]))
        for d in sorted(groups, key=lambda d: (d == "core", d))
    }


_ORDER = ("P", "P_set", "SoC", "ESS_state", "Q", "S", "PF", "U", "I", "f", "Ap", "Am", "Rp", "Rm")
_PHASE = re.compile(r"(U|I|P|Q|S|PF)([123])")


def _rank(point: str) -> tuple[int, int, int, str]:
    if point.startswith("ext."):
        return (3, 0, 0, point)
    if m := _PHASE.fullmatch(point):
        return (1, _ORDER.index(m[1]), int(m[2]), point)
    if point in _ORDER:
        return (0, _ORDER.index(point), 0, point)
    return (2, 0, 0, point)


def _trim(groups: dict[str, list[ppb.Point]], room: int) -> dict[str, list[ppb.Point]]:
    """At most `room` points, shared fairly: each device's points one at a time in turn, so a
    big device does not crowd out a small one; the core's own points and the extensions' ext.*
    (their health, in the processes table already) and an agent's state points (on its row)
    only when the devices' points all fit."""

    def background(device: str, p: ppb.Point) -> bool:
        point = p.name.split("/", 1)[-1]
        return device == "core" or point.startswith("ext.") or point in AGENT_STATE

    tiers = [
        {d: [p for p in g if background(d, p) == tier] for d, g in groups.items()}
        for tier in (False, True)
    ]
    keep: set[str] = set()
    for tier in tiers:
        while room > 0 and any(tier.values()):
            for points in tier.values():
                if room > 0 and points:
                    keep.add(points.pop(0).name)
                    room -= 1
    chosen = {d: [p for p in g if p.name in keep] for d, g in groups.items()}
    return {d: g for d, g in chosen.items() if g}


def _pane(rows: list[tuple[str, ppb.Point]]) -> RenderableType:
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("device", "point", "value", "unit", "quality", "writer", "rev"):
        table.add_column(col, justify="right" if col in ("value", "rev") else "left", no_wrap=True)
    last = None
    for device, p in rows:
        quality = quality_name(p.quality)
        table.add_row(
            device if device != last else "",
            p.name.split("/", 1)[-1],
            _fmt(p.value),
            p.unit,
            Text(quality, style="green" if quality == "GOOD" else "yellow"),
            p.writer.rsplit("/", 1)[-1],
            str(p.revision),
        )
        last = device
    return table


def gui_addresses(supervisor: Supervisor) -> dict[str, str]:
    """The web GUI's address for a browser, by process name (the demo's GUI listens on
    loopback without TLS)."""
    return {
        p.name: f"http://{p.config['listen']}/"
        for p in supervisor.cfg.processes
        if p.module == "untrusted.gui" and "listen" in p.config
    }


def _note(p: Process) -> str:
    # As `smx status`: a running process's trouble now, else why it last stopped.
    if p.state in ("starting", "running"):
        return p.health_error or ""
    return p.last_error or p.health_error or ""


def _setpoint_key(sp: cpb.Setpoint | None) -> tuple[object, ...]:
    if sp is None:
        return ()
    return (sp.id, sp.status, sp.applied_value.SerializeToString(), sp.reason)


def _why(err: grpc.aio.AioRpcError) -> str:
    if err.code() == grpc.StatusCode.UNAVAILABLE:
        return "unreachable"
    return f"{err.code().name}: {err.details()}"


def _clock(t: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "-"


def _fmt(v: ppb.Value) -> str:
    field = v.WhichOneof("kind")
    value = getattr(v, field) if field else "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)
