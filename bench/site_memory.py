"""Site memory table: RSS, PSS and USS of every process of a whole site under `smx run`.

Sites (each under `smx run`, as its own user per process when run as root: isolation on, as in
production), measured `--seconds` after every process is up, from `smx status --json`:

1. demo: what `smx demo` runs (trusted.cli.demo_cmd.write_site: core, battery, smm, fronius,
   ocpp_proxy, lessag with Mosquitto and GESSCon, each device simulated; run by `smx run`, not
   by the demo's live view), and the same site without its simulators (devices absent, no
   broker: lessag queues);
2. production: the whole S4G site, no simulators, devices absent (the idle footprint): the core
   with a TCP listener, the supervisor, smm (Modbus), fronius, ocpp_proxy (one charge point,
   SCADA absent), remote_usm (remote absent), energy_router (serial ports absent), lessag, the
   GUI (listening on loopback) and Mosquitto, the latter started beside the site as a system
   service would be (its PSS from /proc/PID/smaps_rollup). `--site built-before` is the same
   site without the Energy Router and the GUI (docs/PERFORMANCE.md, runs 9-13).

Baseline, measured in the same run after each site stopped: as many bare Python processes as
the site has, each only `import grpc` (the floor Python + grpc sets per process), started
together and measured together. Target: the whole production site <= 200 MB PSS (MiB, as
`smx status` counts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from harness import (  # also puts the repository on sys.path
    ROOT,
    fmt_table,
    smaps_rollup,
    target_line,
)

from extensions.sdk.testing import free_port
from tests.support.smx_run import SmxRun
from trusted.cli import demo_cmd
from trusted.cli.demo_mqtt import BROKER, MOSQUITTO, MqttFiles, give_files, make_pki, mosquitto_conf
from trusted.supervisor import isolation
from trusted.supervisor.site_config import load_site_config

MB = 2**20  # a MiB, as `smx status` counts
TARGET_MB = 200.0  # 10^6 bytes each
UP = ("serving", "running", "degraded", "-")  # health of a process that is up (devices absent)
PRODUCTION_SITE = "usm-bench"
USM = "usm1"


def strip_tables(toml: str, drop: Callable[[str], bool]) -> str:
    """`toml` without the tables (and their sub-tables) whose dotted name `drop` accepts."""
    out, keep = [], True
    for line in toml.splitlines(keepends=True):
        if line.startswith("["):
            keep = not drop(line.strip().strip("[]"))
        if keep:
            out.append(line)
    return "".join(out)


def no_simulators(name: str) -> bool:
    return name.startswith("simulators.")


@dataclass
class Prepared:
    """What a site needs beside `smx run`: extra accounts' names, a broker we started."""

    names: set[str] = field(default_factory=set)
    broker: subprocess.Popen[bytes] | None = None


def demo_site(with_simulators: bool, prep: Prepared) -> Callable[[Path], str]:
    def write(home: Path) -> str:
        demo_cmd.write_site(home)  # site.toml, MQTT PKI, accounts and keys as `smx demo` does
        toml = (home / "site.toml").read_text()
        prep.names |= {p.name for p in load_site_config(home / "site.toml").processes}
        return toml if with_simulators else strip_tables(toml, no_simulators)

    return write


