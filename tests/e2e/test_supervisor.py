"""`smx run` with real processes: a core, two dummy extensions (tests/support/dummy_ext.py), a
dummy simulator and a simulator that always crashes. Health in `smx status`, restart of a killed
extension and of a killed core, the generated policy, and a clean stop that leaves nothing.

The tests of this module share one running site and run in file order; the last one stops it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from extensions.sdk.testing import wait_for
from smx.client import Credentials, Stubs, error_reason, unix_target
from smx.health import HealthReport, read_health_file, write_health_file
from smx.v1 import admin_service_pb2 as apb
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb
from tests.support.smx_run import SmxRun, quick_site

ROOT = Path(__file__).resolve().parents[2]
SITE = "usm-0099"

SITE_TOML = (
    quick_site(SITE)
    + """
[extensions.meter]
module = "tests.support.dummy_ext"
devices = ["meter", "pv"]
[extensions.meter.config]
port = "/dev/ttyUSB9"

[extensions.ess]
module = "tests.support.dummy_ext"
reads = ["meter/P"]

[simulators.meter-sim]
module = "tests.support.dummy_ext"

[simulators.flaky]
command = ["sh", "-c", "echo 'flaky: device on fire' >&2; exit 3"]
"""
)


def smx(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trusted.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class RunningSite(SmxRun):
    def __init__(self) -> None:
        # smx run as deploy/systemd/smx.service runs it: without docstrings and asserts.
        super().__init__(SITE_TOML, env={"PYTHONOPTIMIZE": "2"})
        self.pids: set[int] = set()  # every pid the supervisor ever reported

    def status(self) -> dict[str, Any]:
        data = super().status()
        self.pids |= {p["pid"] for p in data["processes"] if p.get("pid")}
        return data

    def proc_of(self, name: str) -> dict[str, Any]:
        (p,) = [p for p in self.status()["processes"] if p["name"] == name]
        return p

    def stubs(self, name: str) -> Stubs:
        creds = Credentials.from_site(self.home, name)
        return Stubs(creds.channel(unix_target(self.home / "core.sock")))

    def close(self) -> None:
        self.status()
        super().close()
        for pid in self.pids:  # restarted ones too
            self.kill_group(pid)


@pytest.fixture(scope="module")
def site() -> Iterator[RunningSite]:
    s = RunningSite()
    try:
        yield s
    finally:
        s.close()


def healthy(site: RunningSite) -> bool:
    procs = {p["name"]: p for p in site.status()["processes"]}
    want = {
        "core": "serving",
        "meter": "running",
        "ess": "running",
        "meter-sim": "-",
    }
    return all(
        procs.get(n, {}).get("state") == "running" and procs[n]["health"] == h
        for n, h in want.items()
    )


def test_all_processes_come_up_healthy(site):
    t0 = time.monotonic()
    wait_for(lambda: healthy(site) or site.proc.poll() is not None, 20, what="a healthy site")
    assert site.proc.poll() is None, site.log()
    print(f"site healthy {time.monotonic() - t0:.2f}s after `smx run`")
    r = smx("status", "--config", str(site.config))
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[2:]}
    assert rows["core"][1:4] == ["core", "running", "serving"]
    assert rows["meter"][1:4] == ["extension", "running", "running"]
    assert rows["ess"][1:4] == ["extension", "running", "running"]
    assert rows["meter-sim"][1:4] == ["simulator", "running", "-"]
    # The crashing simulator is retried with back-off and shows what it said before dying.
    flaky = wait_for(
        lambda: site.proc_of("flaky")["restarts"] >= 2 and 1, 15.0, what="flaky restarted"
    )
    assert flaky
    flaky = site.proc_of("flaky")
    assert flaky["last_exit"] == "exit code 3"
    assert flaky["last_error"] == "flaky: device on fire"
    # The process contract: each got its config file, and its log holds its output.
    assert (
        'meter: config {"port": "/dev/ttyUSB9"}'
        in (site.home / "run" / "logs" / "meter.log").read_text()
    )
    assert (site.home / "run" / "meter.config.json").stat().st_mode & 0o777 == 0o600


def test_processes_run_without_docstrings_and_their_directory_on_the_import_path(site):
    """An extension as `python -OO -P`: no docstrings nor asserts (memory), and nothing it leaves
    in its writable working directory is imported by its restart; a simulator runs plain, though
    `smx run` itself has PYTHONOPTIMIZE=2."""
    wait_for(lambda: healthy(site) or site.proc.poll() is not None, 20, what="a healthy site")
    logs = site.home / "run" / "logs"

    def flags(name: str) -> str:
        return next(ln for ln in (logs / f"{name}.log").read_text().splitlines() if "flags" in ln)

    assert flags("meter") == "flags: optimize=2 safe_path=True cwd=False"
    assert flags("meter-sim") == "flags: optimize=0 safe_path=False cwd=True"


def test_without_isolation_smx_runs_optimize_setting_reaches_no_child(monkeypatch):
    """As root the children get a minimal environment; without isolation they get the
    supervisor's, but not PYTHONOPTIMIZE: PYTHON_FLAGS decides who runs with -OO."""
    from trusted.supervisor.runner import _base_env

    monkeypatch.setenv("PYTHONOPTIMIZE", "2")
    monkeypatch.setenv("LANG", "C.UTF-8")
    env = _base_env()
    assert "PYTHONOPTIMIZE" not in env and env["LANG"] == "C.UTF-8"


