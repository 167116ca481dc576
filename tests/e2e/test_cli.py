"""The README walk-through with the real `smx` command: provision a site, start the core, then
write, read, watch, query history, request a setpoint and read the audit log; plus grpcurl."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def home():
    h = Path(tempfile.mkdtemp(prefix="smx-cli-"))
    yield h
    shutil.rmtree(h, ignore_errors=True)


def smx(home: Path, *args: str, check: bool = True, timeout: float = 30) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "trusted.cli.main", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    if check:
        assert r.returncode == 0, f"smx {' '.join(args)}: {r.stdout}{r.stderr}"
    return r.stdout + r.stderr


@pytest.fixture
def running(home):
    smx(home, "pki", "init", "--site", "usm-0017")
    smx(home, "policy", "init")
    for name, domain, roles in (
        ("meter", "trusted", ["trusted-extension"]),
        ("lessag", "untrusted", ["untrusted-agent"]),
    ):
        smx(home, "pki", "issue", name, "--domain", domain)
        smx(home, "policy", "bind", name, *roles, "--domain", domain)
    smx(home, "pki", "issue", "admin", "--domain", "trusted")
    log = open(home / "core.log", "w")  # noqa: SIM115
    core = subprocess.Popen(
        [sys.executable, "-m", "trusted.cli.main", "--home", str(home), "core"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    deadline = time.monotonic() + 15
    while "smxcore ready" not in (home / "core.log").read_text():
        assert core.poll() is None and time.monotonic() < deadline, (home / "core.log").read_text()
        time.sleep(0.05)
    yield home
    core.terminate()
    core.wait(10)
    log.close()


def test_walkthrough(running):
    home = running
    out = smx(home, "points", "write", "--as", "meter", "meter/P=1500", "meter/U1=230.5")
    assert "written at revision" in out
    out = smx(home, "points", "get", "meter/P", "meter/U1")
    assert re.search(r"meter/P\s+1500\s", out) and "230.5" in out and "GOOD" in out
    assert "spiffe://usm-0017/trusted/meter" in out
    assert "meter/U1" in smx(home, "points", "ls", "meter/*")
    out = smx(home, "points", "watch", "meter/*", "--count", "2")
    assert "snapshot" in out and "meter/P" in out
    time.sleep(2.5)  # one flush interval
    assert "1500" in smx(home, "points", "history", "meter/P", "--since", "5m")
    # The agent may not write measurements: a clear refusal with its reason, exit code 1.
    out = smx(home, "points", "write", "--as", "lessag", "meter/P=0", check=False)
    assert "PERMISSION_DENIED [PERMISSION_NOT_GRANTED]" in out
    out = smx(home, "setpoint", "request", "--as", "lessag", "meter/P_set", "2000", check=False)
    assert "NOT_FOUND [POINT_NOT_FOUND]" in out  # no extension declared it (yet)
    smx(home, "points", "declare", "--as", "meter", "meter/P_set", "--unit", "W")
    out = smx(
        home, "setpoint", "request", "--as", "lessag", "meter/P_set", "2000", "--valid-for", "1m"
    )
    assert "PENDING" in out
    assert "PENDING" in smx(home, "setpoint", "status", "--as", "lessag", "meter/P_set")
    out = smx(home, "audit", "--limit", "50")
    assert "denied" in out and "spiffe://usm-0017/untrusted/lessag" in out
    assert "setpoint_request" in out
    assert "trusted-extension" in smx(home, "whoami", "--as", "meter")
    assert "usm-0017/trusted/meter" in smx(home, "admin", "clients")
    assert "roles" in smx(home, "admin", "reload")
    assert "hash chain intact" in smx(home, "audit", "--verify")
    out = smx(home, "pki", "list")
    assert "meter" in out and "lessag" in out


def test_cli_errors_are_one_clear_line(home):
    out = smx(home, "points", "get", "meter/P", check=False)
    assert "not found" in out and "Traceback" not in out
    out = smx(home, "core", check=False)
    assert "smx core:" in out and "Traceback" not in out


@pytest.mark.skipif(not (BIN / "grpcurl").exists(), reason="grpcurl binary not installed")
def test_grpcurl_over_the_unix_socket(running):
    home = running
    pki = home / "pki"
    base = [
        str(BIN / "grpcurl"),
        "-unix",
        "-cacert",
        str(pki / "ca.crt"),
        "-cert",
        str(pki / "clients/admin.crt"),
        "-key",
        str(pki / "clients/admin.key"),
        "-authority",
        "smxcore",
    ]
    sock = str(home / "core.sock")
    r = subprocess.run([*base, sock, "list"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    for svc in (
        "smx.v1.PointService",
        "smx.v1.ControlService",
        "smx.v1.IdentityService",
        "smx.v1.AdminService",
        "grpc.health.v1.Health",
    ):
        assert svc in r.stdout
    r = subprocess.run(
        [*base, sock, "smx.v1.IdentityService/WhoAmI"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    assert '"identity": "spiffe://usm-0017/trusted/admin"' in r.stdout
    r = subprocess.run(
        [*base, "-d", '{"names": ["core/uptime"]}', sock, "smx.v1.PointService/GetPoints"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0 and '"core/uptime"' in r.stdout, r.stderr