def production_site(prep: Prepared, fork: bool = True, whole: bool = True) -> Callable[[Path], str]:
    """`fork`: supervisor.fork_server as by default; False starts each process on its own.
    `whole`: with the Energy Router connector and the GUI (runs 9-13 had neither)."""

    def write(home: Path) -> str:
        mqtt_port = free_port()
        toml = demo_cmd.site_toml(home, mqtt_port, broker=False)
        if not fork:
            toml = toml.replace("[supervisor]\n", "[supervisor]\nfork_server = false\n", 1)
        # The demo's site less its simulators and the example battery (and, for the site of
        # runs 9-13, the Energy Router and the GUI); its ER ports are absent then.
        dropped = ["extensions.battery"] + ([] if whole else ["extensions.er", "agents.gui"])
        toml = strip_tables(
            toml,
            lambda n: no_simulators(n) or any(n == d or n.startswith(d + ".") for d in dropped),
        )
        toml = toml.replace(f'site = "{demo_cmd.SITE}"', f'site = "{PRODUCTION_SITE}"', 1)
        toml = toml.replace(
            "[core.history]", f'[core]\ntcp = "127.0.0.1:{free_port()}"\n\n[core.history]', 1
        )
        # The remote USM's link files: a CA and certificate of its own (the remote is absent).
        link = make_pki(home / USM, ["usm-link"])
        toml += f"""
[extensions.{USM}]
module = "extensions.remote_usm"
[extensions.{USM}.config]
remote = "127.0.0.1:{free_port()}"
remote_ca = "{link.ca}"
remote_cert = "{link.cert("usm-link")}"
remote_key = "{link.key("usm-link")}"
"""
        (home / "site.toml").write_text(toml)
        os.chmod(home / "site.toml", 0o600)
        prefix = demo_cmd.MQTT_PREFIX
        mqtt = make_pki(home / "mqtt", [demo_cmd.AGENT])
        mosquitto_conf(mqtt, mqtt_port, {demo_cmd.AGENT: [f"topic readwrite {prefix}/#"]})
        names = {p.name for p in load_site_config(home / "site.toml").processes}
        prep.names |= names | {"mqtt-broker"}
        creds: dict[str, Any] = {}
        if isolation.isolation_wanted():
            accounts = isolation.ensure_accounts(PRODUCTION_SITE, home, sorted(prep.names))
            group = accounts["core"].groups[0]
            owners = {
                accounts[demo_cmd.AGENT].uid: [mqtt.key(demo_cmd.AGENT)],
                accounts["mqtt-broker"].uid: [mqtt.key(BROKER)],
            }
            give_files(mqtt, group, owners)  # once: each call gives every file back to root
            give_files(link, group, {accounts[USM].uid: [link.key("usm-link")]})
            os.chown(home, 0, group)  # as `smx run` leaves it: the site's group may enter
            os.chmod(home, 0o750)
            broker = accounts["mqtt-broker"]
            creds = {"user": broker.uid, "group": broker.gid, "extra_groups": [group]}
        prep.broker = start_broker(MqttFiles(home / "mqtt"), home, creds)
        return toml

    return write


