"""Private data at rest: the site directory, data/, the history database with its -wal/-shm, the
audit log, policy.toml, core.toml and run/ exclude other users whatever the umask, and the core
fixes (or refuses) loose modes at start."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from pathlib import Path

import pytest

from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb
from tests.e2e.test_core_process import write
from tests.support.site import CoreProcess, Site
from trusted.core import site_files
from trusted.core.server import Core
from trusted.core.site_files import SiteFileError, check_mode, private_dir


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def site_modes(home: Path) -> dict[str, int]:
    paths = [
        "",
        "data",
        "data/history.db",
        "data/history.db-wal",
        "data/history.db-shm",
        "data/audit.jsonl",
        "policy.toml",
    ]
    return {p or ".": mode(home / p) for p in paths}


def no_other_users(modes: dict[str, int]) -> None:
    loose = {p: f"{m:04o}" for p, m in modes.items() if m & 0o007}
    assert not loose, f"readable or writable by other users: {loose}"
    assert modes["data"] & 0o077 == 0
    for p in ("data/history.db", "data/history.db-wal", "data/history.db-shm"):
        assert modes[p] == 0o600, (p, f"{modes[p]:04o}")
    assert modes["data/audit.jsonl"] == 0o600
    assert modes["policy.toml"] == 0o600


async def write_some(site: Site) -> None:
    stubs = site.stubs("meter")
    await stubs.points.DeclarePoints(
        spb.DeclarePointsRequest(
            points=[ppb.PointMetadata(name="meter/Ap", unit="kWh", kind=ppb.VALUE_KIND_DOUBLE)]
        )
    )
    for i in range(3):
        sample = ppb.PointSample(name="meter/Ap", value=ppb.Value(double_value=float(i)))
        await stubs.points.WritePoints(spb.WritePointsRequest(samples=[sample]))


async def modes_after_a_start(site: Site, caplog) -> dict[str, int]:
    """Start a core on `site` (its warnings about modes captured), write and flush some points,
    stop it: the modes of the site's paths then."""
    core = Core(site.config())
    with caplog.at_level(logging.WARNING, logger="trusted.core.site_files"):
        await core.start()
    try:
        await write_some(site)
        await core.state.history.flush()
        return site_modes(site.home)
    finally:
        await core.stop(grace=0.1)


@pytest.mark.parametrize("mask", [0o022, 0o000])
async def test_core_in_process_creates_private_files_whatever_the_umask(mask, caplog):
    with umask(mask):
        site = Site()  # its policy.toml is written with the umask: 0644 or 0666
        try:
            modes = await modes_after_a_start(site, caplog)
            no_other_users(modes)
            assert mode(site.socket.parent) & 0o027 == 0
            warned = [r.getMessage() for r in caplog.records if "policy.toml" in r.getMessage()]
            old = 0o666 & ~mask
            assert warned == [
                f"{site.home / 'policy.toml'}: file mode {old:04o} let other users "
                "in; changed to 0600"
            ]
        finally:
            site.cleanup()


async def test_world_readable_history_is_fixed_at_start_with_one_warning(caplog):
    site = Site()
    try:
        core = Core(site.config())
        await core.start()
        await write_some(site)
        await core.stop(grace=0.1)
        db = site.home / "data" / "history.db"
        os.chmod(db, 0o644)
        # A rotated audit file, copied world-readable.
        rotated = site.home / "data" / "audit.jsonl.1"
        rotated.write_bytes((site.home / "data" / "audit.jsonl").read_bytes())
        os.chmod(rotated, 0o644)
        os.chmod(site.home / "data", 0o755)
        os.chmod(site.home, 0o777)
        modes = await modes_after_a_start(site, caplog)
        no_other_users(modes)
        assert modes["."] == 0o750
        lines = [r.getMessage() for r in caplog.records if r.name == "trusted.core.site_files"]
        assert f"{db}: file mode 0644 let other users in; changed to 0600" in lines
        assert f"{rotated}: file mode 0644 let other users in; changed to 0600" in lines
        assert f"{site.home / 'data'}: directory mode 0755 let other users in; changed to 0700" in (
            lines
        )
        assert f"{site.home}: directory mode 0777 let other users in; changed to 0750" in lines
        assert all(r.levelno == logging.WARNING for r in caplog.records if r.name.endswith("files"))
    finally:
        site.cleanup()


def test_a_path_the_core_cannot_fix_is_refused_in_one_line(tmp_path, monkeypatch):
    f = tmp_path / "history.db"
    f.write_text("")
    os.chmod(f, 0o644)
    monkeypatch.setattr(site_files.os, "geteuid", lambda: os.getuid() + 4242)
    with pytest.raises(SiteFileError) as err:
        check_mode(f, 0o600)
    msg = str(err.value)
    assert "\n" not in msg and str(f) in msg and "0644" in msg and "chmod 0600" in msg
    assert mode(f) == 0o644


def test_private_dir_sets_the_mode_of_every_missing_parent(tmp_path):
    with umask(0o000):
        private_dir(tmp_path / "a" / "b" / "c")
    for d in ("a", "a/b", "a/b/c"):
        assert mode(tmp_path / d) == 0o700


@pytest.mark.parametrize("mask", [0o022, 0o000])
def test_smx_core_process_keeps_the_site_private(mask):
    with umask(mask):
        site = Site()
        try:
            core = CoreProcess(site)  # writes core.toml with the umask
            try:
                meter = site.sync_stubs("meter")
                meter.points.DeclarePoints(
                    spb.DeclarePointsRequest(
                        points=[
                            ppb.PointMetadata(
                                name="meter/Ap", unit="kWh", kind=ppb.VALUE_KIND_DOUBLE
                            )
                        ]
                    )
                )
                for i in range(3):
                    write(meter, "meter/Ap", float(i))
                time.sleep(0.5)  # flush_interval 200ms
                modes = site_modes(site.home)
                assert mode(site.home / "core.toml") == 0o640
                assert mode(site.socket) == 0o660
            finally:
                core.kill(15)
            no_other_users(modes)
            log = (site.home / "core.log").read_text()
            assert f"{site.home / 'policy.toml'}: file mode {0o666 & ~mask:04o}" in log
        finally:
            site.cleanup()
