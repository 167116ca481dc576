"""Reading files other processes control: never blocks, never follows, never reads too much."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from smx.files import read_regular_file
from trusted.supervisor.process import _last_line


def test_a_regular_file_reads_whole_or_by_its_tail(tmp_path: Path):
    path = tmp_path / "a.log"
    path.write_bytes(b"one\ntwo\nthree\n")
    assert read_regular_file(path, 100) == b"one\ntwo\nthree\n"
    assert read_regular_file(path, 6, tail=True) == b"three\n"
    assert read_regular_file(path, 100, start=4) == b"two\nthree\n"
    assert read_regular_file(path, 5) is None  # larger than the limit, not a tail


def test_fifos_links_and_devices_are_not_read(tmp_path: Path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    start = time.monotonic()
    assert read_regular_file(fifo, 100, tail=True) is None
    assert time.monotonic() - start < 1.0
    other = tmp_path / "other"
    other.write_bytes(b"secret")
    (tmp_path / "soft").symlink_to(other)
    os.link(other, tmp_path / "hard")
    assert read_regular_file(tmp_path / "soft", 100) is None
    assert read_regular_file(tmp_path / "hard", 100) is None  # another process's file, linked
    (tmp_path / "zero").symlink_to("/dev/zero")
    assert read_regular_file(tmp_path / "zero", 100, tail=True) is None
    assert read_regular_file(tmp_path, 100) is None  # a directory


def test_the_supervisor_reads_a_dead_process_log_that_became_a_fifo(tmp_path: Path):
    log = tmp_path / "agent.log"
    log.write_text("starting\nboom: it broke\n")
    assert _last_line(log, 0) == "boom: it broke"
    log.unlink()
    os.mkfifo(log)  # what a hostile process does to its own log before it exits
    start = time.monotonic()
    assert _last_line(log, 0) == ""
    assert time.monotonic() - start < 1.0


def test_the_supervisor_never_opens_a_log_through_a_swapped_directory_or_a_link(tmp_path: Path):
    # A process that owns the site home can replace run/logs/ and plant a link; the supervisor
    # (possibly root) must not create or append to the link's target.
    from trusted.supervisor.process import LOG_ROTATE_BYTES, open_log

    logs = tmp_path / "run" / "logs"
    logs.mkdir(parents=True)
    fd = open_log(logs / "agent.log")
    os.write(fd, b"hello\n")
    os.close(fd)
    assert (logs / "agent.log").read_bytes() == b"hello\n"

    target = tmp_path / "elsewhere"
    (logs / "evil.log").symlink_to(target)
    with pytest.raises(OSError):
        open_log(logs / "evil.log")
    assert not target.exists()

    (tmp_path / "run").rename(tmp_path / "run.old")
    (tmp_path / "run").symlink_to(tmp_path / "run.old")  # a linked run/ is refused too
    with pytest.raises(OSError):
        open_log(tmp_path / "run" / "logs" / "agent.log")

    big = tmp_path / "run.old" / "logs" / "agent.log"
    big.write_bytes(b"x" * (LOG_ROTATE_BYTES + 1))
    os.close(open_log(big))
    assert (big.parent / "agent.log.1").stat().st_size == LOG_ROTATE_BYTES + 1
    assert big.stat().st_size == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_a_logs_directory_owned_by_someone_else_is_refused(tmp_path: Path):
    from trusted.supervisor.process import open_log

    logs = tmp_path / "run" / "logs"
    logs.mkdir(parents=True)
    os.chown(logs, 65534, 65534)  # what a process that swapped run/ would own
    with pytest.raises(PermissionError, match="not the supervisor's own directory"):
        open_log(logs / "agent.log")
