"""Reading the audit log: its files, a backward line reader and tail recovery on open, pages of
records (oldest first, after a seq) and verify.

The log is the current file plus the rotated files kept beside it, oldest first:
``<log>.N`` ... ``<log>.1``, ``<log>`` (see trusted.core.audit_record for the ``rotated`` record
that links them). Queries and verification read across all of them, as one chain.

Everything here needs only the files, not a started AuditLog (`smx audit` verifies a stopped
core's log). The writer is trusted.core.audit; the line format is trusted.core.audit_record.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from trusted.core.audit_record import (
    FIELDS,
    GENESIS,
    ROTATED_KIND,
    AuditError,
    AuditRecord,
    record_hash,
    to_record,
)

__all__ = [
    "chain_records",
    "first_seq",
    "last_record",
    "lines_backward",
    "log_files",
    "page_records",
    "recover_tail",
    "rotated_numbers",
    "rotated_path",
    "verify_chain",
]

log = logging.getLogger(__name__)


def lines_backward(fd: int, size: int, chunk: int = 256 * 1024) -> Iterator[tuple[int, bytes]]:
    """(offset, raw line including its newline if any) from the end of the file backwards."""
    pos, buf, end = size, b"", 0  # buf holds the file from `pos`; buf[:end] is not yielded yet
    while True:
        # The region's last byte is its own line's newline: look for the one before it.
        cut = buf.rfind(b"\n", 0, end - 1) if end > 1 else -1
        if cut >= 0:
            yield pos + cut + 1, buf[cut + 1 : end]
            end = cut + 1
        elif pos > 0:
            step = min(max(chunk, end), pos)  # grows for a very long line: linear, not quadratic
            pos -= step
            buf = os.pread(fd, step, pos) + buf[:end]
            end += step
        else:
            if end:
                yield 0, buf[:end]
            return


def _scan_tail(path: Path, fd: int, size: int) -> tuple[int, str, int]:
    """(last seq, its hash, bytes up to the end of the last whole line); (0, GENESIS, ...)
    when no line is a record."""
    keep = size
    for offset, raw in lines_backward(fd, size):
        if not raw.endswith(b"\n"):
            # Every record is written whole with its newline, so this is an interrupted write.
            log.warning(
                "%s: dropping a torn last line (%d bytes) left by an interrupted write",
                path,
                len(raw),
            )
            keep = offset
            continue
        try:
            obj = json.loads(raw)
            rec = to_record(obj)
            last_hash = obj["hash"]
            if not isinstance(last_hash, str):
                raise ValueError("hash is not a string")
        except (ValueError, KeyError) as err:
            # A whole but unreadable line is evidence, not debris: keep it; verify() reports it.
            log.error(
                "%s: line at byte %d is not a valid audit record (%s); chaining from the "
                "record before it, verify() will report the damage",
                path,
                offset,
                err,
            )
            continue
        return rec.seq, last_hash, keep
    return 0, GENESIS, keep


def recover_tail(path: Path, fd: int, size: int) -> tuple[int, str, int]:
    """(last seq, last hash, size) to continue from; cuts a torn last line away.

    ``fd`` is the writer's open descriptor of ``path`` (named in log messages).
    """
    seq, last_hash, keep = _scan_tail(path, fd, size)
    if keep != size:
        os.ftruncate(fd, keep)
        os.fsync(fd)
    return seq, last_hash, keep


def last_record(path: Path) -> tuple[int, str] | None:
    """(seq, hash) of the last readable record of a file that is not written any more (a
    rotated file); None when it holds none or is missing."""
    with _open(path) as f:
        if f is None:
            return None
        fd = f.fileno()
        seq, last_hash, _ = _scan_tail(path, fd, os.fstat(fd).st_size)
    return (seq, last_hash) if seq else None


def first_seq(path: Path) -> int | None:
    """The seq of the first line of ``path``; None when it is missing, empty or unreadable."""
    with _open(path) as f:
        if f is None:
            return None
        return _first_seq_of(f.fileno())


def _first_seq_of(fd: int) -> int | None:
    line = _line_at(fd, 0, os.fstat(fd).st_size)
    return _seq_of(line) if line.endswith(b"\n") else None


# -- the files of the log --------------------------------------------------------------------

# Rotated files are <log>.1 (newest) to <log>.N; a suffix this long is nothing of ours.
_MAX_SUFFIX_DIGITS = 6


def rotated_path(path: Path, n: int) -> Path:
    """``data/audit.jsonl``, 2 -> ``data/audit.jsonl.2``."""
    return path.with_name(f"{path.name}.{n}")


def rotated_numbers(path: Path) -> list[int]:
    """The numbers of the rotated files of ``path`` that exist, ascending (newest first). A gap
    (a rotation interrupted between two renames) is allowed: the chain shows what is missing."""
    prefix = path.name + "."
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise AuditError(f"{path.parent}: cannot list audit log files: {err.strerror}") from err
    found = []
    for name in names:
        if name.startswith(prefix):
            tail = name[len(prefix) :]
            if (
                tail.isascii()
                and tail.isdigit()
                and len(tail) <= _MAX_SUFFIX_DIGITS
                and tail[0] != "0"
            ):
                found.append(int(tail))
    return sorted(found)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def log_files(path: Path) -> Iterator[list[tuple[Path, BinaryIO]]]:
    """Every file of the log, opened, oldest first: ``<log>.N`` ... ``<log>.1``, ``<log>`` (an
    empty list when there is none). All are opened before any is read, the current file first,
    and the set is taken again if the current file was renamed meanwhile, so a rotation while a
    reader pages or verifies can make it neither skip nor repeat a file."""
    for _ in range(20):
        with contextlib.ExitStack() as stack:
            current = stack.enter_context(_open(path))
            files: list[tuple[Path, BinaryIO]] = []
            for n in reversed(rotated_numbers(path)):
                f = stack.enter_context(_open(rotated_path(path, n)))
                if f is not None:  # else deleted by retention meanwhile: older than the rest
                    files.append((rotated_path(path, n), f))
            try:
                now = _identity(os.stat(path))
            except FileNotFoundError:
                now = None
            if now != (None if current is None else _identity(os.fstat(current.fileno()))):
                continue  # rotated while we opened: open the new set
            if current is not None:
                files.append((path, current))
            yield files
            return
    raise AuditError(f"{path}: the audit log kept rotating while it was being opened")


def page_records(
    path: Path,
    *,
    after_seq: int = 0,
    start_ms: int | None = None,
    end_ms: int | None = None,
    kind: str | None = None,
    identity: str | None = None,
    point_glob: Callable[[str], bool] | None = None,
    limit: int = 100,
) -> tuple[list[AuditRecord], bool]:
    """The first ``limit`` matching records with a seq above ``after_seq``, oldest first, and
    whether more match, across the rotated files and the current one. Seqs only grow down the
    log, so files ending before ``after_seq`` are skipped by their first line and the start is
    found by bisection: each page costs a few reads plus the records it covers, however long
    the log is. There is no early stop on time: a box without an RTC writes 1970 timestamps
    until NTP syncs, so ts_ms is not monotonic."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    match = _Matcher(start_ms, end_ms, kind, identity, point_glob)
    found: list[AuditRecord] = []
    with log_files(path) as files:
        start = 0
        if after_seq > 0:
            for i, (_, f) in enumerate(files):
                first = _first_seq_of(f.fileno())
                if first is not None and first <= after_seq + 1:
                    start = i  # every file before it ends at or before after_seq
        for i, (_, f) in enumerate(files[start:]):
            fd = f.fileno()
            size = os.fstat(fd).st_size
            offset = _first_line_after(fd, size, after_seq) if i == 0 else 0
            for raw in _lines_forward(fd, offset, size):
                rec = match(raw)
                if rec is not None and rec.seq > after_seq:
                    found.append(rec)
                    if len(found) > limit:
                        break
            if len(found) > limit:
                break
    match.report(path)
    return found[:limit], len(found) > limit


