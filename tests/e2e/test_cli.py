"""The README walk-through with the real `smx` command: provision a site, start the core, then
write, read, watch, query history, request a setpoint and read the audit log; every read command
with --json and every table with its header; plus grpcurl. The mistakes a user can make are
tests/e2e/test_cli_mistakes.py."""

from __future__ import annotations

import importlib.metadata
import json
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


# Every command that reads, with the table header it prints without --json.
READ_COMMANDS = [
    (("points", "get", "meter/P", "meter/U1"), "NAME VALUE UNIT QUALITY SOURCE TIME REVISION"),
    (("points", "ls", "meter/*"), "NAME UNIT KIND PERIOD OWNER DESCRIPTION"),
    (("points", "list", "meter/*"), "NAME UNIT KIND PERIOD OWNER DESCRIPTION"),
    (("points", "watch", "meter/*", "--count", "2"), "NAME VALUE UNIT QUALITY SOURCE TIME"),
    (("points", "history", "meter/P", "--since", "5m"), "NAME TIME VALUE QUALITY SAMPLES"),
    (("setpoint", "status", "--as", "lessag", "meter/P_set"), None),
    (("setpoint", "watch", "--as", "lessag", "--count", "1"), "REVISION NAME VALUE STATUS"),
    (("whoami", "--as", "meter"), None),
    (("admin", "clients"), "IDENTITY CALLS STREAMS FIRST SEEN LAST SEEN"),
    (("audit", "--limit", "5"), "SEQ TIME KIND IDENTITY METHOD POINT REASON DETAIL"),
    (("pki", "list"), "NAME DOMAIN IDENTITY SERIAL NOT AFTER (UTC) STATUS"),
    (("policy", "show"), None),
    (("policy", "check"), None),
]


def test_watch_counts_a_snapshot_that_comes_in_several_messages(running):
    # 150 strings of 2 KB: more than one 256 KiB watch message. The count is of the whole
    # snapshot, said once its last message is in.
    home = running
    text = "x" * 2000
    samples = [f"meter/S{i}={text}" for i in range(150)]
    smx(home, "points", "write", "--as", "meter", "--kind", "string", *samples)
    out = smx(home, "points", "watch", "meter/S*", "--count", "150").splitlines()
    assert out[0] == "-- snapshot:"
    assert re.fullmatch(r"-- snapshot complete at revision \d+: 150 points", out[-1])
    rows = [line for line in out if line.startswith("meter/S")]
    assert len(rows) == 150
    # A table row shows the start of a long string and its length; --json has it whole.
    assert all("xxxx... (2000 bytes)" in row and len(row) < 250 for row in rows)
    whole = smx(home, "points", "get", "meter/S7", "--json")
    assert text in whole


def test_read_commands_speak_json_and_tables_have_headers(running):
    home = running
    smx(home, "points", "write", "--as", "meter", "meter/P=1500", "meter/U1=230.5")
    smx(home, "points", "declare", "--as", "meter", "meter/P_set", "--unit", "W")
    smx(home, "setpoint", "request", "--as", "lessag", "meter/P_set", "2000")
    time.sleep(2.5)  # one flush interval: history has the samples
    for args, header in READ_COMMANDS:
        lines = smx(home, *args, "--json").splitlines()
        assert lines, args
        objects = [json.loads(line) for line in lines]  # one object per line
        assert all(isinstance(o, dict) for o in objects), args
        out = smx(home, *args)
        if header is not None:
            first = next(line for line in out.splitlines() if not line.startswith("--"))
            assert " ".join(first.split()).startswith(header), (args, out)
    points = [
        json.loads(line) for line in smx(home, "points", "get", "meter/P", "--json").splitlines()
    ]
    assert points[0]["name"] == "meter/P" and points[0]["value"] == {"double_value": 1500.0}
    me = json.loads(smx(home, "whoami", "--as", "meter", "--json"))
    assert me["identity"] == "spiffe://usm-0017/trusted/meter" and me["roles"] == [
        "trusted-extension"
    ]
    sp = json.loads(smx(home, "setpoint", "status", "--as", "lessag", "meter/P_set", "--json"))
    assert sp["status"] == "SETPOINT_STATUS_PENDING"
    policy = json.loads(smx(home, "policy", "show", "--json"))
    assert {b["identity"] for b in policy["bindings"]} >= {"spiffe://usm-0017/trusted/meter"}
    verify = json.loads(smx(home, "audit", "--verify", "--json"))
    assert verify["intact"] is True and verify["records"] > 0
    # The whoami rules and the policy's roles and bindings are tables too.
    assert re.search(r"^VERBS\s+POINTS$", smx(home, "whoami", "--as", "meter"), re.M)
    out = smx(home, "policy", "show")
    assert re.search(r"^ROLE\s+RULES\s+DESCRIPTION$", out, re.M)
    assert re.search(r"^IDENTITY\s+ROLES\s+EXTRA RULES$", out, re.M)


def test_a_site_made_by_smx_alone_gets_no_mode_warning_at_the_first_start(running):
    # `pki init` makes a new home with the mode the core wants (0750), so nothing at the
    # first start looks like a mistake the user made.
    assert "let other users in" not in (running / "core.log").read_text()
    smx(running / "new", "pki", "init", "--site", "usm-0018")
    assert ((running / "new").stat().st_mode & 0o777) == 0o750


def test_version_comes_from_the_package_metadata(home):
    assert smx(home, "--version").strip() == f"smx {importlib.metadata.version('smx')}"


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


def test_a_refused_history_prints_its_error_alone(running):
    # A script reading stdout must not take a table header for an answer.
    r = subprocess.run(
        [sys.executable, "-m", "trusted.cli.main", "--home", str(running), "points", "history"]
        + ["meter/*"],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    assert r.stderr.startswith("smx points: INVALID_ARGUMENT"), r.stderr
    # Nothing stored yet: the header alone, as the README says.
    assert smx(running, "points", "history", "meter/P").split() == [
        "NAME",
        "TIME",
        "VALUE",
        "QUALITY",
        "SAMPLES",
    ]
