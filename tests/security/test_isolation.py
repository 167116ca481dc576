"""OS isolation under `smx run` as root (docs/SITE.md, "Isolation"): a real site in which an
agent (a module next to site.toml) tries to read the CA key, the core's key, another client's
key, the admin key, policy.toml, the operator's policy.local.toml and the history, and to open
the audit log for writing; every attempt must fail with PermissionError. Every child runs as
its own non-root user with no_new_privs, no capabilities, a minimal environment and its private
working directory, and the site still works end to end.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from extensions.sdk.testing import wait_for
from smx.client import Credentials, Stubs, unix_target
from smx.v1 import point_service_pb2 as spb
from tests.support.smx_run import SmxRun, quick_site
from trusted.supervisor.isolation import Account, exec_argv

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="OS isolation needs `smx run` as root (creates users, drops privileges); CI runs "
    "as root",
)

ROOT = Path(__file__).resolve().parents[2]

SITE_TOML = (
    quick_site("usm-0098")
    + """
[extensions.meter]
module = "tests.support.dummy_ext"
os_groups = ["dialout"]

[extensions.inverter]
module = "tests.support.dummy_ext"

[extensions.charger]
module = "tests.support.dummy_ext"

[agents.spy]
module = "spy_agent"
role = "trusted-extension"

[simulators.sim]
module = "tests.support.dummy_ext"
"""
)

# The untrusted agent: tries what an attacker would, records the outcome in its private
# working directory, then behaves as the dummy extension (heartbeat, points).
SPY = """\
import json, os
from pathlib import Path

from tests.support.spy import try_opening

home = Path(os.environ["SMX_CONFIG"]).parent.parent
pki = Path(os.environ["SMX_CA"]).parent
attempts = {
    "ca.key": (pki / "ca.key", "rb"),
    "core key": (pki / "server" / "smxcore.key", "rb"),
    "meter key": (pki / "clients" / "meter.key", "rb"),
    "admin key": (pki / "clients" / "admin.key", "rb"),
    "policy": (home / "policy.toml", "rb"),
    "policy for writing": (home / "policy.toml", "ab"),
    "operator policy": (home / "policy.local.toml", "rb"),
    "history": (home / "data" / "history.db", "rb"),
    "audit for writing": (home / "data" / "audit.jsonl", "ab"),
    "meter config": (home / "run" / "meter.config.json", "rb"),
    "pki index": (pki / "index.json", "rb"),
    "supervisor state": (home / "run" / "supervisor.json", "rb"),
    "a module planted in the home": (home / "json.py", "wb"),
}
found = try_opening(attempts)
found["own key"] = len(Path(os.environ["SMX_KEY"]).read_bytes()) > 0
found["cwd"] = os.getcwd()
Path("findings.json").write_text(json.dumps(found))

# A module left in its own working directory, named like one every Python imports: whoever
# imports it leaves a mark with its uid. Only a Python of this agent's own may ever do so.
here = os.getcwd()
Path("json.py").write_text(f'''\
import os, sys
open(os.path.join({here!r}, "imported-by-" + str(os.getuid())), "w").close()
sys.path = [p for p in sys.path if p not in ("", {here!r})]
del sys.modules["json"]
import json as _json
globals().update(vars(_json))
''')