class _Matcher:
    """The filters of a query, applied to raw lines (cheap byte pre-filter first)."""

    def __init__(
        self,
        start_ms: int | None,
        end_ms: int | None,
        kind: str | None,
        identity: str | None,
        point_glob: Callable[[str], bool] | None,
    ) -> None:
        self.start_ms, self.end_ms = start_ms, end_ms
        self.kind, self.identity, self.point_glob = kind, identity, point_glob
        # Our own writer spells these fields exactly so in every line.
        self.needles = [
            f'"{name}":{json.dumps(value, ensure_ascii=True)}'.encode("ascii")
            for name, value in (("kind", kind), ("identity", identity))
            if value is not None
        ]
        self.bad = 0

    def __call__(self, raw: bytes) -> AuditRecord | None:
        if self.needles and not all(n in raw for n in self.needles):
            return None
        try:
            rec = to_record(json.loads(raw))
        except ValueError:
            self.bad += 1
            return None
        if self.kind is not None and rec.kind != self.kind:
            return None
        if self.identity is not None and rec.identity != self.identity:
            return None
        if self.start_ms is not None and rec.ts_ms < self.start_ms:
            return None
        if self.end_ms is not None and rec.ts_ms >= self.end_ms:
            return None
        if self.point_glob is not None and not self.point_glob(rec.point):
            return None
        return rec

    def report(self, path: Path) -> None:
        if self.bad:
            log.warning("%s: query skipped %d unreadable lines (run verify)", path, self.bad)


