"""A supervised process's log (trusted/supervisor/process_log.py): real processes write into the
pipe; the file never passes its size, a flood is held to the rate with a note of what was
dropped, nothing is lost at a rotation, and the supervisor never writes through a link."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trusted.supervisor.process_log import ProcessLog, open_log


def _logs(tmp_path: Path) -> Path:
    logs = tmp_path / "run" / "logs"
    logs.mkdir(parents=True)
    return logs


async def _run_into(log: ProcessLog, code: str) -> None:
    """Run `python -c code` with its stdout and stderr in a pipe pumped into `log`."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=write_fd, stderr=subprocess.STDOUT)
    os.close(write_fd)
    await log.pump(read_fd)
    assert await asyncio.to_thread(proc.wait, 30) == 0


async def test_a_flood_is_held_to_the_rate_with_a_note_and_the_last_line_kept(tmp_path):
    path = _logs(tmp_path) / "agent.log"
    log = ProcessLog(path, max_bytes=1024 * 1024, rate=1024)
    log.start_run("--- smx run: starting agent")
    flood = "import sys\nfor i in range(100_000): print('refused', i)\nprint('the end')"
    started = time.monotonic()
    await _run_into(log, flood)
    elapsed = time.monotonic() - started
    log.close()
    text = path.read_text()
    assert text.startswith("--- smx run: starting agent\nrefused 0\n")
    # The burst (30 s of the rate, at least 64 KiB) and the rate while it ran, plus the notes.
    assert log.burst == 64 * 1024
    notes = [line for line in text.splitlines() if "bytes of output dropped" in line]
    noted = sum(len(n) + 2 for n in notes)
    assert len(text) <= log.burst + log.rate * elapsed + noted + 100
    assert log.dropped_bytes > 1_000_000
    assert notes and all(n.startswith("--- smx run: ") for n in notes)
    assert text.splitlines()[-1] in (notes[-1], "the end")  # the note comes before what follows
    # Whole lines only: the marker, the output's lines in order, the notes.
    numbers = [int(line.split()[1]) for line in text.splitlines()[1:] if line.startswith("ref")]
    assert all(
        line.startswith(("refused ", "--- smx run: ", "the end")) for line in text.splitlines()
    )
    assert numbers == sorted(numbers) and numbers[0] == 0
    assert sum(int(n.split()[3]) for n in notes) == log.dropped_bytes
    assert log.last_line() == "the end"  # kept though the file never saw it


async def test_the_log_moves_to_dot_1_at_its_size_and_loses_no_line(tmp_path):
    path = _logs(tmp_path) / "ext.log"
    log = ProcessLog(path, max_bytes=64 * 1024, rate=1024 * 1024 * 1024)
    log.start_run("--- start")
    await _run_into(log, "for i in range(20_000): print(f'line {i:05d}')")
    log.close()
    old, new = (path.parent / "ext.log.1").read_text(), path.read_text()
    assert len(old.encode()) <= 64 * 1024 and len(new.encode()) <= 64 * 1024
    written = "--- start\n" + "".join(f"line {i:05d}\n" for i in range(20_000))
    kept = old + new  # a rotation may fall inside a line: the two files join up exactly
    assert len(kept) > 64 * 1024 and written.endswith(kept)
    assert not (path.parent / "ext.log.2").exists()


async def test_a_new_run_starts_with_its_marker_and_its_own_last_line(tmp_path):
    path = _logs(tmp_path) / "ext.log"
    log = ProcessLog(path, max_bytes=1024 * 1024, rate=1024 * 1024)
    log.start_run("--- run 1")
    await _run_into(log, "import sys; print('first'); sys.stderr.write('boom: it broke\\n')")
    assert log.last_line() == "boom: it broke"
    log.start_run("--- run 2")
    assert log.last_line() == ""
    await _run_into(log, "print('x' * 1000)")
    log.close()
    assert path.read_text().splitlines() == [
        "--- run 1",
        "first",
        "boom: it broke",
        "--- run 2",
        "x" * 1000,
    ]
    assert log.last_line() == "x" * 297 + "..."


def test_the_supervisor_never_opens_a_log_through_a_swapped_directory_or_a_link(tmp_path):
    # A process that could replace run/logs/ and plant a link must not make the supervisor
    # (possibly root) create or append to the link's target.
    logs = _logs(tmp_path)
    fd = open_log(logs / "agent.log", 1024)
    os.write(fd, b"hello\n")
    os.close(fd)
    assert (logs / "agent.log").read_bytes() == b"hello\n"

    target = tmp_path / "elsewhere"
    (logs / "evil.log").symlink_to(target)
    with pytest.raises(OSError):
        open_log(logs / "evil.log", 1024)
    assert not target.exists()

    (tmp_path / "run").rename(tmp_path / "run.old")
    (tmp_path / "run").symlink_to(tmp_path / "run.old")  # a linked run/ is refused too
    with pytest.raises(OSError):
        open_log(tmp_path / "run" / "logs" / "agent.log", 1024)

    big = tmp_path / "run.old" / "logs" / "agent.log"
    big.write_bytes(b"x" * 1025)
    os.close(open_log(big, 1024))
    assert (big.parent / "agent.log.1").stat().st_size == 1025
    assert big.stat().st_size == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_a_logs_directory_owned_by_someone_else_is_refused(tmp_path):
    logs = _logs(tmp_path)
    os.chown(logs, 65534, 65534)  # what a process that swapped run/ would own
    with pytest.raises(PermissionError, match="not the supervisor's own directory"):
        open_log(logs / "agent.log", 1024)


async def test_drop_notes_cannot_be_used_to_write_past_the_rate(tmp_path):
    # Alternating a line that is dropped with a 1-byte line would make a note per pair.
    path = _logs(tmp_path) / "agent.log"
    log = ProcessLog(path, max_bytes=16 * 1024 * 1024, rate=1024)
    log.start_run("--- start")
    big = b"x" * 4000 + b"\n"
    started = time.monotonic()
    for _ in range(3000):
        log.feed(big)
        log.feed(b"\n")
    elapsed = time.monotonic() - started
    log.close()
    size = path.stat().st_size
    notes = path.read_text().count("bytes of output dropped")
    assert notes <= 2 + elapsed / 5.0
    assert size <= log.burst + log.rate * elapsed + 200 * notes + 100
