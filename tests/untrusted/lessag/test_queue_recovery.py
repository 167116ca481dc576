"""A damaged queue.db (SD-card damage, a torn copy, a bad write) once raised
sqlite3.DatabaseError when the agent built its outbox: the agent exited, was restarted, exited
again, and published, controlled and answered nothing until someone deleted the file. The rule:
a queue that is not a database, or fails `PRAGMA quick_check` at start, is set aside (renamed,
with its -wal and -shm), logged once, what it held counted in `dropped`, and a fresh queue
started whose publish ids stay above every earlier one (consumers drop a `seq` they have seen).
A queue that cannot be opened for another reason (no access, no space) is not damage: the
error stands and the file is left alone."""

from __future__ import annotations

import logging
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from untrusted.lessag.outbox import Outbox
from untrusted.lessag.settings import QueueConfig


class _Offline:
    """A link that never connects: everything the outbox gets goes to disk."""

    connected = False
    on_ack = None


@pytest.fixture
def tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lessag-queue-") as d:
        yield Path(d)


def _queue_with(path: Path, n: int) -> int:
    """A good queue of `n` messages on disk; the last publish id."""
    outbox = Outbox(_Offline(), QueueConfig(), path)  # type: ignore[arg-type]
    seqs = [outbox.submit("usm-t/lessag/smm/data", b"x" * 200) for _ in range(n)]
    outbox.close()
    return seqs[-1]


def _aside(path: Path) -> list[str]:
    """The damaged queues set aside (each with its -wal and -shm, if any)."""
    found = path.parent.glob(f"{path.name}.damaged-*")
    return sorted(p.name for p in found if not p.name.endswith(("-wal", "-shm")))


def test_a_file_that_is_not_a_database_is_set_aside_and_a_fresh_queue_started(tmp, caplog):
    path = tmp / "queue.db"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)
    with caplog.at_level(logging.WARNING, logger="untrusted.lessag.outbox"):
        outbox = Outbox(_Offline(), QueueConfig(), path)  # type: ignore[arg-type]
    try:
        seq = outbox.submit("t", b"fresh")
        outbox._to_disk()
        assert outbox.queued == 1
        assert outbox.dropped == 1  # how many it held is unknown: counted as one
        assert seq > time.time() * 1000 - 60_000  # above any counter the old file had
    finally:
        outbox.close()
    assert len(_aside(path)) == 1 and path.exists()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "damaged" in errors[0].getMessage()
    # The next start finds a good queue: nothing set aside again, the count kept.
    again = Outbox(_Offline(), QueueConfig(), path)  # type: ignore[arg-type]
    assert again.queued == 1 and again.dropped == 1 and len(_aside(path)) == 1
    again.close()


def test_a_queue_failing_its_check_counts_what_it_held_and_publish_ids_go_on(tmp):
    path = tmp / "queue.db"
    last = _queue_with(path, 300)
    data = bytearray(path.read_bytes())
    data[4096 * 5 + 100 : 4096 * 5 + 3000] = b"\xa5" * 2900  # a damaged table page
    path.write_bytes(bytes(data))
    outbox = Outbox(_Offline(), QueueConfig(), path)  # type: ignore[arg-type]
    try:
        assert outbox.queued == 0 and outbox.dropped == 300
        assert outbox.submit("t", b"after") > last
    finally:
        outbox.close()
    assert len(_aside(path)) == 1


def test_a_queue_that_cannot_be_opened_for_another_reason_is_not_set_aside(tmp):
    path = tmp / "queue.db"
    path.mkdir()  # not damage: sqlite cannot open it (OperationalError)
    with pytest.raises(sqlite3.OperationalError):
        Outbox(_Offline(), QueueConfig(), path)  # type: ignore[arg-type]
    assert path.is_dir() and not _aside(path)


def test_a_good_queue_is_resumed_as_it_was(tmp):
    path = tmp / "queue.db"
    last = _queue_with(path, 5)
    outbox = Outbox(_Offline(), QueueConfig(), path)  # type: ignore[arg-type]
    try:
        assert outbox.queued == 5 and outbox.dropped == 0
        assert outbox.submit("t", b"next") == last + 1
    finally:
        outbox.close()
    assert not _aside(path)
