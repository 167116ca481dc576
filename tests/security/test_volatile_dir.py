"""The volatile directory (site.toml ``[supervisor] volatile_dir``, docs/SITE.md): under `smx run`
as root, on a real size-limited tmpfs, the health files and supervisor.json live there, not on
the SD card; `smx status` finds them through the links in run/; what must survive a reboot
still lands in run/<name>/; an agent cannot write another process's health file; and after the
tmpfs was emptied (a reboot) the next start makes it all again.

Mounting the tmpfs needs root, as CI has; elsewhere the site tests skip. The directory's making
(`prepare_volatile`) is checked without root below: links planted in it are never followed.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from extensions.sdk.testing import wait_for
from smx.process_env import RunPaths
from tests.support.smx_run import SmxRun, quick_site
from tests.support.tmpfs import mount_tmpfs, unmount
from trusted.supervisor.isolation import Account, IsolationError, prepare_volatile, site_group
from trusted.supervisor.site_config import SiteConfigError, parse_site_config

SITE = "usm-0097"

SITE_TOML = (
    quick_site(SITE, 'volatile_dir = "{volatile}"')
    + """
[extensions.meter]
module = "tests.support.dummy_ext"

[agents.spy]
module = "spy_agent"
role = "trusted-extension"
"""
)

# The agent: tries to write what is not its own in the volatile directory, keeps durable state
# in its working directory (run/spy/), then behaves as the dummy extension.
SPY = """\
import json, os
from pathlib import Path

from tests.support.spy import try_opening

health = Path(os.environ["SMX_HEALTH_FILE"])
site_dir = health.parent.parent
attempts = {
    "meter health": (site_dir / "meter" / "health.json", "ab"),
    "core health": (site_dir / "core" / "health.json", "ab"),
    "a file in meter's directory": (site_dir / "meter" / "planted.json", "wb"),
    "a file in the site's directory": (site_dir / "planted.json", "wb"),
    "supervisor state": (site_dir / "supervisor.json", "ab"),
}
found = try_opening(attempts)
found["health file"] = str(health)
Path("findings.json").write_text(json.dumps(found))  # run/spy/: durable

from tests.support.dummy_ext import main
raise SystemExit(main())
"""


@pytest.fixture(scope="module")
def tmpfs() -> Iterator[Path]:
    """A 1 MB tmpfs, root's, mode 0755 (as /run), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs and isolating the processes need root (CI runs as root)")
    mount = Path(tempfile.mkdtemp(prefix="smx-vol-"))
    mount.chmod(0o755)
    mount_tmpfs(mount, "1m")
    try:
        yield mount
    finally:
        unmount(mount)
        mount.rmdir()


@pytest.fixture(scope="module")
def site(tmpfs: Path) -> Iterator[SmxRun]:
    toml = SITE_TOML.format(volatile=tmpfs / "smx")
    s = SmxRun(toml, {"spy_agent.py": SPY}, prefix="smx-vol-")
    try:
        yield s
    finally:
        s.close()


def _site_dir(site: SmxRun, tmpfs: Path) -> Path:
    return tmpfs / "smx" / site_group(SITE, site.home)


def _running(site: SmxRun) -> bool:
    procs = site.procs()
    want = {"core": "serving", "meter": "running", "spy": "running"}
    return all(
        procs.get(n, {}).get("state") == "running" and procs[n]["health"] == h
        for n, h in want.items()
    )


def _status_shows_every_process_healthy(site: SmxRun) -> None:
    wait_for(lambda: _running(site) or site.proc.poll() is not None, 30, what="a running site")
    assert site.proc.poll() is None, site.log()
    r = site.smx("status", "--home", str(site.home))  # only the site's home to go by
    assert r.returncode == 0, r.stdout + r.stderr
    for name, health in (("core", "serving"), ("meter", "running"), ("spy", "running")):
        (row,) = [line for line in r.stdout.splitlines() if line.split()[:1] == [name]]
        assert row.split()[2:4] == ["running", health], r.stdout


def _on(path: Path, mount: Path) -> bool:
    return os.stat(path).st_dev == os.stat(mount).st_dev


def _state_files_are_in_memory(site: SmxRun, tmpfs: Path) -> None:
    site_dir = _site_dir(site, tmpfs)
    paths = RunPaths(site.home, site_dir)
    status = paths.status
    assert status.is_symlink() and status.resolve() == site_dir / "supervisor.json"
    assert json.loads(status.read_text())["site"] == SITE
    for name in ("core", "meter", "spy"):
        link = paths.health_file(name)
        assert link.is_symlink(), name
        target = link.resolve()
        assert target == site_dir / name / "health.json"
        assert stat.S_ISREG(target.lstat().st_mode) and _on(target, tmpfs)
        assert json.loads(target.read_text())["state"] == "running"
        assert not (paths.private_dir(name) / "health.json").exists()
    # Nothing rewritten every few seconds is left in run/ (on the SD card).
    for f in paths.run.rglob("*.json"):
        assert "health" not in f.name and f.name != "supervisor.json" or f.is_symlink(), f
    # Owners and modes: the site's directory root's, each process's its own.
    info = site_dir.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o750)
    for name in ("core", "meter", "spy"):
        info = (site_dir / name).stat()
        assert info.st_uid == paths.private_dir(name).stat().st_uid != 0
        assert stat.S_IMODE(info.st_mode) == 0o700