@contextlib.contextmanager
def _open(path: Path) -> Iterator[BinaryIO | None]:
    """The file, or None when there is none yet (a core that never audited anything)."""
    # Never through a link, never blocking: data/ is the core's, and root reads these files
    # too (smx audit, smx backup).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    except OSError as err:
        why = "a link, not the log" if err.errno == errno.ELOOP else err.strerror
        raise AuditError(f"{path}: cannot read audit log: {why}") from err
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise AuditError(f"{path}: cannot read audit log: not a regular file")
    with os.fdopen(fd, "rb") as f:
        yield f


def _line_at(fd: int, start: int, size: int) -> bytes:
    """The whole line starting at byte ``start`` (with its newline, if it has one)."""
    out, pos = b"", start
    while pos < size:
        chunk = os.pread(fd, 4096, pos)
        cut = chunk.find(b"\n")
        if cut >= 0:
            return out + chunk[: cut + 1]
        out += chunk
        pos += len(chunk)
    return out


def _seq_of(raw: bytes) -> int | None:
    try:
        seq = json.loads(raw).get("seq")
    except (ValueError, AttributeError):
        return None
    return seq if type(seq) is int else None


def _first_line_after(fd: int, size: int, after_seq: int) -> int:
    """The offset of a line at or before the first record with seq > ``after_seq``.

    Bisection over byte offsets, each probe reading the first whole line at or after the
    middle. Every line before ``lo`` is known to hold a seq <= ``after_seq``; an unreadable
    probe line is never used to move ``lo``, so the answer can only be early, never late (the
    caller still checks each seq)."""
    if after_seq <= 0:
        return 0
    lo, hi = 0, size
    while lo < hi:
        mid = (lo + hi) // 2
        if mid == lo:
            start = lo
        else:
            nl = _line_at(fd, mid - 1, size)  # from mid-1, so a line starting at mid is found
            start = mid - 1 + len(nl)
            if start >= hi:
                start = lo
        line = _line_at(fd, start, size)
        seq = _seq_of(line) if line.endswith(b"\n") else None
        if seq is not None and seq <= after_seq:
            lo = start + len(line)
        elif start == lo:
            break
        else:
            hi = start
    return lo


