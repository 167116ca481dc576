"""The guide's example (examples/battery) end to end, as the guide runs it: a simulator process,
the extension process with its own certificate, a real core; so docs/EXTENSIONS.md cannot rot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from extensions.sdk.testing import TestSite, free_port, wait_for
from smx.v1 import control_service_pb2 as cpb
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def site():
    with TestSite(
        {
            "battery": ("trusted", ["trusted-extension"], []),
            "ctrl": ("untrusted", ["untrusted-agent"], []),
        }
    ) as s:
        yield s


def test_example_battery_extension(site):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    sim = subprocess.Popen(
        [sys.executable, "-m", "examples.battery.simulator", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    ext_env = {
        **site.environ("battery", {"port": port, "interval": "200ms"}),
        "PYTHONPATH": str(ROOT),
    }
    log = open(site.home / "battery.log", "w")  # noqa: SIM115
    ext = subprocess.Popen(
        [sys.executable, "-m", "examples.battery"],
        env=ext_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        assert "battery simulator on" in sim.stdout.readline()
        admin = site.sync_stubs("admin")

        def points():
            try:
                r = admin.points.GetPoints(
                    spb.GetPointsRequest(names=["battery/P", "battery/SoC", "battery/ESS_state"])
                )
            except Exception:
                return None
            return {p.name: p for p in r.points}

        got = wait_for(points)
        assert got["battery/SoC"].value.double_value == pytest.approx(50.0, abs=1)
        assert got["battery/ESS_state"].value.string_value == "STANDBY"
        assert got["battery/P"].unit == "W"

        ctrl = site.sync_stubs("ctrl")
        sp = ctrl.control.RequestSetpoint(
            cpb.RequestSetpointRequest(
                name="battery/P_set", value=ppb.Value(double_value=8000), valid_for={"seconds": 2}
            )
        ).setpoint

        def outcome():
            s = ctrl.control.GetSetpoint(cpb.GetSetpointRequest(id=sp.id)).setpoint
            return s if s.status != cpb.SETPOINT_STATUS_PENDING else None

        done = wait_for(outcome)
        assert done.status == cpb.SETPOINT_STATUS_CLAMPED
        assert done.applied_value.double_value == 5000.0
        wait_for(lambda: points()["battery/P"].value.double_value == 5000.0)
        assert points()["battery/ESS_state"].value.string_value == "CHARGING"
        # valid_for elapsed: the extension falls back to idle by itself.
        wait_for(lambda: points()["battery/P"].value.double_value == 0.0, timeout=6)

        ext.send_signal(signal.SIGTERM)
        assert ext.wait(5) == 0
        lines = (site.home / "battery.log").read_text().splitlines()
        assert any(
            "level=INFO ext=battery" in line and "connected to the core" in line for line in lines
        ), lines[:5]
    finally:
        for p in (ext, sim):
            if p.poll() is None:
                p.kill()
                p.wait(5)
        log.close()
