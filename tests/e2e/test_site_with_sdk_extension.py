"""A site under `smx run` with a real SDK extension (the example battery) against its simulator:
the core is killed with SIGKILL mid-run; the supervisor restarts it, the extension reconnects by
itself (same process, no restart), and the core holds the battery's latest values again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from extensions.sdk.testing import free_port, wait_for
from smx.client import Credentials, Stubs, unix_target
from smx.v1 import point_service_pb2 as spb

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def home():
    h = Path(tempfile.mkdtemp(prefix="smx-s-"))
    yield h
    shutil.rmtree(h, ignore_errors=True)


def test_extension_reconnects_after_the_core_is_killed(home):
    port = free_port()
    (home / "site.toml").write_text(f"""\
site = "usm-0042"
[core.history]
flush_interval = "200ms"
[supervisor]
backoff_initial = "200ms"
[simulators.sim]
module = "examples.battery.simulator"
[simulators.sim.config]
port = {port}
[extensions.battery]
module = "examples.battery"
[extensions.battery.config]
port = {port}
interval = 0.2
""")
    sup = subprocess.Popen(
        [sys.executable, "-m", "trusted.cli.main", "run", "--config", str(home / "site.toml")],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    status_file = home / "run" / "supervisor.json"

    def status():
        return {p["name"]: p for p in json.loads(status_file.read_text())["processes"]}

    def soc():
        stubs = Stubs(Credentials.from_site(home, "admin").channel(unix_target(home / "core.sock")))
        (p,) = stubs.points.GetPoints(spb.GetPointsRequest(names=["battery/SoC"]), timeout=2).points
        stubs.channel.close()
        return p

    try:
        wait_for(lambda: status()["battery"]["health"] == "running")
        first = wait_for(soc)
        battery_pid, core_pid = status()["battery"]["pid"], status()["core"]["pid"]
        os.kill(core_pid, signal.SIGKILL)
        wait_for(
            lambda: status()["core"]["restarts"] == 1 and status()["core"]["health"] == "serving"
        )
        # Fresh values from the same extension process, written after the restart.
        again = wait_for(
            lambda: (
                (p := soc())
                and p.receive_time.ToMilliseconds() > first.receive_time.ToMilliseconds() + 500
                and p
            )
        )
        assert again.writer == "spiffe://usm-0042/trusted/battery"
        assert status()["battery"]["pid"] == battery_pid
        assert status()["battery"]["restarts"] == 0
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "trusted.cli.main",
                "status",
                "--config",
                str(home / "site.toml"),
            ],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            timeout=30,
        )
        assert "killed by SIGKILL" in out.stdout
    finally:
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(30) == 0
