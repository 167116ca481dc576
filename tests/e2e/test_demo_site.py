"""The demo's site under a real `smx run` (as root: every process its own OS user): lessag,
bound with `role = "none"` and exactly the reads, requests and writes its config needs, connects
to the demo's Mosquitto with its own key, publishes, drives the battery and writes its state
points, and the core's audit log holds no denial from a while of normal work of the whole
site; a read and a request outside its lists are refused with PERMISSION_DENIED."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from extensions.sdk.testing import smx_command, wait_for
from smx.process_env import RunPaths
from tests.untrusted.lessag.broker import Subscriber
from trusted.cli.demo_cmd import MQTT_PREFIX, write_site

ROOT = Path(__file__).resolve().parents[2]


def _smx(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*smx_command(), *args],
        env=dict(os.environ, PYTHONPATH=str(ROOT), SMX_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=30,
    )


def _point(home: Path, name: str) -> object:
    r = _smx(home, "points", "get", name, "--json")
    if r.returncode != 0:
        return None
    value = json.loads(r.stdout)["value"]  # {"string_value": "connected"}
    return next(iter(value.values()), None)


class _Broker:  # what tests.untrusted.lessag.broker.Subscriber needs of a broker
    def __init__(self, port: int, pki: object) -> None:
        self.port, self.pki = port, pki


def test_lessag_bound_to_exactly_its_needs_works_without_a_denial():
    home = Path(tempfile.mkdtemp(prefix="smx-dd-"))
    write_site(home)
    site = (home / "site.toml").read_text()
    assert 'role = "none"' in site
    sup = subprocess.Popen(
        [*smx_command(), "run", "--config", str(home / "site.toml")],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    paths = RunPaths(home)
    sub = None
    try:
        wait_for(lambda: _point(home, "lessag/mqtt") == "connected", 40)

        def lessags_setpoint_applied() -> bool:
            r = _smx(home, "setpoint", "status", "battery/P_set", "--json")
            got = json.loads(r.stdout) if r.returncode == 0 else {}
            got = got.get("setpoint", got)
            return got.get("requester", "").endswith("/lessag") and got.get("status") in (
                "SETPOINT_STATUS_APPLIED",
                "SETPOINT_STATUS_CLAMPED",
            )

        wait_for(lessags_setpoint_applied, 30)
        # What it publishes reaches the broker (as GESSCon would see it, with its certificate).
        mqtt = home / "mqtt"
        port = int(site.split("[agents.lessag.config.mqtt]")[1].split("port = ")[1].split()[0])
        pki = type("Pki", (), {"ca": mqtt / "ca.crt"})()
        sub = Subscriber(
            _Broker(port, pki),  # type: ignore[arg-type]
            [f"{MQTT_PREFIX}/#"],
            client_id="gesscon-test",
            cert=(mqtt / "gesscon.crt", mqtt / "gesscon.key"),
        )
        wait_for(lambda: sub.on(f"{MQTT_PREFIX}/status"), 20)
        wait_for(lambda: sub.on(f"{MQTT_PREFIX}/gesscon/report"), 20)
        time.sleep(10)  # a while of normal operation: polls, publishes, health, setpoints
        statuses = {p["name"]: p for p in json.loads(paths.status.read_text())["processes"]}
        assert {statuses[n]["health"] for n in ("battery", "smm", "lessag")} == {"running"}
        assert _point(home, "lessag/queued") in (0, "0")

        # Outside its lists: refused, although the default role would allow both.
        read = _smx(home, "points", "get", "--as", "lessag", "ev1/P")
        assert read.returncode != 0 and "PERMISSION_DENIED" in read.stderr, read.stderr
        request = _smx(
            home,
            "setpoint",
            "request",
            "--as",
            "lessag",
            "fronius/P_ESS_set",
            "0",
            "--valid-for",
            "10s",
        )
        assert request.returncode != 0 and "PERMISSION_DENIED" in request.stderr, request.stderr
    finally:
        if sub is not None:
            sub.close()
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(30) == 0
    try:
        records = [json.loads(line) for line in (home / "data" / "audit.jsonl").open()]
        assert records  # the audit log was written
        denied = [
            (r.get("identity", "").rsplit("/", 1)[-1], r.get("point"))
            for r in records
            if r.get("kind") == "denied"
        ]
        assert denied == [("lessag", "ev1/P"), ("lessag", "fronius/P_ESS_set")], denied
    finally:
        shutil.rmtree(home, ignore_errors=True)
