"""Reading files other processes control: never blocks, never follows, never reads too much."""

from __future__ import annotations

import os
import time
from pathlib import Path

from smx.files import read_regular_file


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