def test_status_shows_each_process_memory_and_the_sites_total(site):
    """PSS per process and the total: RSS would count the shared Python/grpc pages again for
    every process."""
    wait_for(lambda: healthy(site) or site.proc.poll() is not None, 20, what="a healthy site")
    r = smx("status", "--home", str(site.home), "--json")
    data = json.loads(r.stdout)
    # (the crashing simulator may die between the status file and the read of its memory)
    running = [p for p in data["processes"] if p["state"] == "running" and p["memory"]]
    assert {"core", "meter", "ess"} <= {p["name"] for p in running}
    assert all(p["memory"]["pss"] > 1_000_000 for p in running)
    for p in running:
        m = p["memory"]
        assert m["uss"] <= m["pss"] <= m["rss"], p["name"]
    total = data["memory_total"]
    # The total counts starting processes too (the crashing simulator restarts now and then).
    alive = [p for p in data["processes"] if p["state"] in ("starting", "running") and p["memory"]]
    # Two extensions: too few for a fork server (docs/SITE.md, "Fork servers"; the total with
    # one is tested in tests/security/test_isolation.py).
    assert data["fork_servers"] == []
    assert {p["forked_from"] for p in alive} == {None}
    assert total["pss"] == data["memory"]["pss"] + sum(p["memory"]["pss"] for p in alive)
    assert total["pss"] < total["rss"]  # shared pages counted once
    # What a production site would run: the simulators left out.
    simulated = sum(p["memory"]["pss"] for p in alive if p["kind"] == "simulator")
    assert simulated > 0
    assert data["memory_site"]["pss"] == total["pss"] - simulated
    table = smx("status", "--home", str(site.home)).stdout
    assert "PSS MiB" in table.splitlines()[1]
    core = next(line for line in table.splitlines() if line.startswith("core "))
    assert re.search(r"\s\d+\.\d\s", core), core
    assert re.search(r"memory, supervisor and processes: [\d.]+ MiB PSS", table), table
    assert re.search(r"without the simulators: [\d.]+ MiB PSS", table), table


def test_a_second_supervisor_for_the_same_site_is_refused(site):
    r = smx("run", "--config", str(site.config))
    assert r.returncode == 1
    assert "another supervisor" in r.stderr and str(site.proc.pid) in r.stderr


def test_generated_policy_is_least_privilege(site):
    meter = site.stubs("meter")

    def write(name: str) -> None:
        sample = ppb.PointSample(name=name, value=ppb.Value(double_value=1.0))
        meter.points.WritePoints(spb.WritePointsRequest(samples=[sample]), timeout=5)

    write("meter/x")
    write("pv/x")  # its second device
    with pytest.raises(grpc.RpcError) as info:
        write("other/x")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(info.value) == "PERMISSION_NOT_GRANTED"
    with pytest.raises(grpc.RpcError):  # ess may read meter/P but not write meter's points
        sample = ppb.PointSample(name="meter/x", value=ppb.Value(double_value=2.0))
        site.stubs("ess").points.WritePoints(spb.WritePointsRequest(samples=[sample]), timeout=5)
    records = (
        site.stubs("admin")
        .admin.ListAuditRecords(
            apb.ListAuditRecordsRequest(kind="denied", identity=f"spiffe://{SITE}/trusted/meter")
        )
        .audit_records
    )
    assert any(r.point == "other/x" for r in records)


def test_killed_extension_is_restarted(site):
    old = site.proc_of("meter")["pid"]
    os.kill(old, signal.SIGKILL)
    p = wait_for(
        lambda: (p := site.proc_of("meter"))["pid"] != old and p["state"] != "backoff" and p,
        15.0,
        what="meter restarted",
    )
    assert p["restarts"] == 1
    assert p["last_exit"] == "killed by SIGKILL"
    assert alive(p["pid"]) and not alive(old)
    r = smx("status", "--home", str(site.home))
    assert r.returncode == 0
    (row,) = [line for line in r.stdout.splitlines() if line.startswith("meter ")]
    assert "killed by SIGKILL" in row and " 1 " in row


def _value(stubs: Stubs, name: str) -> float:
    try:
        resp = stubs.points.GetPoints(spb.GetPointsRequest(names=[name]), timeout=2)
    except grpc.RpcError:
        return -1.0
    return resp.points[0].value.double_value if resp.points else -1.0


