"""The smm extension under `smx run`: two Modbus meters (an SDM630 as the PCC meter `smm`, an
EM24 as the PV sub-meter `pv`) on one Modbus TCP simulator, read into the core with
docs/DATA-MODEL.md units; a config mistake is a clear error in `smx status`."""

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
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def site_toml(port: int, extra: str = "") -> str:
    return f"""\
site = "usm-0007"
[supervisor]
backoff_initial = "200ms"
[simulators.meters]
command = ["{sys.executable}", "-m", "extensions.smm.modbus_simulator", "--tcp",
           "127.0.0.1:{port}", "--meter", "1:eastron_sdm630", "--meter", "2:carlogavazzi_em24"]
[extensions.smm]
module = "extensions.smm"
devices = ["smm", "pv"]
[extensions.smm.config]
{extra}
[[extensions.smm.config.modbus]]
device = "smm"
map = "eastron_sdm630"
unit = 1
host = "127.0.0.1"
port = {port}
[[extensions.smm.config.modbus]]
device = "pv"
map = "carlogavazzi_em24"
unit = 2
host = "127.0.0.1"
port = {port}
"""


@pytest.fixture
def home():
    h = Path(tempfile.mkdtemp(prefix="smx-m-"))
    yield h
    shutil.rmtree(h, ignore_errors=True)


def run_site(home: Path, toml: str) -> subprocess.Popen:
    (home / "site.toml").write_text(toml)
    return subprocess.Popen(
        [sys.executable, "-m", "trusted.cli.main", "run", "--config", str(home / "site.toml")],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_two_modbus_meters_read_into_the_core(home):
    sup = run_site(home, site_toml(free_port()))
    try:
        wait_for(lambda: (home / "core.sock").exists())
        stubs = Stubs(Credentials.from_site(home, "admin").channel(unix_target(home / "core.sock")))
        names = ["smm/U1", "smm/I1", "smm/P", "smm/f", "smm/Ap", "pv/P", "pv/U1"]
        got = wait_for(
            lambda: {
                p.name: p
                for p in stubs.points.GetPoints(spb.GetPointsRequest(names=names), timeout=2).points
            }
        )
        assert got["smm/U1"].unit == "V" and 200 < got["smm/U1"].value.double_value < 260
        assert got["smm/f"].unit == "Hz" and 49 < got["smm/f"].value.double_value < 51
        assert got["smm/Ap"].unit == "kWh" and got["smm/P"].unit == "W"
        assert got["pv/P"].writer == "spiffe://usm-0007/trusted/smm"
        listed = stubs.points.ListPoints(spb.ListPointsRequest(pattern="smm/Ap")).points
        assert listed[0].index_max > 0  # the register's recirculation, declared
    finally:
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(30) == 0


def test_a_config_mistake_is_a_clear_error_in_status(home):
    sup = run_site(home, site_toml(free_port(), extra='pollling = "fast"'))
    try:
        status = home / "run" / "supervisor.json"

        def smm():
            return next(
                p for p in json.loads(status.read_text())["processes"] if p["name"] == "smm"
            )

        wait_for(lambda: smm()["restarts"] >= 1)
        assert "extensions.smm.config.pollling: unknown key" in smm()["last_error"]
        assert smm()["last_exit"] == "exit code 2"
    finally:
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(30) == 0
