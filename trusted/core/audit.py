"""The core's append-only audit log: JSON lines, hash-chained so that an edited line is detectable.

The line format and the hash chain are described in trusted.core.audit_record; reading the file
back (query, verify, recovery of the tail on open) is trusted.core.audit_reader. This module is
the writer.

Two kinds of traffic are aggregated so the log stays small on an SD card:

- writes (``record_write``, called per ``WritePoints`` batch) become one ``write`` record per
  identity every ``write_summary_interval`` seconds;
- identical denials (same identity, method, reason, point) inside one ``denial_window`` are written
  once immediately, then once more with ``{"repeats": n}`` when the window closes, so a client
  hammering a refused call cannot flood the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import heapq
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trusted.core.audit_checkpoint import (
    BREAK_KIND,
    CHECKPOINT_KIND,
    Checkpoint,
    CheckpointSigner,
    PublicKey,
    checkpoint_path,
    read_checkpoint_file,
    verify_log,
    write_checkpoint_file,
)
from trusted.core.audit_reader import page_records, recover_tail, verify_chain
from trusted.core.audit_record import GENESIS, AuditError, AuditRecord, jsonable, record_hash
from trusted.core.rate_limit import TokenBuckets
from trusted.core.site_files import create_private_file, private_dir

__all__ = ["GENESIS", "KINDS", "AuditError", "AuditLog", "AuditRecord"]

log = logging.getLogger(__name__)

# Kinds the core writes; append() accepts others too so new features need no change here.
KINDS = frozenset(
    {
        "write",
        "setpoint_request",
        "setpoint_report",
        "setpoint_expired",
        "denied",
        "policy_reload",
        CHECKPOINT_KIND,
        BREAK_KIND,
    }
)

# A log up to this size is verified before start() returns; a larger one in the background.
VERIFY_INLINE_BYTES = 8 * 2**20

_SUMMARY_NAMES = 20  # names listed in a write summary
_MAX_DISTINCT_NAMES = 100_000  # per identity and interval; beyond it the count is a lower bound


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _WriteAgg:
    first_revision: int
    last_revision: int
    batches: int = 0
    points: int = 0
    names: set[str] = field(default_factory=set)
    capped: bool = False


@dataclass
class _DenialWindow:
    opened: float  # monotonic
    first: AuditRecord
    repeats: int = 0


# New denial records per identity: a burst, then a steady trickle. Beyond it the identity's
# denials are only counted per (method, reason), without the point, so a client that varies
# the point on every call writes ~20 MB a day at most, not gigabytes.
DENIAL_RECORD_BURST = 200
DENIAL_RECORD_RATE = 1.0  # per second


class AuditLog:
    """Append-only audit log of the core; one instance (one process) per file, enforced by flock.

    ``append`` and ``record_write`` are synchronous and cheap: each record is one ``write(2)`` of a
    whole line, so it reaches the OS before ``append`` returns (a crash of the core loses nothing;
    a power cut loses at most ``fsync_interval`` seconds, which a background task fsyncs).
    ``query`` and ``verify`` read the file synchronously: call them through
    ``asyncio.to_thread`` from a server when the file is large.
    """

    def __init__(
        self,
        path: Path,
        *,
        write_summary_interval: float = 10.0,
        fsync_interval: float = 1.0,
        denial_window: float = 1.0,
        max_denial_keys: int = 1024,
        signer: CheckpointSigner | None = None,
        verifier: PublicKey | None = None,
        identity: str = "",
        checkpoint_interval: float = 60.0,
    ) -> None:
        """With a ``signer`` the log keeps signed checkpoints (see trusted.core.audit_checkpoint):
        one at start, every ``checkpoint_interval`` seconds when records were added, one on
        close; ``identity`` is the writer's (the core's) identity on checkpoint records. With a
        ``verifier`` (the public key of the signer) the whole log is verified at start, and a
        break is logged and recorded as an ``audit_break`` record."""
        for name, value in (
            ("write_summary_interval", write_summary_interval),
            ("fsync_interval", fsync_interval),
            ("denial_window", denial_window),
            ("checkpoint_interval", checkpoint_interval),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if max_denial_keys < 1:
            raise ValueError(f"max_denial_keys must be >= 1, got {max_denial_keys!r}")
        self._path = Path(path)
        self._summary_interval = float(write_summary_interval)
        self._fsync_interval = float(fsync_interval)
        self._denial_window = float(denial_window)
        self._max_denial_keys = max_denial_keys
        self._signer = signer
        self._verifier = verifier
        self._identity = identity
        self._cp_interval = float(checkpoint_interval)
        self._cp_path = checkpoint_path(self._path)
        self._cp_seq = -1  # seq covered by the checkpoint file (-1: none)
        self._cp_snapshot: Checkpoint | None = None
        self._next_checkpoint = 0.0
        self._verify_task: asyncio.Task[None] | None = None

        self._fd: int | None = None
        self._closed = False
        self._seq = 0
        self._prev = GENESIS
        self._size = 0  # bytes known to be whole records; a failed write is cut back to it
        self._dirty = False
        self._last_fsync = 0.0
        self._next_summary = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None

        self._writes: dict[str, _WriteAgg] = {}
        self._denials: dict[tuple[str, str, str, str], _DenialWindow] = {}
        self._denial_budget = TokenBuckets(DENIAL_RECORD_RATE, DENIAL_RECORD_BURST)
        # Denials beyond max_denial_keys distinct keys: counted per (identity, method, reason),
        # point dropped; beyond that too, one global counter. Memory stays bounded either way.
        self._overflow: dict[tuple[str, str, str], int] = {}
        self._overflow_opened = 0.0
        self._dropped = 0

    @property
    def path(self) -> Path:
        return self._path

    @property
    def last_seq(self) -> int:
        """The seq of the last record written (0 for an empty log)."""
        return self._seq

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the file for appending and continue its seq and hash chain."""
        if self._closed:
            raise AuditError(f"{self._path}: audit log already closed")
        if self._fd is not None:
            raise AuditError(f"{self._path}: audit log already started")
        snapshot: Checkpoint | None = None
        snapshot_error: AuditError | None = None
        if self._signer is not None or self._verifier is not None:
            try:
                snapshot = read_checkpoint_file(self._cp_path)
            except AuditError as err:
                snapshot_error = err
        self._open()
        if snapshot is not None and snapshot.seq == self._seq and snapshot.hash == self._prev:
            self._cp_seq = self._seq
        verified_size = self._size
        now = time.monotonic()
        self._last_fsync = now
        self._next_summary = now + self._summary_interval
        self._next_checkpoint = now + self._cp_interval
        self._stop = asyncio.Event()
        if self._verifier is not None:
            check = self._verify_at_start(snapshot, snapshot_error, verified_size)
            if verified_size <= VERIFY_INLINE_BYTES:
                await check
            else:
                log.info(
                    "audit log %s: verifying %d bytes in the background", self._path, verified_size
                )
                self._verify_task = asyncio.create_task(check, name="audit-verify")
        await self.checkpoint()
        self._task = asyncio.create_task(self._run(), name=f"audit-log:{self._path.name}")

    async def _verify_at_start(
        self, snapshot: Checkpoint | None, snapshot_error: AuditError | None, size: int
    ) -> None:
        assert self._verifier is not None
        try:
            if snapshot_error is not None:
                raise snapshot_error
            report = await asyncio.to_thread(
                verify_log,
                self._path,
                self._verifier,
                checkpoint=snapshot,
                checkpoint_file=self._cp_path,
                size=size,
                require_checkpoint=False,
            )
        except AuditError as err:
            log.error("AUDIT LOG BROKEN: %s: %s", self._path, err)
            if self._fd is not None:
                detail: dict[str, Any] = {"error": str(err)}
                if err.seq is not None:
                    detail["seq"] = err.seq
                self._write(BREAK_KIND, self._identity, "", "", "AUDIT_CHAIN_BROKEN", detail)
            return
        except Exception:
            log.exception("audit log verification at start failed")
            return
        if snapshot is None and report.records:
            log.warning(
                "audit log %s: %d records without a signed checkpoint (written before "
                "checkpoints existed); signing from here on",
                self._path,
                report.records,
            )
        else:
            log.info(
                "audit log %s verified: %d records, last signed checkpoint at seq %d",
                self._path,
                report.records,
                report.last_checkpoint,
            )

    async def checkpoint(self) -> None:
        """Append a signed checkpoint record if records were added since the last one, fsync
        the log, then replace the checkpoint file (in that order: the file never runs ahead of
        what is on disk). No-op without a signer."""
        if self._signer is None or self._fd is None:
            return
        if self._seq == self._cp_seq and self._cp_path.exists():
            return
        if self._seq > 0 and self._seq != self._cp_seq:
            self._write(
                CHECKPOINT_KIND,
                self._identity,
                "",
                "",
                "",
                self._signer.detail(self._seq, self._prev),
            )
        seq, digest, fd = self._seq, self._prev, self._fd
        await asyncio.to_thread(os.fsync, fd)
        self._dirty = False
        await asyncio.to_thread(write_checkpoint_file, self._cp_path, self._signer, seq, digest)
        self._cp_seq = seq

    def _open(self) -> None:
        path = self._path
        try:
            private_dir(path.parent)  # 0700 with its missing parents, whatever the umask
            create_private_file(path)  # exactly 0600, whatever the umask
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise AuditError(f"{path}: cannot open audit log: {err.strerror}") from err
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                raise AuditError(f"{path}: audit log is in use by another AuditLog") from err
            st = os.fstat(fd)
            if st.st_mode & 0o077:
                mode = st.st_mode & 0o777
                log.warning("%s: audit log had mode %o, tightening to 600", path, mode)
                os.fchmod(fd, 0o600)
            self._seq, self._prev, self._size = recover_tail(path, fd, st.st_size)
        except OSError as err:
            os.close(fd)
            raise AuditError(f"{path}: cannot read audit log: {err.strerror}") from err
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        log.info("audit log %s opened at seq %d", path, self._seq)

    async def close(self) -> None:
        """Write pending summaries and coalesced denials, fsync and close. Idempotent."""
        if self._closed:
            return
        if self._fd is None:
            self._closed = True
            return
        assert self._stop is not None
        self._stop.set()
        if self._task is not None:
            # Awaited, not cancelled: an fsync running in a thread must finish before the fd closes.
            try:
                await self._task
            except Exception:
                log.exception("audit log background task failed")
        if self._verify_task is not None:
            self._verify_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._verify_task
        try:
            self._flush_summaries()
            self._flush_denials(force=True)
        except AuditError:
            log.exception("audit log: pending records lost on close")
        try:
            await self.checkpoint()
        except (AuditError, OSError) as err:
            log.error("%s: final checkpoint failed: %s", self._path, err)
        fd, self._fd = self._fd, None
        self._closed = True
        try:
            await asyncio.to_thread(os.fsync, fd)
        except OSError as err:
            log.error("%s: fsync on close failed: %s", self._path, err.strerror)
        finally:
            os.close(fd)

    async def _run(self) -> None:
        assert self._stop is not None
        tick = min(0.25, self._fsync_interval, self._summary_interval, self._denial_window / 4)
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self._stop.wait()
            if self._stop.is_set() or self._fd is None:
                return
            now = time.monotonic()
            try:
                if now >= self._next_summary:
                    self._next_summary = now + self._summary_interval
                    self._flush_summaries()
                self._flush_denials(force=False, now=now)
            except AuditError:
                log.exception("audit log housekeeping failed")
            if self._signer is not None and now >= self._next_checkpoint:
                self._next_checkpoint = now + self._cp_interval
                try:
                    await self.checkpoint()
                except (AuditError, OSError) as err:
                    log.error("%s: checkpoint failed: %s", self._path, err)
                if self._fd is None:
                    return
            if self._dirty and now - self._last_fsync >= self._fsync_interval:
                self._dirty = False
                self._last_fsync = now
                try:
                    await asyncio.to_thread(os.fsync, self._fd)
                except OSError as err:
                    self._dirty = True
                    log.error("%s: fsync failed: %s", self._path, err.strerror)

    # -- writing -----------------------------------------------------------------------------

    def _check_open(self) -> int:
        if self._fd is None:
            state = "closed" if self._closed else "not started"
            raise AuditError(f"{self._path}: audit log is {state}")
        return self._fd

    def append(
        self,
        kind: str,
        identity: str,
        *,
        method: str = "",
        point: str = "",
        reason: str = "",
        detail: dict | None = None,
    ) -> AuditRecord:
        """Write one record and return it.

        Denials are coalesced: a repeat inside the window returns the record that opened the
        window and is counted into the ``{"repeats": n, "first_seq": s}`` record written when the
        window closes. Past ``max_denial_keys`` open windows, a denial is only counted (per
        identity, method and reason, point omitted) and the returned record has ``seq`` 0.
        """
        self._check_open()
        for name, value in (
            ("kind", kind),
            ("identity", identity),
            ("method", method),
            ("point", point),
            ("reason", reason),
        ):
            if not isinstance(value, str):
                raise TypeError(f"audit {name} must be a str, got {type(value).__name__}")
        if not kind:
            raise AuditError("audit record kind must not be empty")
        if detail is not None and not isinstance(detail, dict):
            raise TypeError(f"audit detail must be a dict, got {type(detail).__name__}")
        if kind == "denied":
            return self._deny(identity, method, point, reason, detail)
        return self._write(kind, identity, method, point, reason, detail)

    def _write(
        self,
        kind: str,
        identity: str,
        method: str,
        point: str,
        reason: str,
        detail: dict | None,
    ) -> AuditRecord:
        fd = self._check_open()
        clean = jsonable(detail) if detail else {}
        seq, ts_ms = self._seq + 1, _now_ms()
        body = {
            "seq": seq,
            "ts_ms": ts_ms,
            "kind": kind,
            "identity": identity,
            "method": method,
            "point": point,
            "reason": reason,
            "detail": clean,
            "prev": self._prev,
        }
        digest = record_hash(body)
        body["hash"] = digest
        line = (
            json.dumps(body, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode(
                "ascii"
            )
            + b"\n"
        )
        view, done = memoryview(line), 0
        try:
            while done < len(line):
                done += os.write(fd, view[done:])
        except OSError as err:
            # Cut a partial line back off so the next record starts on a line of its own.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._size)
            raise AuditError(
                f"{self._path}: cannot append audit record: {err.strerror}", seq=seq
            ) from err
        self._size += len(line)
        self._seq, self._prev, self._dirty = seq, digest, True
        return AuditRecord(seq, ts_ms, kind, identity, method, point, reason, clean)

    def _deny(
        self, identity: str, method: str, point: str, reason: str, detail: dict | None
    ) -> AuditRecord:
        now = time.monotonic()
        key = (identity, method, reason, point)
        win = self._denials.get(key)
        if win is not None:
            if now - win.opened < self._denial_window:
                win.repeats += 1
                return win.first
            self._close_denial(key, win)
        if len(self._denials) >= self._max_denial_keys:
            self._flush_denials(force=False, now=now)
        if len(self._denials) >= self._max_denial_keys or not self._denial_budget.take(identity):
            self._overflow_denial(identity, method, reason, now)
            return AuditRecord(0, _now_ms(), "denied", identity, method, point, reason)
        first = self._write("denied", identity, method, point, reason, detail)
        self._denials[key] = _DenialWindow(now, first)
        return first

    def _overflow_denial(self, identity: str, method: str, reason: str, now: float) -> None:
        if not self._overflow and not self._dropped:
            self._overflow_opened = now
        okey = (identity, method, reason)
        if okey in self._overflow or len(self._overflow) < self._max_denial_keys:
            self._overflow[okey] = self._overflow.get(okey, 0) + 1
        else:
            self._dropped += 1

    def _close_denial(self, key: tuple[str, str, str, str], win: _DenialWindow) -> None:
        del self._denials[key]
        if win.repeats:
            identity, method, reason, point = key
            self._write(
                "denied",
                identity,
                method,
                point,
                reason,
                {"repeats": win.repeats, "first_seq": win.first.seq},
            )

    def _flush_denials(self, *, force: bool, now: float = 0.0) -> None:
        """Close expired denial windows (all of them when ``force``)."""
        expired = [
            (key, win)
            for key, win in self._denials.items()
            if force or now - win.opened >= self._denial_window
        ]
        for key, win in expired:
            self._close_denial(key, win)
        if (self._overflow or self._dropped) and (
            force or now - self._overflow_opened >= self._denial_window
        ):
            overflow, self._overflow = self._overflow, {}
            dropped, self._dropped = self._dropped, 0
            for (identity, method, reason), n in overflow.items():
                self._write(
                    "denied", identity, method, "", reason, {"repeats": n, "points_omitted": True}
                )
            if dropped:
                self._write("denied", "", "", "", "", {"repeats": dropped, "all_omitted": True})

    def record_write(self, identity: str, names: Iterable[str], revision: int) -> None:
        """Count one WritePoints batch; summarised per identity every write_summary_interval."""
        self._check_open()
        if not isinstance(names, list | tuple | set | frozenset):
            names = list(names)
        agg = self._writes.get(identity)
        if agg is None:
            agg = self._writes[identity] = _WriteAgg(revision, revision)
        agg.batches += 1
        agg.points += len(names)
        agg.last_revision = revision
        if len(agg.names) < _MAX_DISTINCT_NAMES:
            agg.names.update(names)
        elif not agg.capped and not agg.names.issuperset(names):
            agg.capped = True

    def _flush_summaries(self) -> None:
        writes, self._writes = self._writes, {}
        for identity in sorted(writes):
            agg = writes[identity]
            detail: dict[str, Any] = {
                "batches": agg.batches,
                "points": agg.points,
                "first_revision": agg.first_revision,
                "last_revision": agg.last_revision,
                "names": heapq.nsmallest(_SUMMARY_NAMES, agg.names),
                "distinct_names": len(agg.names),
            }
            if agg.capped:
                detail["distinct_names_capped"] = True
            self._write("write", identity, "", "", "", detail)

    # -- reading -----------------------------------------------------------------------------

    def query(self, *, after_seq: int = 0, limit: int = 1000, **filters: Any) -> list[AuditRecord]:
        """The first ``limit`` matching records after ``after_seq``, oldest first.

        Filters (see `page_records`): ``start_ms <= ts_ms < end_ms``, ``kind`` and ``identity``
        exactly, ``point_glob(point)``. Records still being aggregated (write summaries, denial
        repeats) are not in the file yet.
        """
        return page_records(self._path, after_seq=after_seq, limit=limit, **filters)[0]

    def verify(self) -> int:
        """Check every line and the hash chain; the number of records checked.

        Raises AuditError (with ``.seq``) at the first record that is unreadable, out of sequence,
        not chained to its predecessor, or whose hash does not match its content.
        """
        return verify_chain(self._path)
