"""Shared fixtures: a real site and a real core over a Unix socket with mutual TLS."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import uvloop

from tests.support.site import CoreProcess, Site
from trusted.core.server import Core

# The core's own tests run on the event loop the core runs on in production (uvloop, see
# trusted.core.server.run_on_fast_loop); the others on asyncio's, as extensions and agents do.
CORE_TEST_DIRS = ("contract", "trusted", "security")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict:
    tests = Path(__file__).parent
    # A module of the supervisor's (it runs on asyncio's loop) says so: EVENT_LOOP = "asyncio".
    if getattr(getattr(item, "module", None), "EVENT_LOOP", None) == "asyncio":
        return {"asyncio": asyncio.new_event_loop}
    if item.path.is_relative_to(tests) and item.path.relative_to(tests).parts[0] in CORE_TEST_DIRS:
        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture
def site():
    s = Site()
    yield s
    s.cleanup()


@pytest.fixture
async def core(site: Site):
    """The real core serving `site` in this process (same event loop as the test)."""
    c = Core(site.config())
    await c.start()
    yield c
    await c.stop(grace=0.1)


@pytest.fixture(autouse=True)
def _no_core_left_running():
    """A failed assertion must not leave a core process behind (it would skew later tests).
    Cores of wider-scoped fixtures exist before this runs and are left to their fixture."""
    before = set(map(id, CoreProcess.running))
    yield
    for core in list(CoreProcess.running):
        if id(core) not in before:
            core.kill(9)


# Sites run by `smx run` as root get OS users and a group each (smx-<h>-<name>, smx-<h>); a
# test's site home is temporary, so the accounts the run created are removed at its end (or a
# machine that runs the suite often runs out of system group ids). Done by the controlling
# process only, after every worker has finished.
_ACCOUNTS_BEFORE: tuple[set[str], set[str]] = (set(), set())


def _site_accounts() -> tuple[set[str], set[str]]:
    import grp
    import pwd

    users = {p.pw_name for p in pwd.getpwall() if p.pw_name.startswith("smx-")}
    groups = {g.gr_name for g in grp.getgrall() if g.gr_name.startswith("smx-")}
    return users, groups


def _controller(session: pytest.Session) -> bool:
    import os

    return os.geteuid() == 0 and not hasattr(session.config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    global _ACCOUNTS_BEFORE
    if _controller(session):
        _ACCOUNTS_BEFORE = _site_accounts()


def pytest_sessionfinish(session: pytest.Session) -> None:
    import subprocess

    if not _controller(session):
        return
    users, groups = _site_accounts()
    # A site whose home still exists is not this run's leftover (a demo or another test run on
    # the same machine made it meanwhile): its processes and accounts are left alone.
    live = {u for u in users - _ACCOUNTS_BEFORE[0] if _home_of(u).exists()}
    for user in sorted(users - _ACCOUNTS_BEFORE[0] - live):
        subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True, check=False)
        subprocess.run(["userdel", user], capture_output=True, check=False)
    for group in sorted(groups - _ACCOUNTS_BEFORE[1]):
        if not any(u.startswith(f"{group}-") for u in live):
            subprocess.run(["groupdel", group], capture_output=True, check=False)


def _home_of(user: str) -> Path:
    """The site home an account was made for (the end of its comment), or a path that is not."""
    import pwd

    comment = pwd.getpwnam(user).pw_gecos
    _, sep, home = comment.rpartition(" in ")
    return Path(home) if sep and home.startswith("/") else Path("/nonexistent/smx-site")
