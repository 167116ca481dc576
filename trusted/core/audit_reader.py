"""Reading the audit log file: a backward line reader, tail recovery on open, query and verify.

Everything here needs only the file, not a started AuditLog (`smx audit` verifies a stopped
core's log). The writer is trusted.core.audit; the line format is trusted.core.audit_record.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from trusted.core.audit_record import (
    FIELDS,
    GENESIS,
    AuditError,
    AuditRecord,
    record_hash,
    to_record,
)

__all__ = ["lines_backward", "query_records", "recover_tail", "verify_chain"]

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


def recover_tail(path: Path, fd: int, size: int) -> tuple[int, str, int]:
    """(last seq, last hash, size) to continue from; cuts a torn last line away.

    ``fd`` is the writer's open descriptor of ``path`` (named in log messages).
    """
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
        break
    else:
        rec, last_hash = None, GENESIS
    if keep != size:
        os.ftruncate(fd, keep)
        os.fsync(fd)
    return (rec.seq if rec else 0), last_hash, keep


def query_records(
    path: Path,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    kind: str | None = None,
    identity: str | None = None,
    point_glob: Callable[[str], bool] | None = None,
    limit: int = 1000,
) -> list[AuditRecord]:
    """Matching records of the file at ``path``; see :meth:`trusted.core.audit.AuditLog.query`."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    # Cheap byte pre-filter: our own writer spells these fields exactly so in every line.
    needles = [
        f'"{name}":{json.dumps(value, ensure_ascii=True)}'.encode("ascii")
        for name, value in (("kind", kind), ("identity", identity))
        if value is not None
    ]
    # Read backwards and stop at `limit` matches: the common query (the latest records)
    # touches only the end of a file that may be tens of MB. No early stop on time: a box
    # without an RTC writes 1970 timestamps until NTP syncs, so ts_ms is not monotonic.
    found: list[AuditRecord] = []
    bad = 0
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return []
    except OSError as err:
        raise AuditError(f"{path}: cannot read audit log: {err.strerror}") from err
    with f:
        fd = f.fileno()
        for _, raw in lines_backward(fd, os.fstat(fd).st_size, chunk=1024 * 1024):
            if not raw.endswith(b"\n"):
                continue  # a torn tail that start() has not cut yet
            if needles and not all(n in raw for n in needles):
                continue
            try:
                rec = to_record(json.loads(raw))
            except ValueError:
                bad += 1
                continue
            if kind is not None and rec.kind != kind:
                continue
            if identity is not None and rec.identity != identity:
                continue
            if start_ms is not None and rec.ts_ms < start_ms:
                continue
            if end_ms is not None and rec.ts_ms >= end_ms:
                continue
            if point_glob is not None and not point_glob(rec.point):
                continue
            found.append(rec)
            if len(found) >= limit:
                break
    if bad:
        log.warning("%s: query skipped %d unreadable lines (run verify)", path, bad)
    found.reverse()
    return found


def verify_chain(path: Path) -> int:
    """Check ``path`` line by line and its hash chain; see `AuditLog.verify`."""
    prev, expected, count = GENESIS, 1, 0
    try:
        f = open(path, "rb")
    except OSError as err:
        raise AuditError(f"{path}: cannot read audit log: {err.strerror}") from err
    with f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}: seq {expected} (line {lineno})"
            if not raw.endswith(b"\n"):
                raise AuditError(f"{where}: torn line without a newline", seq=expected)
            try:
                obj = json.loads(raw)
                to_record(obj)
            except ValueError as err:
                raise AuditError(f"{where}: not a valid record: {err}", seq=expected) from err
            if set(obj) != set(FIELDS):
                raise AuditError(
                    f"{where}: fields {sorted(obj)} differ from {sorted(FIELDS)}",
                    seq=expected,
                )
            seq = obj["seq"]
            if seq != expected:
                raise AuditError(
                    f"{where}: found seq {seq} (a record is missing or out of order)",
                    seq=expected,
                )
            if obj["prev"] != prev:
                raise AuditError(f"{where}: prev does not match the hash of seq {seq - 1}", seq=seq)
            digest = obj.pop("hash")
            if record_hash(obj) != digest:
                raise AuditError(f"{where}: hash mismatch, the record was altered", seq=seq)
            prev, expected, count = digest, seq + 1, count + 1
    return count
