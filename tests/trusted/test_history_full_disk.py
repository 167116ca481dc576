"""The history log on a full disk: a schema-1 migration that runs out of space changes nothing,
says why, and succeeds once there is room; flushes that fail for space keep their samples.

A real small filesystem (tmpfs with a size limit) gives the real ENOSPC: this needs root, as
CI has; elsewhere the tests skip.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.tmpfs import mount_tmpfs, unmount
from tests.trusted.test_history import _v1_database, collect
from trusted.core.history import HistoryError, HistoryLog

GOOD = 1


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs at tmp_path/fs, unmounted afterwards."""
    mount = tmp_path / "fs"
    mount.mkdir()
    mount_tmpfs(mount, "4m", "0700")
    try:
        yield mount
    finally:
        unmount(mount)


def _fill(fs: Path, leave: int) -> Path:
    """A file that takes all the free space of `fs` but `leave` bytes."""
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize
    filler = fs / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def _v1_state(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        count = conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    return version, count


async def test_a_migration_without_room_changes_nothing_and_runs_once_there_is_room(
    small_fs: Path,
) -> None:
    path = small_fs / "data" / "h.db"
    path.parent.mkdir(mode=0o700)
    _v1_database(path)
    assert _v1_state(path) == (1, 10_007)
    filler = _fill(small_fs, leave=8 * 1024)

    log = HistoryLog(path, flush_interval=3600)
    with pytest.raises(HistoryError) as refused:
        await log.start()
    # One line naming the file and the cause.
    assert str(path) in str(refused.value) and "full" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert _v1_state(path) == (1, 10_007)  # rolled back: every old sample still there

    filler.unlink()
    log = HistoryLog(path, flush_interval=3600)
    await log.start()
    try:
        got = await collect(log, ["m/P", "x/E"])
        assert [s.ts_ms for s in got["m/P"]] == list(range(10_001))
        assert [s.ts_ms for s in got["x/E"]] == [5, 6]
    finally:
        await log.close()


async def test_a_flush_that_finds_the_disk_full_keeps_its_samples_for_the_next(
    small_fs: Path,
) -> None:
    path = small_fs / "data" / "h.db"
    path.parent.mkdir(mode=0o700)
    log = HistoryLog(path, flush_interval=3600)
    await log.start()
    try:
        filler = _fill(small_fs, leave=0)
        for i in range(5_000):
            log.append("m/P", i, float(i), GOOD, b"\x01")
        with pytest.raises(HistoryError, match="No space left"):
            await log.flush()
        filler.unlink()
        await log.flush()  # the same samples, now with room
        got = await collect(log, ["m/P"])
        assert [s.ts_ms for s in got["m/P"]] == list(range(5_000))
    finally:
        await log.close()