def test_the_site_runs_with_its_state_files_in_memory(site, tmpfs):
    _status_shows_every_process_healthy(site)
    _state_files_are_in_memory(site, tmpfs)


def test_durable_state_stays_in_run_and_the_agent_writes_only_its_own_health(site, tmpfs):
    findings = site.home / "run" / "spy" / "findings.json"
    wait_for(findings.exists, 15, what="the agent's findings")
    assert not _on(findings, tmpfs)  # its durable state: in run/spy/, not in memory
    found = json.loads(findings.read_text())
    assert found["health file"] == str(_site_dir(site, tmpfs) / "spy" / "health.json")
    for what in (
        "meter health",
        "core health",
        "a file in meter's directory",
        "a file in the site's directory",
        "supervisor state",
    ):
        assert found[what] == "PermissionError", (what, found)


def test_a_restart_after_a_reboot_makes_the_volatile_directory_again(site, tmpfs):
    assert site.stop() == 0, site.log()
    unmount(tmpfs, lazy=False)  # the reboot: memory is empty again
    mount_tmpfs(tmpfs, "1m")
    assert list(tmpfs.iterdir()) == []
    assert not RunPaths(site.home).status.exists()  # a dangling link until the start
    site.start()
    _status_shows_every_process_healthy(site)
    _state_files_are_in_memory(site, tmpfs)


# --------------------------------------------------------------------------- no root needed


def _me() -> Account:
    return Account(os.geteuid(), os.getegid(), ())


def test_links_planted_in_the_volatile_directory_are_never_followed(tmp_path):
    home, outside = tmp_path / "home", tmp_path / "outside"
    (home / "run").mkdir(parents=True)
    outside.mkdir(mode=0o700)
    (outside / "keep").write_text("untouched")
    root = tmp_path / "mem"
    paths = RunPaths(home, root / "smx-abc123")
    root.mkdir(mode=0o755)
    paths.volatile.mkdir(mode=0o700)  # type: ignore[union-attr]
    # A process's directory replaced by a link to somewhere else: replaced, not followed.
    (paths.volatile / "meter").symlink_to(outside)  # type: ignore[operator]
    (home / "run" / "meter.health.json").write_text("{}")  # an old file: becomes a link
    prepare_volatile(paths, {"core": _me(), "meter": _me()}, os.getegid())
    meter = paths.volatile_dir("meter")
    assert meter.is_dir() and not meter.is_symlink()
    assert stat.S_IMODE(meter.stat().st_mode) == 0o700
    assert stat.S_IMODE(outside.stat().st_mode) == 0o700
    assert sorted(p.name for p in outside.iterdir()) == ["keep"]
    assert os.readlink(paths.health_file("meter")) == str(meter / "health.json")
    assert os.readlink(paths.status) == str(paths.status_file)
    # The site's directory itself a link: refused.
    other = RunPaths(home, root / "smx-def456")
    (root / "smx-def456").symlink_to(outside)
    with pytest.raises(IsolationError, match="not a directory of ours"):
        prepare_volatile(other, {"core": _me()}, os.getegid())
    assert stat.S_IMODE(outside.stat().st_mode) == 0o700


def test_a_volatile_dir_others_may_write_in_is_refused(tmp_path):
    root = tmp_path / "mem"
    root.mkdir()
    root.chmod(0o777)
    (tmp_path / "run").mkdir()
    with pytest.raises(IsolationError, match="other users may write in it"):
        prepare_volatile(RunPaths(tmp_path, root / "smx-x"), {"core": _me()}, os.getegid())
    root.chmod(0o1777)  # sticky, like /dev/shm: nobody can replace our entry
    prepare_volatile(RunPaths(tmp_path, root / "smx-x"), {"core": _me()}, os.getegid())
    assert (root / "smx-x" / "core").is_dir()


def test_the_site_file_key(tmp_path):
    cfg = parse_site_config('site = "usm-0097"\n', "site.toml", tmp_path)
    assert cfg.supervisor.volatile_dir is None and cfg.paths.volatile is None
    text = 'site = "usm-0097"\n[supervisor]\nvolatile_dir = "/run/smx"\n'
    cfg = parse_site_config(text, "site.toml", tmp_path)
    assert cfg.paths.volatile == Path("/run/smx") / site_group("usm-0097", tmp_path)
    with pytest.raises(SiteConfigError, match="absolute path"):
        parse_site_config(text.replace("/run/smx", "run/smx"), "site.toml", tmp_path)
    with pytest.raises(SiteConfigError, match="volatile_dir"):
        parse_site_config(text.replace("volatile_dir", "volatile_dri"), "site.toml", tmp_path)