from tests.support.dummy_ext import main
raise SystemExit(main())
"""

ALLOWED_ENV = {"PATH", "LANG", "PYTHONPATH", "PYTHONUNBUFFERED"}


@pytest.fixture(scope="module")
def site() -> Iterator[SmxRun]:
    # Variables the supervisor has that no child may inherit.
    leaky = {"SMX_SECRET_OF_THE_SUPERVISOR": "x", "AWS_SECRET_ACCESS_KEY": "do-not-leak"}
    # policy.local.toml as an operator may leave it: world-readable, root's.
    files = {"spy_agent.py": SPY, "policy.local.toml": "# the operator's\n"}
    s = SmxRun(SITE_TOML, files, prefix="smx-iso-", env=leaky)
    try:
        yield s
    finally:
        s.close()


def running(site: SmxRun) -> bool:
    procs = site.procs()
    want = {
        "core": "serving",
        "meter": "running",
        "inverter": "running",
        "charger": "running",
        "spy": "running",
        "sim": "-",
    }
    return all(
        procs.get(n, {}).get("state") == "running" and procs[n]["health"] == h
        for n, h in want.items()
    )


def test_site_runs_isolated_end_to_end(site):
    wait_for(lambda: running(site) or site.proc.poll() is not None, 30, what="a running site")
    assert site.proc.poll() is None, site.log()
    assert "ISOLATION IS OFF" not in site.log()
    r = site.smx("status", "--config", str(site.config))
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("core", "meter", "inverter", "charger", "spy", "sim"):
        (row,) = [line for line in r.stdout.splitlines() if line.split()[:1] == [name]]
        assert row.split()[2] == "running", r.stdout
    # The agent's and the extension's points reach the core.
    creds = Credentials.from_site(site.home, "admin")
    stubs = Stubs(creds.channel(unix_target(site.home / "core.sock")))

    def value(name: str) -> float:
        try:
            resp = stubs.points.GetPoints(spb.GetPointsRequest(names=[name]), timeout=2)
        except grpc.RpcError:
            return -1.0
        return resp.points[0].value.double_value if resp.points else -1.0

    wait_for(lambda: value("spy/alive") > 0 and value("meter/alive") > 0, 15, what="points")


def test_the_agent_cannot_read_or_write_what_is_not_its_own(site):
    findings = site.home / "run" / "spy" / "findings.json"
    wait_for(findings.exists, 15, what="the agent's findings")
    found = json.loads(findings.read_text())
    for what in (
        "ca.key",
        "core key",
        "meter key",
        "admin key",
        "policy",
        "policy for writing",
        "operator policy",
        "history",
        "audit for writing",
        "meter config",
        "pki index",
        "supervisor state",
        "a module planted in the home",
    ):
        assert found[what] == "PermissionError", (what, found)
    assert found["own key"] is True
    assert found["cwd"] == str(site.home / "run" / "spy")
    assert (site.home / "run" / "spy").stat().st_mode & 0o777 == 0o700


def _status_fields(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_every_child_runs_unprivileged(site):
    procs = site.procs()
    uids = set()
    for name in ("core", "meter", "inverter", "charger", "spy", "sim"):
        pid = procs[name]["pid"]
        st = _status_fields(pid)
        uid = int(st["Uid"].split()[0])
        assert uid != 0, (name, st["Uid"])
        assert all(int(u) == uid for u in st["Uid"].split()), st["Uid"]
        assert st["NoNewPrivs"] == "1", name
        assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0, name
        uids.add(uid)
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        keys = {e.split(b"=", 1)[0].decode() for e in env if e}
        extra = {k for k in keys - ALLOWED_ENV if not k.startswith("SMX_")}
        assert not extra, (name, extra)
        assert "SMX_SECRET_OF_THE_SUPERVISOR" not in keys
        assert os.readlink(f"/proc/{pid}/cwd") == str(site.home / "run" / name)
    assert len(uids) == 6  # one user per process
    # site.toml's os_groups: the meter (a serial port) also has dialout, the others do not.
    dialout = str(grp.getgrnam("dialout").gr_gid)
    assert dialout in _status_fields(procs["meter"]["pid"])["Groups"].split()
    assert dialout not in _status_fields(procs["spy"]["pid"])["Groups"].split()


def _nice_of_every_thread(pid: int) -> set[int]:
    # /proc/<pid>/task/<tid>/stat: field 19 is the nice value (after the parenthesized name).
    return {
        int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
        for task in Path(f"/proc/{pid}/task").iterdir()
    }


def test_the_core_runs_before_the_processes_it_serves(site):
    # supervisor.core_nice (default -5), set before the core's interpreter starts: every thread
    # it has, gRPC's included, runs at it; the other processes at the usual 0.
    wait_for(lambda: running(site), 30, what="a running site")
    procs = site.procs()
    assert _nice_of_every_thread(procs["core"]["pid"]) == {-5}
    for name in ("meter", "inverter", "charger", "spy", "sim"):
        assert _nice_of_every_thread(procs[name]["pid"]) == {0}, name
    # Each process is a session of its own; where the kernel schedules sessions as groups
    # (autogroup), only the group's nice ranks the core against the others.
    groups = {name: Path(f"/proc/{procs[name]['pid']}/autogroup") for name in procs}
    if groups["core"].exists():
        assert groups["core"].read_text().split()[-1] == "-5"
        others = ("meter", "inverter", "charger", "spy", "sim")
        assert all(groups[n].read_text().split()[-1] == "0" for n in others)
    # What `smx status` shows of it.
    shown = json.loads(site.smx("status", "--home", str(site.home), "--json").stdout)
    assert {p["name"]: p["nice"] for p in shown["processes"]} == {
        "core": -5,
        "meter": 0,
        "inverter": 0,
        "charger": 0,
        "spy": 0,
        "sim": 0,
    }
    table = site.smx("status", "--home", str(site.home)).stdout.splitlines()
    assert table[1].split()[5] == "NICE"
    core_row = next(line.split() for line in table if line.startswith("core "))
    assert core_row[5] == "-5"


def _socket_inodes(pid: int) -> set[str]:
    """The sockets process `pid` holds, as `socket:[inode]`."""
    links = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            links.add(os.readlink(fd))
    return {link for link in links if link.startswith("socket:")}


def test_extensions_are_forked_from_their_domains_server_and_hold_nothing_of_it(site):
    # Three Python extensions: forked from the trusted domain's fork server. The one agent (the
    # untrusted domain) is started on its own: a server never serves two domains, and a domain
    # of fewer than three processes gains too little from one.
    wait_for(lambda: running(site), 30, what="a running site")
    status = site.status()
    procs = {p["name"]: p for p in status["processes"]}
    assert {procs[n]["forked_from"] for n in ("meter", "inverter", "charger")} == {
        "fork-server-trusted"
    }
    assert procs["spy"]["forked_from"] is None and procs["core"]["forked_from"] is None
    (server,) = status["fork_servers"]
    assert server["name"] == "fork-server-trusted"
    server_pid = server["pid"]
    assert _status_fields(server_pid)["Threads"] == "1"  # forking with threads is unsafe
    for name in ("meter", "inverter", "charger"):
        pid = procs[name]["pid"]
        assert _status_fields(pid)["PPid"] == str(server_pid)
        assert os.getsid(pid) == pid  # a session of its own, as a started process has
        # Nothing of the root server's: not its control socket, not its environment.
        assert not _socket_inodes(pid) & _socket_inodes(server_pid), name
        assert b"SMX_SECRET_OF_THE_SUPERVISOR" not in Path(f"/proc/{pid}/environ").read_bytes()
        # Dumpable as an exec'd process is: its /proc files are its own user's, not root's.
        uid = int(_status_fields(pid)["Uid"].split()[0])
        assert Path(f"/proc/{pid}/environ").stat().st_uid == uid != 0
        # Its command line as `python -m` gives it, not the server's.
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:4] == [b"-OO", b"-m", b"tests.support.dummy_ext"], cmdline  # forked
    # `smx status` counts the server's memory with the site's.
    table = site.smx("status", "--home", str(site.home)).stdout
    row = next(line.split() for line in table.splitlines() if line.startswith("fork-server"))
    assert row[:3] == ["fork-server-trusted", "fork-server", "running"], table
    assert row[4:7] == [str(server_pid), "0", "0"], table  # pid, nice, restarts
    shown = json.loads(site.smx("status", "--home", str(site.home), "--json").stdout)
    alive = [p for p in shown["processes"] if p["memory"]] + shown["fork_servers"]
    total = shown["memory"]["pss"] + sum(p["memory"]["pss"] for p in alive)
    assert shown["memory_total"]["pss"] == total


def test_a_fork_server_that_dies_takes_its_children_and_they_come_back():
    s = SmxRun(
        quick_site("usm-0096")
        + "".join(f'\n[extensions.{n}]\nmodule = "tests.support.dummy_ext"\n' for n in "abc"),
        prefix="smx-fork-",
    )
    try:

        def up() -> bool:
            procs = s.procs()
            return all(procs.get(n, {}).get("health") == "running" for n in "abc")

        wait_for(up, 30, what="both extensions running")
        before = {n: s.procs()[n]["pid"] for n in "abc"}
        (server,) = s.status()["fork_servers"]
        os.kill(server["pid"], signal.SIGKILL)
        # Its children die with it (PR_SET_PDEATHSIG), and come back from a new server.
        wait_for(
            lambda: not any(Path(f"/proc/{pid}").exists() for pid in before.values()),
            10,
            what="the children ending with their server",
        )
        wait_for(lambda: up() and all(s.procs()[n]["pid"] != before[n] for n in "abc"), 30)
        (again,) = s.status()["fork_servers"]
        assert again["pid"] != server["pid"]
        assert all(s.procs()[n]["forked_from"] == "fork-server-trusted" for n in "abc")
        assert "fork-server-trusted ended unexpectedly" in s.log()
        assert {s.procs()[n]["last_error"] for n in "abc"} == {"its fork server ended"}
        assert s.status()["fork_servers"][0]["restarts"] == 1
    finally:
        s.close()


def test_a_site_can_start_every_process_on_its_own():
    # supervisor.fork_server = false: each process a fresh interpreter, as before.
    site_toml = quick_site("usm-0095", "fork_server = false") + "".join(
        f'\n[extensions.{n}]\nmodule = "tests.support.dummy_ext"\n' for n in "ab"
    )
    s = SmxRun(site_toml, prefix="smx-nofork-")
    try:
        wait_for(lambda: all(s.procs().get(n, {}).get("health") == "running" for n in "ab"), 30)
        assert not s.status()["fork_servers"]
        assert all(s.procs()[n]["forked_from"] is None for n in "ab")
        assert all(_status_fields(s.procs()[n]["pid"])["PPid"] == str(s.proc.pid) for n in "ab")
    finally:
        s.close()


def test_a_killed_supervisor_leaves_nothing_running():
    # Each child dies with it (PR_SET_PDEATHSIG, set after the uid change): a `smx demo` killed
    # by a timeout had left its core, agents and simulators running for good.
    site_toml = quick_site("usm-0094", "fork_server = false") + "".join(
        f'\n[extensions.{n}]\nmodule = "tests.support.dummy_ext"\n' for n in "ab"
    )
    s = SmxRun(site_toml, prefix="smx-killed-")
    try:
        wait_for(lambda: all(s.procs().get(n, {}).get("health") == "running" for n in "ab"), 30)
        pids = [p["pid"] for p in s.procs().values() if p.get("pid")]
        assert len(pids) >= 3, s.procs()  # the core and both extensions
        os.kill(s.proc.pid, signal.SIGKILL)
        wait_for(
            lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids),
            10,
            what="every process ending with the supervisor",
        )
    finally:
        s.close()


def test_a_core_that_could_not_get_its_priority_is_shown_and_said(tmp_path):
    # `smx run` without CAP_SYS_NICE (a container): the core still starts, at the supervisor's
    # priority; `smx status` shows what it wanted and the supervisor's log says what to do.
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv (util-linux)")
    s = SmxRun(
        quick_site("usm-0097"),
        prefix="smx-nice-",
        command_prefix=["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice"],
    )
    try:
        wait_for(
            lambda: s.procs().get("core", {}).get("health") == "serving",
            30,
            what="the core serving",
        )
        wait_for(
            lambda: "not supervisor.core_nice = -5" in (s.home / "smx-run.log").read_text(),
            10,
            what="the supervisor's warning",
        )
        log = (s.home / "smx-run.log").read_text()
        assert "core runs at nice 0, not supervisor.core_nice = -5" in log
        assert "CAP_SYS_NICE" in log
        table = s.smx("status", "--home", str(s.home)).stdout
        assert "0 (wanted -5)" in next(
            line for line in table.splitlines() if line.startswith("core ")
        )
    finally:
        s.close()


def test_ownership_of_the_site_files(site):
    home, pki = site.home, site.home / "pki"
    core_uid = (home / "policy.toml").stat().st_uid
    assert core_uid != 0
    local = (home / "policy.local.toml").stat()
    assert local.st_uid == core_uid and local.st_mode & 0o777 == 0o600
    assert (home / "data").stat().st_uid == core_uid
    assert (home / "data" / "history.db").stat().st_uid == core_uid
    assert (pki / "server" / "smxcore.key").stat().st_uid == core_uid
    assert (pki / "ca.key").stat().st_uid == 0
    assert (pki / "ca.key").stat().st_mode & 0o777 == 0o600
    meter_key = (pki / "clients" / "meter.key").stat()
    assert meter_key.st_uid not in (0, core_uid) and meter_key.st_mode & 0o777 == 0o600
    assert (home / "run" / "meter.config.json").stat().st_uid == meter_key.st_uid
    site_gid = (home / "run").stat().st_gid
    assert (home.stat().st_uid, home.stat().st_gid) == (0, site_gid)
    assert (pki / "index.json").stat().st_uid == 0
    assert (pki / "index.json").stat().st_mode & 0o777 == 0o600
    # The core's socket: in its own directory, reached through root's link in the home.
    link = (home / "core.sock").lstat()
    assert stat.S_ISLNK(link.st_mode) and link.st_uid == 0
    assert (home / "sock").stat().st_uid == core_uid
    sock = (home / "core.sock").stat()
    assert stat.S_ISSOCK(sock.st_mode) and sock.st_mode & 0o777 == 0o660
    assert sock.st_gid == site_gid
    # site.toml holds every process's config table: written 0644 by the test, made private.
    assert site.config.stat().st_mode & 0o077 == 0
    assert "let other users read every process's config; changed to 0600" in site.log()


# What the core's own user tries against the other processes: plant a module where every child
# imports local modules from, swap the PKI directory, rewrite the socket link.
AS_CORE = """\
import os, sys
from pathlib import Path
home = Path(sys.argv[1])
for what, act in (
    ("plant a module", lambda: (home / "json.py").write_text("")),
    ("swap pki", lambda: os.rename(home / "pki", home / "pki.old")),
    ("replace the socket link", lambda: os.unlink(home / "core.sock")),
    ("write a client key", lambda: open(home / "pki" / "clients" / "meter.key", "ab")),
):
    try:
        act()
        print(what, "DONE")
    except PermissionError:
        print(what, "refused")