def _lines_forward(fd: int, start: int, size: int, chunk: int = 1024 * 1024) -> Iterator[bytes]:
    """Whole lines from ``start`` to ``size`` (a torn last line is left out)."""
    pos, buf = start, b""
    while pos < size:
        data = os.pread(fd, min(chunk, size - pos), pos)
        if not data:
            break
        pos += len(data)
        buf += data
        lines = buf.split(b"\n")
        buf = lines.pop()
        for line in lines:
            yield line + b"\n"


def chain_records(
    path: Path, *, size: int | None = None, missing_ok: bool = False, prefix: str = ""
) -> Iterator[tuple[str, dict, str]]:
    """Each record of the log at ``path`` (its rotated files, oldest first, then ``path``) once
    its line, fields, sequence and hash chain are checked: (where, the record without its hash,
    its hash). Raises AuditError at the first break.

    The chain starts at seq 1 from GENESIS, or, when retention deleted the files before it, at
    a ``rotated`` record, taking its seq and ``prev`` as given; every later file continues the
    chain of the one before. The newest ``rotated`` record names the first seq kept after it
    (``kept_from_seq``): a log that starts later lost a file retention would have kept.
    ``size`` limits the bytes read of ``path`` (a log still being appended to); ``prefix``
    starts the `where` of every message."""
    prev, expected = GENESIS, 0  # 0: the first record decides where the chain starts
    first_kept = claim = claim_seq = 0
    with log_files(path) as files:
        if not files and not missing_ok:
            raise AuditError(f"{path}: cannot read audit log: No such file or directory")
        for file_path, f in files:
            current = file_path == path
            remaining = size if current and size is not None else -1
            for lineno, raw in enumerate(f, 1):
                if remaining >= 0:
                    if remaining == 0:
                        break
                    remaining -= len(raw)
                at = f"line {lineno}" if current else f"{file_path.name} line {lineno}"
                where = f"{prefix}seq {expected or 1} ({at})"
                if not raw.endswith(b"\n"):
                    raise AuditError(f"{where}: torn line without a newline", seq=expected or 1)
                try:
                    obj = json.loads(raw)
                    to_record(obj)
                except ValueError as err:
                    raise AuditError(
                        f"{where}: not a valid record: {err}", seq=expected or 1
                    ) from err
                if set(obj) != set(FIELDS):
                    raise AuditError(
                        f"{where}: fields {sorted(obj)} differ from {sorted(FIELDS)}",
                        seq=expected or 1,
                    )
                seq = obj["seq"]
                if not expected:
                    # The oldest file kept: the genesis file, or one a rotation started.
                    if obj["kind"] == ROTATED_KIND and seq > 1:
                        expected, prev = seq, obj["prev"]
                    else:
                        expected = 1
                    first_kept = expected
                    where = f"{prefix}seq {expected} ({at})"
                if seq != expected:
                    raise AuditError(
                        f"{where}: found seq {seq} (a record is missing or out of order)",
                        seq=expected,
                    )
                if obj["prev"] != prev:
                    raise AuditError(
                        f"{where}: prev does not match the hash of seq {seq - 1}", seq=seq
                    )
                if obj["kind"] == ROTATED_KIND:
                    d = obj["detail"]
                    if d.get("last_seq") != seq - 1 or d.get("last_hash") != prev:
                        raise AuditError(f"{where}: rotated record names another record", seq=seq)
                    kept = d.get("kept_from_seq")
                    claim, claim_seq = (kept if type(kept) is int else 0), seq
                digest = obj.pop("hash")
                if record_hash(obj) != digest:
                    raise AuditError(f"{where}: hash mismatch, the record was altered", seq=seq)
                yield where, obj, digest
                prev, expected = digest, seq + 1
    if claim and first_kept > claim:
        raise AuditError(
            f"{prefix}the log starts at seq {first_kept}, but the rotation at seq {claim_seq} "
            f"kept the records from seq {claim} (a file was deleted)",
            seq=claim,
        )


def verify_chain(path: Path) -> int:
    """Check the log at ``path`` (every file of it) line by line and its hash chain; the
    number of records checked. See `AuditLog.verify`."""
    return sum(1 for _ in chain_records(path, prefix=f"{path}: "))
