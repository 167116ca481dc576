"""Site start-up and footprint under the supervisor (`smx run`).

1. Start-up: a 6-process site (core + 2 example battery extensions + their 2 simulators + the
   planner agent) from `smx run` until every process is healthy, against a baseline measured in
   the same run: the same 6 Python processes started in parallel, each only importing what it
   imports on a site and exiting (the floor Python itself sets on this machine).
2. Footprint: RSS of the core, of one idle extension, and of the whole site (every process,
   the supervisor included), against a bare `python -c "import grpc"` process.
Target: start-up <= 5 s. The demo and production sites' memory, in PSS (the measure the
memory target is stated in): bench/site_memory.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from harness import ROOT, fmt_table, target_line  # also puts the repository on sys.path

from extensions.sdk.testing import free_port

SITE = """\
site = "bench-site"
[simulators.sim1]
module = "examples.battery.simulator"
[simulators.sim1.config]
port = {p1}
[simulators.sim2]
module = "examples.battery.simulator"
[simulators.sim2.config]
port = {p2}
[extensions.battery]
module = "examples.battery"
[extensions.battery.config]
port = {p1}
[extensions.battery2]
module = "examples.battery"
[extensions.battery2.config]
port = {p2}
[agents.planner]
module = "untrusted.planner"
[agents.planner.config]
target = "battery/P_set"
"""
IMPORTS = {  # what each kind of process imports before it is useful
    "core": "import trusted.core.server",
    "extension": "import examples.battery.__main__",
    "simulator": "import examples.battery.simulator",
    "agent": "import untrusted.planner",
}
KINDS = ["core", "extension", "extension", "simulator", "simulator", "agent"]


def baseline_start() -> float:
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", IMPORTS[k]], cwd=ROOT) for k in KINDS]
    for p in procs:
        p.wait()
    return time.monotonic() - t0


def run_site(home: Path, toml: str, count: int) -> tuple[float, dict[str, float], float]:
    (home / "site.toml").write_text(toml)
    t0 = time.monotonic()
    sup = subprocess.Popen(
        [sys.executable, "-m", "trusted.cli.main", "run", "--config", str(home / "site.toml")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    status = home / "run" / "supervisor.json"
    started = None
    while time.monotonic() - t0 < 60:
        try:
            st = json.loads(status.read_text())
        except (OSError, ValueError):
            time.sleep(0.05)
            continue
        procs = st.get("processes", [])
        healthy = [
            p
            for p in procs
            if p.get("health") in ("running", "serving", "-") and p.get("state") == "running"
        ]
        if len(procs) == count and len(healthy) == count:
            started = time.monotonic() - t0
            break
        time.sleep(0.05)
    if started is None:
        sup.send_signal(signal.SIGTERM)
        sup.wait(30)
        raise SystemExit(f"site did not become healthy: {status.read_text()}")
    time.sleep(3)  # settle: idle footprint
    tree = [psutil.Process(sup.pid), *psutil.Process(sup.pid).children(recursive=True)]
    rss = {}
    for p in tree:
        cmd = " ".join(p.cmdline())
        name = (
            "supervisor"
            if p.pid == sup.pid
            else "core"
            if " core" in cmd
            else cmd.split("-m ")[-1].split()[0]
        )
        rss[f"{name} ({p.pid})"] = p.memory_info().rss / 2**20
    sup.send_signal(signal.SIGTERM)
    t1 = time.monotonic()
    sup.wait(30)
    return started, rss, time.monotonic() - t1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repetition")
    args = parser.parse_args()
    reps = 1 if args.quick else 3
    bare = subprocess.Popen([sys.executable, "-c", "import grpc, time; time.sleep(30)"])
    time.sleep(1.5)
    bare_rss = psutil.Process(bare.pid).memory_info().rss / 2**20
    bare.kill()
    rows, starts, bases = [], [], []
    rss: dict[str, float] = {}
    stop = 0.0
    for i in range(reps):
        base = baseline_start()
        home = Path(tempfile.mkdtemp(prefix="smx-b-"))
        try:
            toml = SITE.format(p1=free_port(), p2=free_port())
            started, rss, stop = run_site(home, toml, len(KINDS))
        finally:
            shutil.rmtree(home, ignore_errors=True)
        starts.append(started)
        bases.append(base)
        rows.append(
            [i + 1, f"{base:.2f}", f"{started:.2f}", f"{started / base:.1f}x", f"{stop:.2f}"]
        )
    print("site start-up: `smx run` of a 6-process site until all healthy (s)")
    print(fmt_table(["run", "baseline: 6 imports", "smx run", "ratio", "stop"], rows))
    print()
    print(
        f"footprint after start-up, idle (RSS MB; baseline: bare python + grpc = {bare_rss:.1f} MB)"
    )
    print(
        fmt_table(
            ["process", "RSS MB", "vs bare"],
            [[k, f"{v:.1f}", f"{v / bare_rss:.2f}x"] for k, v in sorted(rss.items())],
        )
    )
    total = sum(rss.values())
    core = next(v for k, v in rss.items() if k.startswith("core"))
    ext = next(v for k, v in rss.items() if k.startswith("examples.battery ("))
    print(
        f"core + one idle extension: {core + ext:.1f} MB; whole site (7 processes incl. "
        f"supervisor): {total:.1f} MB"
    )
    print()
    # The demo site's and the production site's memory, in PSS: bench/site_memory.py.
    print(target_line("site start-up", max(starts), 5.0, "s", False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
