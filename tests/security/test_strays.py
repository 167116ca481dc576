"""Processes that escape their process group (double fork into a new session) under `smx run`:
adopted by the supervisor, left alone while the process they came from runs, killed when it
dies and when the site stops (trusted/supervisor/strays.py)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from extensions.sdk.testing import wait_for
from tests.support.smx_run import SmxRun

ROOT = Path(__file__).resolve().parents[2]

# Forks a helper that leaves the process group and session and prints its pid into the log,
# then lives on for `argv[1]` seconds (the helper sleeps for good).
ESCAPER = """\
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        print("helper pid", os.getpid(), flush=True)
        time.sleep(3600)
    os._exit(0)
time.sleep(float(sys.argv[1]))
"""


def site_toml(home: Path) -> str:
    def cmd(lives: float) -> str:
        argv = [sys.executable, str(home / "escaper.py"), str(lives)]
        return "[" + ", ".join(f"'{a}'" for a in argv) + "]"

    return f"""\
site = "usm-0097"

[supervisor]
backoff_initial = "10s"
stop_timeout = "3s"

[simulators.keeper]
command = {cmd(3600)}

[simulators.quitter]
command = {cmd(1)}
"""


def stray_pids(home: Path, name: str) -> list[int]:
    path = home / "run" / "logs" / f"{name}.log"
    text = path.read_text() if path.exists() else ""
    return [int(line.split()[2]) for line in text.splitlines() if line.startswith("helper pid ")]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def site() -> Iterator[SmxRun]:
    s = SmxRun(site_toml, {"escaper.py": ESCAPER})
    try:
        yield s
    finally:
        s.close()


def test_escaped_helpers_are_adopted_and_killed_with_what_they_came_from(site):
    wait_for(lambda: stray_pids(site.home, "keeper"), 30, what="the keeper's helper")
    (kept,) = stray_pids(site.home, "keeper")
    # The helper left its group and session, and the supervisor adopted it.
    helper = psutil.Process(kept)
    wait_for(lambda: helper.ppid() == site.proc.pid, 10, what="the supervisor adopting it")
    assert os.getsid(kept) != os.getsid(site.proc.pid)

    # The quitter exits after 1 s: its helper is killed although it escaped the group.
    wait_for(lambda: stray_pids(site.home, "quitter"), 30, what="the quitter's helper")
    (gone,) = stray_pids(site.home, "quitter")[:1]
    wait_for(lambda: not alive(gone), 15, what="the quitter's helper killed")
    wait_for(lambda: "quitter left process(es) behind" in site.log(), 5, what="the log line")
    assert alive(kept), "a helper of a running process is left alone"

    site.proc.send_signal(signal.SIGTERM)
    assert site.proc.wait(30) == 0, site.log()
    assert not alive(kept), "the site stopped but the keeper's helper lives on"
    assert "keeper left process(es) behind" in site.log()


# A helper that drops its name (an empty environment) and hops: each generation starts a new
# session, forks the next and exits, faster than a look at the supervisor's children.
HOPPER = """\
import os, sys, time
if len(sys.argv) == 1:
    if os.fork() == 0:
        os.execve(sys.executable, [sys.executable, sys.argv[0], "hop"], {})
    time.sleep(3600)
while True:
    if os.fork():
        os._exit(0)
    os.setsid()
    time.sleep(0.002)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a process per user needs `smx run` as root")
def test_a_helper_hopping_without_a_name_ends_with_the_site():
    import pwd

    from trusted.supervisor.isolation import user_name

    site = SmxRun(
        lambda home: (
            'site = "usm-0096"\n[supervisor]\nstop_timeout = "3s"\n'
            f"[simulators.hopper]\ncommand = ['{sys.executable}', '{home / 'hopper.py'}']\n"
        ),
        {"hopper.py": HOPPER},
    )
    home, proc = site.home, site.proc
    try:
        wait_for(lambda: _user_procs("usm-0096", home, "hopper"), 30, what="the hopper running")
        uid = pwd.getpwnam(user_name("usm-0096", home, "hopper")).pw_uid
        time.sleep(1.0)  # let it hop through a few hundred sessions
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        time.sleep(0.5)
        left = [p.pid for p in psutil.process_iter(["uids"]) if p.info["uids"].real == uid]
        assert left == [], site.log()
    finally:
        site.close()


def _user_procs(site: str, home: Path, name: str) -> list[int]:
    import pwd

    from trusted.supervisor.isolation import user_name

    try:
        uid = pwd.getpwnam(user_name(site, home, name)).pw_uid
    except KeyError:
        return []
    return [p.pid for p in psutil.process_iter(["uids"]) if p.info["uids"].real == uid]