def start_broker(mqtt: MqttFiles, home: Path, creds: dict[str, Any]) -> subprocess.Popen[bytes]:
    """Mosquitto beside the site, as its own user (root: it would switch to `mosquitto`)."""
    with open(home / "mosquitto.log", "wb") as out:
        return subprocess.Popen(
            [MOSQUITTO, "-c", str(mqtt.conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            **creds,
        )


def is_python(pid: int) -> bool:
    try:
        return "python" in Path(psutil.Process(pid).exe()).name
    except psutil.Error:
        return False


def wait_up(run: SmxRun, timeout: float) -> float:
    """Seconds until the supervisor and every process run and are healthy (or degraded: a
    device is absent)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        st = run.status()
        procs = st.get("processes", [])
        if (
            st.get("state") == "running"
            and procs
            and all(p.get("state") == "running" and p.get("health") in UP for p in procs)
        ):
            return time.monotonic() - t0
        if run.proc.poll() is not None:
            break
        time.sleep(0.2)
    raise SystemExit(
        "site did not come up: "
        + ", ".join(f"{p['name']} {p.get('state')}/{p.get('health')}" for p in procs)
        + f"\n{run.log()[-2000:]}"
    )


def smx_status(config: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "trusted.cli.main", "status", "--config", str(config), "--json"],
        capture_output=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    data: dict[str, Any] = json.loads(out.stdout)
    return data


@dataclass
class Measured:
    label: str
    rows: list[tuple[str, str, str, dict[str, int], bool]]  # name, kind, health, memory, python
    up_s: float
    restarts: int

    def total(self, key: str = "pss") -> float:
        return sum(m[key] for _, _, _, m, _ in self.rows) / MB

    @property
    def pythons(self) -> int:
        return sum(1 for *_, py in self.rows if py)


def dev_tools_note() -> str | None:
    """A line saying the figures include development tools, when this interpreter has them."""
    import importlib.util

    found = [name for name in ("grpc_tools", "socks") if importlib.util.find_spec(name)]
    if not found:
        return None
    return (
        f"note: this interpreter has development packages ({', '.join(found)}), which the "
        "site's processes load: a production install has none; run with .venv-run/bin/python"
    )


def run_site(label: str, write: Callable[[Path], str], prep: Prepared, seconds: float) -> Measured:
    run = None
    try:
        # The supervisor as deploy/systemd/smx.service runs it (its children get -OO from it).
        run = SmxRun(write, prefix="smx-sm-", env={"PYTHONOPTIMIZE": "2"})
        up = wait_up(run, 120.0)
        time.sleep(seconds)
        st = smx_status(run.config)
        rows: list[tuple[str, str, str, dict[str, int], bool]] = [
            ("supervisor (smx run)", "-", st["state"], st["memory"], True)
        ]
        restarts = 0
        for p in st["processes"]:
            if p.get("state") != "running" or not p.get("memory"):
                raise SystemExit(f"{label}: {p['name']} is {p.get('state')} at measurement")
            rows.append((p["name"], p["kind"], p["health"], p["memory"], is_python(p["pid"])))
            restarts += int(p.get("restarts", 0))
        for server in st.get("fork_servers", []):  # the image its processes were forked from
            rows.append((server["name"], "fork-server", "-", server["memory"], False))
        if prep.broker is not None:
            if prep.broker.poll() is not None:
                raise SystemExit(f"{label}: mosquitto exited: {(run.home / 'mosquitto.log')}")
            rows.append(
                ("mosquitto (beside)", "service", "-", smaps_rollup(prep.broker.pid), False)
            )
        return Measured(label, rows, up, restarts)
    finally:
        if run is not None:
            cleanup(run, prep)
        elif prep.broker is not None:
            prep.broker.kill()
            prep.broker.wait(5)


def cleanup(run: SmxRun, prep: Prepared) -> None:
    """Stop the site (SIGTERM to `smx run`, wait), the broker, then anything left running as
    one of the site's users, and remove those users (as `smx demo` does) and the home."""
    cfg_site = load_site_config(run.config).site
    home = run.home
    if prep.broker is not None and prep.broker.poll() is None:
        prep.broker.terminate()
        try:
            prep.broker.wait(10)
        except subprocess.TimeoutExpired:
            prep.broker.kill()
            prep.broker.wait(5)
    code = run.stop()
    if code not in (0, None):
        print(f"note: smx run exited with {code}", file=sys.stderr)
    run.close()
    if not isolation.isolation_wanted():
        return
    import pwd

    uids = set()
    for name in ["core", isolation.REAPER, *sorted(prep.names)]:
        try:
            uids.add(pwd.getpwnam(isolation.user_name(cfg_site, home, name)).pw_uid)
        except KeyError:
            pass
    for proc in psutil.process_iter(["uids"]):
        if proc.info["uids"] is not None and proc.info["uids"].real in uids:
            print(f"note: killing leftover pid {proc.pid}", file=sys.stderr)
            try:
                proc.kill()
            except psutil.Error:
                pass
    isolation.remove_accounts(cfg_site, home, sorted(prep.names))
    for name in ["core", isolation.REAPER, *sorted(prep.names)]:
        try:
            pwd.getpwnam(isolation.user_name(cfg_site, home, name))
            print(f"note: user of {name} left behind", file=sys.stderr)
        except KeyError:
            pass


def baseline(n: int) -> list[dict[str, int]]:
    """PSS, USS and RSS of `n` bare `import grpc` processes started and measured together."""
    code = "import grpc, sys; print('ready', flush=True); sys.stdin.read()"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        for _ in range(n)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        time.sleep(2.0)
        out = []
        for p in procs:
            info = psutil.Process(p.pid).memory_full_info()
            out.append({"rss": info.rss, "pss": info.pss, "uss": info.uss})
        return out
    finally:
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
        for p in procs:
            p.wait(10)


def table(m: Measured, base: list[dict[str, int]]) -> str:
    per = sum(b["pss"] for b in base) / len(base) / MB
    rows: list[list[object]] = [
        [
            name,
            kind,
            health,
            mem["pss"] / MB,
            mem["uss"] / MB,
            mem["rss"] / MB,
            f"{mem['pss'] / MB / per:.2f}x" if py else "-",
        ]
        for name, kind, health, mem, py in m.rows
    ]
    rows.append(["total", "", "", m.total("pss"), m.total("uss"), m.total("rss"), ""])
    head = (
        f"{m.label}: {len(m.rows)} processes ({m.pythons} Python), up in {m.up_s:.1f} s, "
        f"restarts {m.restarts} (MiB; one bare `import grpc` process: {per:.1f} PSS)"
    )
    headers = ["process", "kind", "health", "PSS", "USS", "RSS (summed)", "PSS vs bare"]
    return head + "\n" + fmt_table(headers, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=45.0, help="idle after start-up")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 s idle")
    parser.add_argument(
        "--site", choices=["demo", "production", "both", "built-before"], default="both"
    )
    parser.add_argument(
        "--no-fork",
        action="store_true",
        help="also the production site with supervisor.fork_server = false, in the same run",
    )
    args = parser.parse_args()
    seconds = 5.0 if args.quick else args.seconds
    if not Path(MOSQUITTO).exists():
        raise SystemExit(f"{MOSQUITTO} not found (apt-get install mosquitto)")
    plans: list[tuple[str, Callable[[Prepared], Callable[[Path], str]]]] = []
    if args.site in ("demo", "both"):
        plans += [
            ("demo (simulators included)", lambda p: demo_site(True, p)),
            ("demo without simulators", lambda p: demo_site(False, p)),
        ]
    if args.site in ("production", "both"):
        plans.append(("production (the S4G site, devices absent)", production_site))
        if args.no_fork:
            plans.append(
                ("production, fork_server = false", lambda p: production_site(p, fork=False))
            )
    if args.site == "built-before":
        plans.append(
            (
                "production without er and gui (runs 9-13)",
                lambda p: production_site(p, whole=False),
            )
        )
    iso = "isolation on (root)" if isolation.isolation_wanted() else "isolation off (not root)"
    print(f"site memory: each site under `smx run`, {iso}, measured {seconds:g} s after all up")
    if note := dev_tools_note():
        print(note)
    print()
    summary: list[list[object]] = []
    production = None
    for label, plan in plans:
        prep = Prepared()
        m = run_site(label, plan(prep), prep, seconds)
        base = baseline(m.pythons)
        bare = sum(b["pss"] for b in base) / MB
        print(table(m, base))
        print()
        summary.append(
            [
                label,
                len(m.rows),
                m.pythons,
                m.total(),
                bare,
                f"{m.total() / bare:.2f}x",
                m.total("rss"),
            ]
        )
        if label.startswith("production") and production is None:
            production = m
    print(
        "totals (MiB): site PSS against N bare `import grpc` processes (N = its Python processes)"
    )
    print(
        fmt_table(
            ["site", "processes", "N", "site PSS", "baseline PSS", "ratio", "site RSS summed"],
            summary,
        )
    )
    if production is not None:
        print()
        # The 200 MB read strictly: 10^6 bytes (the tables above are in MiB, 2^20).
        total_mb = production.total() * 2**20 / 1e6
        print(target_line("whole production site PSS", total_mb, TARGET_MB, "MB", False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