"""


def test_the_core_user_cannot_reach_into_the_other_processes(site):
    core_uid = (site.home / "policy.toml").stat().st_uid
    core_gid = (site.home / "policy.toml").stat().st_gid
    site_gid = (site.home / "run").stat().st_gid
    # Started the way the supervisor starts the core (the interpreter may live under /root).
    argv = exec_argv(
        sys.executable,
        Account(core_uid, core_gid, (site_gid,)),
        [Path(sys.executable), ROOT],
        [sys.executable, "-c", AS_CORE, str(site.home)],
        Path("/"),
    )
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:-1] == [
        "plant a module refused",
        "swap pki refused",
        "replace the socket link refused",
        "write a client key refused",
    ]


def test_a_module_a_process_leaves_in_its_directory_never_runs_as_root(site):
    """The privilege drop runs as root before it enters the process's directory, and the process
    runs with -P (site_config.PYTHON_FLAGS): a module it planted there (json.py) is imported
    neither by root nor by its own restart."""
    spy_dir = site.home / "run" / "spy"
    wait_for(lambda: (spy_dir / "json.py").exists(), 15, what="the planted module")
    old = site.procs()["spy"]["pid"]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: site.procs()["spy"]["pid"] != old and running(site), 30, what="spy restarted")
    assert sorted(p.name for p in spy_dir.glob("imported-by-*")) == []
    # The plant works: a Python started there without -P (this test's, as root) imports it.
    subprocess.run([sys.executable, "-c", "import json"], cwd=spy_dir, check=True)
    assert sorted(p.name for p in spy_dir.glob("imported-by-*")) == ["imported-by-0"]


def test_handing_data_to_the_core_never_follows_a_link_out_of_it(tmp_path):
    """Root gives data/ to the core's user at every start; the core owns data/ and may have
    left links in it: a symbolic link to a directory and a hard link to a file root owns must
    not make root give those away."""
    from trusted.supervisor.isolation import _give_tree

    outside = tmp_path / "etc"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0\n")
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "history.db").write_text("")
    (data / "l").symlink_to(outside)
    os.link(outside / "passwd", data / "hard")
    os.mkfifo(outside / "fifo")  # opening it for reading would block root for good
    (data / "sub" / "lf").symlink_to(outside / "fifo")
    os.mkfifo(data / "fifo")
    started = time.monotonic()
    _give_tree(data, Account(65534, 65534, ()))
    assert time.monotonic() - started < 5
    assert (data / "sub" / "history.db").stat().st_uid == 65534
    assert (data / "sub").stat().st_uid == 65534 and data.stat().st_uid == 65534
    assert (outside / "passwd").stat().st_uid == 0 and outside.stat().st_uid == 0
    assert (outside / "fifo").stat().st_uid == 0
    assert (data / "l").lstat().st_uid == 0  # links are left alone