def test_killed_core_is_restarted_and_extensions_reconnect(site):
    admin = site.stubs("admin")
    before = wait_for(lambda: _value(admin, "ess/alive") > 0 and 1, 15.0, what="ess writing")
    assert before
    before = _value(admin, "ess/alive")
    ess_pid = site.proc_of("ess")["pid"]
    core_pid = site.proc_of("core")["pid"]
    os.kill(core_pid, signal.SIGKILL)
    core = wait_for(
        lambda: (c := site.proc_of("core"))["pid"] != core_pid and c["health"] == "serving" and c,
        15.0,
        what="core restarted and serving",
    )
    assert core["restarts"] == 1 and core["last_exit"] == "killed by SIGKILL"
    # ess was not restarted: it reconnected by itself and its points come back.
    wait_for(lambda: _value(admin, "ess/alive") > before, 15.0, what="ess writing again")
    ess = site.proc_of("ess")
    assert ess["pid"] == ess_pid and ess["restarts"] == 0
    wait_for(lambda: site.proc_of("ess")["health"] == "running", 15.0, what="ess healthy")


def test_the_core_keeps_a_heartbeat_and_a_stale_one_is_unhealthy(site):
    """The core writes its health file like every process; the supervisor counts a stale one
    (a hung event loop) as no heartbeat, whatever the socket says."""
    wait_for(lambda: healthy(site) or site.proc.poll() is not None, 20, what="a healthy site")
    path = (site.home / "run" / "core.health.json").resolve()  # isolated: run/core/health.json
    report = read_health_file(path)
    assert report is not None and report.state == "running" and report.fresh()
    pid = site.proc_of("core")["pid"]
    os.kill(pid, signal.SIGSTOP)  # a hung core: no more heartbeats
    try:
        write_health_file(path, HealthReport("running", ts=time.time() - 60))
        wait_for(
            lambda: site.proc_of("core")["health"] == "no heartbeat", 15.0, what="core unhealthy"
        )
        r = smx("status", "--home", str(site.home))
        (row,) = [line for line in r.stdout.splitlines() if line.startswith("core ")]
        assert "no heartbeat" in row, r.stdout
    finally:
        os.kill(pid, signal.SIGCONT)
    # Its next heartbeat (at most WRITE_PERIOD_S later) makes it serving again.
    wait_for(lambda: site.proc_of("core")["health"] == "serving", 20.0, what="core serving")
    assert site.proc_of("core")["pid"] == pid


def test_the_supervisors_handshake_needs_a_certificate_the_core_accepts(site, tmp_path):
    """The supervisor's check of the core's socket (stdlib TLS, no gRPC) fails for a client the
    core refuses: in TLS 1.3 the client finishes its handshake before the server has checked
    its certificate, so a check that stopped there would pass anyone."""
    from trusted.pki import SiteCA
    from trusted.supervisor.runner import _client_tls, _handshake

    wait_for(lambda: healthy(site) or site.proc.poll() is not None, 20, what="a healthy site")
    sock = site.home / "core.sock"
    own = Credentials.from_site(site.home, "supervisor")
    assert asyncio.run(_handshake(_client_tls(own), sock))
    anonymous = ssl.create_default_context(cafile=str(own.ca))
    anonymous.set_alpn_protocols(["h2"])
    assert not asyncio.run(_handshake(anonymous, sock))
    SiteCA.init(tmp_path / "pki", SITE).issue("supervisor", "trusted")  # another site's CA
    foreign = Credentials.from_site(tmp_path, "supervisor")
    assert not asyncio.run(
        _handshake(_client_tls(Credentials(own.ca, foreign.cert, foreign.key)), sock)
    )


def test_sigterm_stops_everything(site):
    site.status()
    pids = set(site.pids)
    site.proc.send_signal(signal.SIGTERM)
    assert site.proc.wait(20) == 0, site.log()
    status = site.status()
    assert status["state"] == "stopped"
    assert {p["state"] for p in status["processes"]} == {"stopped"}
    left = [pid for pid in pids | site.pids if alive(pid)]
    assert left == [], f"still running: {left}"
    assert not (site.home / "core.sock").exists()
    r = smx("status", "--home", str(site.home))
    assert r.returncode == 1 and "supervisor not running" in r.stdout


def test_a_core_that_cannot_start_fails_smx_run(tmp_path):
    home = Path(tempfile.mkdtemp(prefix="smx-"))
    try:
        (home / "blocker").write_text("a file where the core wants a directory")
        config = home / "site.toml"
        config.write_text(
            'site = "s1"\n[core.history]\npath = "blocker/history.db"\n'
            '[extensions.meter]\nmodule = "tests.support.dummy_ext"\n'
        )
        r = smx("run", "--config", str(config))
        assert r.returncode == 1, r.stdout + r.stderr
        (line,) = [x for x in r.stderr.splitlines() if x.startswith("smx run: ")]
        assert line.startswith("smx run: the core exited during start-up (exit code ")
        assert "/blocker" in line and "core.log" in line  # the core's own last words
        status = json.loads((home / "run" / "supervisor.json").read_text())
        assert status["state"] == "failed" and "core exited" in status["error"]
        assert not any(alive(p["pid"]) for p in status["processes"] if p["pid"])
        assert not (home / "run" / "logs" / "meter.log").exists()  # never started
    finally:
        shutil.rmtree(home, ignore_errors=True)
