"""The core's append-only audit log: JSON lines, hash-chained so that an edited line is detectable.

The line format and the hash chain are described in trusted.core.audit_record; reading the files
back (query, verify, recovery of the tail on open) is trusted.core.audit_reader. This module is
the writer.

The log must stay small on an SD card, whatever the clients do (docs/CORE.md, "Audit"):

- writes (``record_write``, called per ``WritePoints`` batch) become one ``write`` record per
  identity every ``write_summary_interval`` seconds, but only when the identity wrote a name its
  previous summary did not list (or is new); routine writing of the same names is summarised
  once per ``routine_summary_interval`` (an hour), so an idle site writes almost nothing;
- identical denials (same identity, method, reason, point) inside one ``denial_window`` are written
  once immediately, then once more with ``{"repeats": n}`` when the window closes; past its
  budget an identity's denials are only counted, into one record per identity and window
  whatever methods, reasons and points it varies;
- past ``max_bytes`` the file is rotated: renamed ``<log>.1`` (older ones shift, ``keep`` are
  kept) and a new file continues the chain with a ``rotated`` record.
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

from smx.aio import wait_event
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
from trusted.core.audit_reader import (
    first_seq,
    last_record,
    page_records,
    recover_tail,
    rotated_numbers,
    rotated_path,
    verify_chain,
)
from trusted.core.audit_record import (
    GENESIS,
    ROTATED_KIND,
    AuditError,
    AuditRecord,
    jsonable,
    record_hash,
)
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
        "setpoint_superseded",
        "denied",
        "policy_reload",
        CHECKPOINT_KIND,
        BREAK_KIND,
        ROTATED_KIND,
    }
)

# A log up to this size is verified before start() returns; a larger one in the background.
VERIFY_INLINE_BYTES = 8 * 2**20

_SUMMARY_NAMES = 20  # names listed in a write summary
_MAX_DISTINCT_NAMES = 100_000  # per identity and interval; beyond it the count is a lower bound

# An identity writing only names its previous summary listed gets one summary per this long.
ROUTINE_SUMMARY_INTERVAL = 3600.0

# Rotation: the defaults of core.toml [audit] max_size and keep.
DEFAULT_MAX_BYTES = 64 * 2**20
DEFAULT_KEEP = 4
_ROTATE_RETRY = 60.0  # seconds before a failed rotation is tried again

# An identity's denials past its budget: counted per (method, reason) for the first this many
# pairs of a window (later pairs only summed), the most frequent of them listed in its one
# record per window.
_OVERFLOW_PAIRS = 32
_OVERFLOW_LISTED = 10


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _WriteAgg:
    first_revision: int
    last_revision: int
    since_ms: int  # wall time of the first batch counted
    batches: int = 0
    points: int = 0
    names: set[str] = field(default_factory=set)
    capped: bool = False


@dataclass
class _LastSummary:
    names: frozenset[str]  # the names counted in it
    written: float  # monotonic


@dataclass
class _Overflow:
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (method, reason) -> n
    other: int = 0  # denials of pairs beyond _OVERFLOW_PAIRS


@dataclass
class _DenialWindow:
    opened: float  # monotonic
    first: AuditRecord
    repeats: int = 0


# New denial records per identity: a burst, then a steady trickle. Beyond it the identity's
# denials are only counted, into one record per identity and window, so a client that varies
# point, method and reason on every call costs ~3 records a second, not one per call.
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
        routine_summary_interval: float = ROUTINE_SUMMARY_INTERVAL,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
    ) -> None:
        """With a ``signer`` the log keeps signed checkpoints (see trusted.core.audit_checkpoint):
        one at start, every ``checkpoint_interval`` seconds when records were added, one on
        close; ``identity`` is the writer's (the core's) identity on checkpoint and rotated
        records. With a ``verifier`` (the public key of the signer) the whole log is verified at
        start, and a break is logged and recorded as an ``audit_break`` record. Past
        ``max_bytes`` (None: never) the file is rotated and ``keep`` rotated files are kept."""
        for name, value in (
            ("write_summary_interval", write_summary_interval),
            ("fsync_interval", fsync_interval),
            ("denial_window", denial_window),
            ("checkpoint_interval", checkpoint_interval),
            ("routine_summary_interval", routine_summary_interval),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if max_denial_keys < 1:
            raise ValueError(f"max_denial_keys must be >= 1, got {max_denial_keys!r}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1 or None, got {max_bytes!r}")
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep!r}")
        self._path = Path(path)
        self._summary_interval = float(write_summary_interval)
        self._fsync_interval = float(fsync_interval)
        self._denial_window = float(denial_window)
        self._max_denial_keys = max_denial_keys
        self._signer = signer
        self._verifier = verifier
        self._identity = identity
        self._cp_interval = float(checkpoint_interval)
        self._routine_interval = float(routine_summary_interval)
        self._max_bytes = max_bytes
        self._keep = keep
        self._rotate_after = 0.0  # monotonic; later after a failed rotation
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

        self._writes: dict[str, _WriteAgg] = {}  # counted since the identity's last summary
        self._last_summary: dict[str, _LastSummary] = {}
        self._denials: dict[tuple[str, str, str, str], _DenialWindow] = {}
        self._denial_budget = TokenBuckets(DENIAL_RECORD_RATE, DENIAL_RECORD_BURST)
        # Denials past an identity's budget or max_denial_keys open windows: counted per
        # identity (up to max_denial_keys identities, each with at most _OVERFLOW_PAIRS
        # pairs), then in one global counter. Memory stays bounded either way.
        self._overflow: dict[str, _Overflow] = {}
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
        if self._seq == 0 and self._size == 0:
            self._continue_rotated_chain()
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
            total = verified_size + self._rotated_bytes()
            if total <= VERIFY_INLINE_BYTES:
                await check
            else:
                log.info("audit log %s: verifying %d bytes in the background", self._path, total)
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

    def _rotated_bytes(self) -> int:
        total = 0
        for n in rotated_numbers(self._path):
            with contextlib.suppress(OSError):
                total += os.stat(rotated_path(self._path, n)).st_size
        return total

    def _continue_rotated_chain(self) -> None:
        """An empty current file beside rotated ones: a rotation was cut short between the
        rename and the new file's first record. Continue the chain of ``<log>.1``, not GENESIS."""
        numbers = rotated_numbers(self._path)
        tail = last_record(rotated_path(self._path, numbers[0])) if numbers else None
        if tail is None:
            return
        self._seq, self._prev = tail
        log.warning(
            "%s: empty beside %s; continuing its chain from seq %d",
            self._path,
            rotated_path(self._path, numbers[0]).name,
            self._seq,
        )
        self._write_rotated()
        self._prune()

    # -- rotation ----------------------------------------------------------------------------

    async def rotate(self) -> None:
        """Rotate the file now: fsync it, rename it ``<log>.1`` (``.1`` to ``.2``, ...), start a
        new file with a ``rotated`` record continuing the chain, delete rotated files beyond
        ``keep``. Done by the background task once the file passes ``max_bytes``; a failure is
        logged and the current file written on (tried again after a minute)."""
        fd = self._check_open()
        try:
            # The bulk off the event loop; what is appended meanwhile is synced below.
            await asyncio.to_thread(os.fsync, fd)
            if self._fd != fd:
                return
            os.fsync(fd)
            new = self._shift_and_open(fd)
        except (OSError, AuditError) as err:
            self._rotate_after = time.monotonic() + _ROTATE_RETRY
            log.error("%s: rotation failed, writing on in the same file: %s", self._path, err)
            return
        self._fd, self._size, self._dirty = new, 0, True
        try:
            self._write_rotated()
            # Only once the new file names where the kept files start (see _shift_and_open).
            self._prune()
        except (AuditError, OSError) as err:
            log.error("%s: rotation incomplete: %s", self._path, err)
        else:
            log.info("audit log %s rotated at seq %d", self._path, self._seq)
        finally:
            self._next_checkpoint = 0.0  # sign the new file's start at once
            await asyncio.to_thread(self._close_rotated, fd)

    def _shift_and_open(self, fd: int) -> int:
        """Rename ``<log>.k`` to ``.k+1`` (newest last, closing any gap), ``<log>`` to ``.1``,
        and open a new, empty, locked ``<log>``. Nothing is deleted here: `_prune` does that
        after the new file holds its ``rotated`` record, so a crash in between loses no record
        the chain still needs."""
        path = self._path
        try:
            ours = os.path.samestat(os.stat(path), os.fstat(fd))
        except FileNotFoundError:
            ours = False  # renamed by an earlier, failed rotation: fd is already a rotated file
        numbers = rotated_numbers(path)
        for i in reversed(range(len(numbers))):
            if numbers[i] != i + 2:
                os.rename(rotated_path(path, numbers[i]), rotated_path(path, i + 2))
        if ours:
            os.rename(path, rotated_path(path, 1))
        if not create_private_file(path):  # exactly 0600, as the first file
            raise AuditError(f"{path}: appeared during rotation; not ours to append to")
        new = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        try:
            fcntl.flock(new, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(new)
            raise
        return new

    def _write_rotated(self) -> None:
        # kept_from_seq: where the kept files start once `_prune` has run, so a verifier can
        # tell retention from a deleted file (trusted.core.audit_record).
        kept = [n for n in rotated_numbers(self._path) if n <= self._keep]
        detail: dict[str, Any] = {"last_seq": self._seq, "last_hash": self._prev}
        start = first_seq(rotated_path(self._path, kept[-1])) if kept else None
        if start is not None:
            detail["kept_from_seq"] = start
        self._write(ROTATED_KIND, self._identity, "", "", "", detail)

    def _prune(self) -> None:
        for n in rotated_numbers(self._path):
            if n > self._keep:
                old = rotated_path(self._path, n)
                os.unlink(old)
                log.info("audit log: deleted %s (keep = %d)", old, self._keep)

    def _close_rotated(self, fd: int) -> None:
        try:
            dir_fd = os.open(self._path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)  # the renames, durable before the new file is relied on
            finally:
                os.close(dir_fd)
        except OSError as err:
            log.error("%s: fsync of the directory failed: %s", self._path.parent, err.strerror)
        finally:
            os.close(fd)

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
            self._flush_summaries(time.monotonic(), force=True)
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
            await wait_event(self._stop, tick)
            if self._stop.is_set() or self._fd is None:
                return
            await self._tick(time.monotonic())

    async def _tick(self, now: float) -> None:
        """One round of housekeeping at monotonic time ``now``: summaries, denial windows,
        rotation, checkpoint, fsync."""
        try:
            if now >= self._next_summary:
                self._next_summary = now + self._summary_interval
                self._flush_summaries(now)
            self._flush_denials(force=False, now=now)
        except AuditError:
            log.exception("audit log housekeeping failed")
        if (
            self._max_bytes is not None
            and self._size >= self._max_bytes
            and now >= self._rotate_after
            # The start's verification reads the files by name: no renames under it.
            and (self._verify_task is None or self._verify_task.done())
        ):
            await self.rotate()
        if self._signer is not None and now >= self._next_checkpoint:
            self._next_checkpoint = now + self._cp_interval
            try:
                await self.checkpoint()
            except (AuditError, OSError) as err:
                log.error("%s: checkpoint failed: %s", self._path, err)
        if self._fd is not None and self._dirty and now - self._last_fsync >= self._fsync_interval:
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
        window closes. Past the identity's budget of new records, or ``max_denial_keys`` open
        windows, a denial is only counted, into the identity's one record of the window (point
        omitted), and the returned record has ``seq`` 0.
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
        over = self._overflow.get(identity)
        if over is None:
            if len(self._overflow) >= self._max_denial_keys:
                self._dropped += 1
                return
            over = self._overflow[identity] = _Overflow()
        pair = (method, reason)
        if pair in over.counts or len(over.counts) < _OVERFLOW_PAIRS:
            over.counts[pair] = over.counts.get(pair, 0) + 1
        else:
            over.other += 1

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
            for identity in sorted(overflow):
                self._write_overflow(identity, overflow[identity])
            if dropped:
                self._write("denied", "", "", "", "", {"repeats": dropped, "all_omitted": True})

    def _write_overflow(self, identity: str, over: _Overflow) -> None:
        """One record for all of an identity's uncounted denials of a window: the most frequent
        (method, reason) pairs listed, the rest summed in ``other_repeats``."""
        ranked = sorted(over.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        listed = ranked[:_OVERFLOW_LISTED]
        total = sum(over.counts.values()) + over.other
        detail: dict[str, Any] = {
            "repeats": total,
            "points_omitted": True,
            "by": [{"method": m, "reason": r, "repeats": n} for (m, r), n in listed],
        }
        if total > sum(n for _, n in listed):
            detail["other_repeats"] = total - sum(n for _, n in listed)
        # One pair: its method and reason on the record itself, as for any other denial.
        method, reason = ranked[0][0] if len(ranked) == 1 and not over.other else ("", "")
        self._write("denied", identity, method, "", reason, detail)

    def record_write(self, identity: str, names: Iterable[str], revision: int) -> None:
        """Count one WritePoints batch, for the identity's next summary (see the module)."""
        self._check_open()
        if not isinstance(names, list | tuple | set | frozenset):
            names = list(names)
        agg = self._writes.get(identity)
        if agg is None:
            agg = self._writes[identity] = _WriteAgg(revision, revision, _now_ms())
        agg.batches += 1
        agg.points += len(names)
        agg.last_revision = revision
        if len(agg.names) < _MAX_DISTINCT_NAMES:
            agg.names.update(names)
        elif not agg.capped and not agg.names.issuperset(names):
            agg.capped = True

    def _flush_summaries(self, now: float, *, force: bool = False) -> None:
        """Write the summary of each identity that is new, wrote a name its last summary did
        not count, or last had one ``routine_summary_interval`` ago (every one when ``force``);
        the others keep counting. An identity with nothing to summarise for that long is
        forgotten, so memory follows the current writers."""
        for identity in sorted(self._writes):
            agg = self._writes[identity]
            last = self._last_summary.get(identity)
            if (
                not force
                and last is not None
                and now - last.written < self._routine_interval
                and agg.names <= last.names
            ):
                continue  # routine: the same names as before
            del self._writes[identity]
            detail: dict[str, Any] = {
                "batches": agg.batches,
                "points": agg.points,
                "first_revision": agg.first_revision,
                "last_revision": agg.last_revision,
                "since_ms": agg.since_ms,
                "names": heapq.nsmallest(_SUMMARY_NAMES, agg.names),
                "distinct_names": len(agg.names),
            }
            if agg.capped:
                detail["distinct_names_capped"] = True
            self._last_summary[identity] = _LastSummary(frozenset(agg.names), now)
            self._write("write", identity, "", "", "", detail)
        for identity, last in list(self._last_summary.items()):
            if identity not in self._writes and now - last.written >= self._routine_interval:
                del self._last_summary[identity]

    # -- reading -----------------------------------------------------------------------------

    def query(self, *, after_seq: int = 0, limit: int = 1000, **filters: Any) -> list[AuditRecord]:
        """The first ``limit`` matching records after ``after_seq``, oldest first, across the
        rotated files and the current one.

        Filters (see `page_records`): ``start_ms <= ts_ms < end_ms``, ``kind`` and ``identity``
        exactly, ``point_glob(point)``. Records still being aggregated (write summaries, denial
        repeats) are not in the file yet.
        """
        return page_records(self._path, after_seq=after_seq, limit=limit, **filters)[0]

    def verify(self) -> int:
        """Check every line and the hash chain, across the rotated files kept; the number of
        records checked.

        Raises AuditError (with ``.seq``) at the first record that is unreadable, out of sequence,
        not chained to its predecessor, or whose hash does not match its content.
        """
        return verify_chain(self._path)
