"""The health file is one contract (smx.health), written by the SDK and read by the supervisor:
every state the SDK writes is one `smx status` shows — `failed` included, for a process that
is still running but cannot do its job (here: the core refuses its revoked certificate)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from extensions.sdk.testing import free_port, smx_command, wait_for
from smx.health import (
    FRESH_S,
    STATES,
    DeviceHealth,
    HealthReport,
    read_health_file,
    write_health_file,
)
from tests.e2e.test_site_with_sdk_extension import home  # noqa: F401 - a fixture
from trusted.supervisor.status import format_status

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("state", STATES)
def test_every_state_round_trips(tmp_path, state):
    path = tmp_path / "x.health.json"
    report = HealthReport(
        state,
        core_connected=True,
        last_error="meter pv: timed out",
        devices={"pv": DeviceHealth(ok=False, last_error="timed out", failures=3)},
    )
    write_health_file(path, report)
    assert read_health_file(path) == report
    assert [p.name for p in tmp_path.iterdir()] == ["x.health.json"]  # no temp file left


def test_what_is_not_the_contract_is_no_heartbeat(tmp_path):
    path = tmp_path / "x.health.json"
    assert read_health_file(path) is None
    for body in ("not json", "[]", '{"state": "crashed", "ts": 1}', '{"state": "running"}'):
        path.write_text(body)
        assert read_health_file(path) is None, body
    with pytest.raises(ValueError, match="health state 'crashed'"):
        HealthReport("crashed")
    old = HealthReport("running", ts=time.time() - FRESH_S - 1)
    assert not old.fresh() and HealthReport("running").fresh()


def test_status_shows_the_state_of_the_health_file():
    now = time.time()
    status = {
        "site": "s",
        "pid": 1,
        "started_at": now,
        "updated_at": now,
        "state": "running",
        "processes": [
            {"name": "battery", "kind": "extension", "state": "running", "health": "failed"}
        ],
    }
    assert re.search(r"battery\s+extension\s+running\s+failed", format_status(status, True))


def test_status_shows_a_running_process_s_trouble_now_not_why_it_last_died():
    now = time.time()
    usm1 = {
        "name": "usm1",
        "kind": "extension",
        "state": "running",
        "health": "degraded",
        "last_exit": "killed by SIGKILL",
        "last_error": "ts=... level=INFO msg=core reachable",
        "health_error": "remote: the remote USM revoked this link's certificate",
    }
    status = {"site": "s", "pid": 1, "started_at": now, "updated_at": now, "state": "running"}
    shown = format_status({**status, "processes": [usm1]}, True)
    assert "revoked this link's certificate" in shown and "level=INFO" not in shown
    stopped = {**usm1, "state": "backoff", "last_error": "PermissionError: usm1.key"}
    assert "PermissionError: usm1.key" in format_status({**status, "processes": [stopped]}, True)


def test_smx_status_shows_a_failed_extension_as_failed(home):  # noqa: F811
    port = free_port()
    (home / "site.toml").write_text(f"""\
site = "usm-0043"
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
interval = "200ms"
""")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    sup = subprocess.Popen(
        [*smx_command(), "run", "--config", str(home / "site.toml")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def status() -> str:
        return subprocess.run(
            [*smx_command(), "status", "--config", str(home / "site.toml")],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout

    try:
        wait_for(lambda: re.search(r"battery\s+extension\s+running\s+running", status()), 30)
        subprocess.run(
            [*smx_command(), "--home", str(home), "pki", "revoke", "battery"],
            env=env,
            check=True,
            capture_output=True,
            timeout=30,
        )
        line = wait_for(
            lambda: re.search(r"battery\s+extension\s+running\s+failed\s.*", status()), 30
        ).group(0)
        assert "CERTIFICATE_REVOKED" in line, line
        health = json.loads((home / "run" / "battery.health.json").read_text())
        assert health["state"] == "failed" and health["core_connected"] is False
    finally:
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(30) == 0


def test_the_sdk_reads_the_environment_the_supervisor_writes():
    from smx.client import Credentials
    from smx.process_env import ProcessEnv

    env = ProcessEnv(
        name="battery",
        target="unix:///site/core.sock",
        credentials=Credentials("/site/pki/ca.crt", "/site/b.crt", "/site/b.key"),
        site="usm-1",
        devices=("battery", "battery2"),
        config_file=Path("/site/run/battery.config.json"),
        health_file=Path("/site/run/battery.health.json"),
    )
    environ = env.to_environ()
    assert sorted(environ) == sorted(
        f"SMX_{k}" for k in "SITE NAME DOMAIN TARGET CA CERT KEY DEVICES CONFIG HEALTH_FILE".split()
    )
    assert ProcessEnv.from_environ(environ) == env
    assert env.site_dir == Path("/site")


def test_status_shows_a_long_error_whole_below_the_table():
    now = time.time()
    error = (
        "extensions.hp.config.rated_powr: unknown key (did you mean 'rated_power'? allowed: "
        "rated_power, interval)"
    )
    hp = {"name": "hp", "kind": "extension", "state": "backoff", "last_error": error}
    status = {"site": "s", "pid": 1, "started_at": now, "updated_at": now, "state": "running"}
    shown = format_status({**status, "processes": [hp]}, True)
    table, below = shown.split("\n")[2], shown.split("\n")[-1]
    assert table.endswith("...") and "interval" not in table  # the cell stays short
    assert below == f"hp: {error}"  # the end, what to do, is shown too
