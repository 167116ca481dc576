"""Everything the running core holds, wired together, and its background duties."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

from google.protobuf.duration_pb2 import Duration

from smx.aio import wait_event
from smx.heap import memory_trimmer
from smx.identity import SERVER_NAME, Identity
from smx.setpoint_status import status_name
from smx.timestamps import now_ms, ts_to_ms
from smx.v1 import control_service_pb2 as control_pb
from smx.v1 import point_pb2
from smx.values import from_value
from trusted.core.audit import AuditLog
from trusted.core.audit_checkpoint import CheckpointSigner, load_verifier
from trusted.core.auth import Gate
from trusted.core.config import ConfigError, CoreConfig
from trusted.core.errors import CoreError
from trusted.core.history import HistoryLog
from trusted.core.realtime import RealtimeDB
from trusted.core.setpoints import SetpointBoard
from trusted.core.site_files import SiteFileError, check_policy_files, private_dir
from trusted.pki import RevocationList, SiteCA
from trusted.policy import Policy, PolicyError

__all__ = ["CoreState", "CORE_POINTS", "CRL_NUMBER_FILE"]

log = logging.getLogger(__name__)

# In the history's directory: the highest CRLNumber the core has accepted (trusted.pki.crl).
CRL_NUMBER_FILE = "crl.number"

# The core's own health points, refreshed every CORE_POINTS_PERIOD seconds.
CORE_POINTS_PERIOD = 5.0
# Why a setpoint point is marked STALE (docs/SETPOINTS.md), in the log.
NO_SETPOINT = "no setpoint in force"
CORE_POINTS = {
    "core/uptime": ("s", point_pb2.VALUE_KIND_DOUBLE, "seconds since the core started"),
    "core/rss": ("MB", point_pb2.VALUE_KIND_DOUBLE, "resident memory of the core process"),
    "core/points": ("1", point_pb2.VALUE_KIND_INT, "points in the realtime database"),
    "core/watchers": ("1", point_pb2.VALUE_KIND_INT, "open WatchPoints streams"),
    "core/history_pending": ("1", point_pb2.VALUE_KIND_INT, "samples waiting for the next flush"),
}


class CoreState:
    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self.ca = SiteCA.load(config.pki_dir, ledger=False)  # the core verifies, never issues
        self.site = self.ca.site
        if config.site and config.site != self.site:
            raise ConfigError(
                f"core.toml: site: {config.site!r} differs from the site CA's {self.site!r}"
            )
        self.identity = Identity(self.site, "trusted", SERVER_NAME).uri
        self.history = HistoryLog(
            config.history.path,
            flush_interval=config.history.flush_interval,
            max_age_s=config.history.max_age_s,
            max_bytes=config.history.max_bytes,
            retention_interval=config.history.retention_interval,
            keep=config.history.keep,
        )
        # Checkpoints are signed with the core's own key; the chain is verified at start.
        self.audit = AuditLog(
            config.audit_path,
            signer=CheckpointSigner.from_pem_file(self.ca.server_key_path),
            verifier=load_verifier(self.ca.server_cert_path),
            identity=self.identity,
            max_bytes=config.audit_max_bytes,
            keep=config.audit_keep,
        )
        self.db = RealtimeDB(
            core_identity=self.identity,
            history=self.history,
            backlog=config.watch_backlog,
            stale_factor=config.stale_factor,
        )
        self.board = SetpointBoard(
            self.db,
            backlog=config.watch_backlog,
            on_change=self._audit_setpoint,
            on_end=lambda name: self.db.mark_stale_now([name], NO_SETPOINT),
        )
        # The highest CRLNumber accepted is kept next to the history (data/, 0700), so that an
        # older CRL put back while the core was down is refused at start (docs/CORE.md).
        crl_number_file = config.history.path.with_name(CRL_NUMBER_FILE)
        private_dir(crl_number_file.parent)
        self.gate = Gate(
            site=self.site,
            policy=Policy.load(config.policy),
            revocations=RevocationList(
                self.ca.crl_path, self.ca.ca_certificate, number_file=crl_number_file
            ),
            audit=self.audit,
        )
        self.started = time.monotonic()
        self._tasks: list[asyncio.Task] = []
        self._expiry_wake = asyncio.Event()

    async def start(self) -> None:
        await self.history.start()
        await self.audit.start()
        floor_file = self.config.history.path.with_name("revision.floor")
        start = self.db.restore(
            self.history.load_last(), self.history.load_metadata(), _read_floor(floor_file)
        )
        _write_floor(floor_file, start)
        capped = self.db.cap_metadata(self.config.max_string_bytes)
        if capped:
            log.warning(
                "metadata over today's limits (unit > 32 bytes, description > [limits] "
                "max_string_bytes) cut at load: %s",
                ", ".join(capped[:20]) + (" ..." if len(capped) > 20 else ""),
            )
        self.board.log.start_at(start)
        # Setpoints are not kept across a restart: nothing is in force now, so the setpoint
        # points (`*_set`, docs/DATA-MODEL.md) no longer hold a setpoint in force.
        self.db.mark_stale_now((n for n in self.db.points if n.endswith("_set")), NO_SETPOINT)
        self._declare_core_points()
        self._tasks = [
            asyncio.create_task(self._stale_loop(), name="stale"),
            asyncio.create_task(self._expiry_loop(), name="setpoint-expiry"),
            asyncio.create_task(self._core_points_loop(), name="core-points"),
        ]
        log.info(
            "core state ready: site=%s points=%d revision=%d",
            self.site,
            len(self.db.points),
            self.db.revision,
        )

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.history.close()
        await self.audit.close()

    # -- used by services ---------------------------------------------------------------------

    def reload_policy(self, by: str) -> Policy:
        try:
            check_policy_files(self.config.policy)
            policy = Policy.load(self.config.policy)
        except (PolicyError, SiteFileError) as err:
            self.audit.append(
                "policy_reload", by, reason="POLICY_INVALID", detail={"error": str(err)}
            )
            log.error("policy reload refused, previous policy stays in force: %s", err)
            raise CoreError("POLICY_INVALID", str(err)) from err
        self.gate.policy = policy
        self.db.reset_watch_filters()
        self.audit.append(
            "policy_reload",
            by,
            detail={"roles": policy.roles_count, "bindings": policy.bindings_count},
        )
        log.info(
            "policy reloaded by %s: %d roles, %d bindings",
            by,
            policy.roles_count,
            policy.bindings_count,
        )
        return policy

    def write_internal(self, identity: str, samples: list[point_pb2.PointSample]) -> None:
        """A write the core makes on a client's behalf (applied setpoints)."""
        try:
            revision = self.db.write(identity, samples)
        except CoreError as err:
            log.warning("could not record %s: %s", [s.name for s in samples], err.message)
            return
        self.audit.record_write(identity, [s.name for s in samples], revision)

    def wake_expiry(self) -> None:
        self._expiry_wake.set()

    # -- background duties -------------------------------------------------------------------

    def _audit_setpoint(self, kind: str, sp: control_pb.Setpoint) -> None:
        who = sp.reporter if kind == "setpoint_report" else sp.requester
        detail = {
            "id": sp.id,
            "value": from_value(sp.value),
            "expire_ms": ts_to_ms(sp.expire_time),
        }
        if sp.HasField("applied_value"):
            detail["applied"] = from_value(sp.applied_value)
        if sp.reason:
            detail["why"] = sp.reason
        self.audit.append(
            kind,
            who,
            point=sp.name,
            reason=status_name(sp.status),
            detail=detail,
        )

    async def _stale_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.stale_check_interval)
            self.db.mark_stale()

    async def _expiry_loop(self) -> None:
        while True:
            self.board.expire()
            nxt = self.board.next_expiry_ms()
            timeout = 3600.0 if nxt is None else max(0.0, (nxt - now_ms()) / 1000)
            self._expiry_wake.clear()
            await wait_event(self._expiry_wake, timeout)

    def _declare_core_points(self) -> None:
        period = Duration(seconds=int(CORE_POINTS_PERIOD))
        metas = [
            point_pb2.PointMetadata(
                name=name, unit=unit, kind=kind, description=text, expected_period=period
            )
            for name, (unit, kind, text) in CORE_POINTS.items()
        ]
        self.db.declare(self.identity, metas)

    async def _core_points_loop(self) -> None:
        trim = memory_trimmer()
        while True:
            trim()  # before reading the RSS it reports
            values = {
                "core/uptime": point_pb2.Value(
                    double_value=round(time.monotonic() - self.started, 1)
                ),
                "core/rss": point_pb2.Value(double_value=round(_own_rss() / 2**20, 1)),
                "core/points": point_pb2.Value(int_value=len(self.db.points)),
                "core/watchers": point_pb2.Value(int_value=self.db.watcher_count),
                "core/history_pending": point_pb2.Value(
                    int_value=self.history.stats().get("pending", 0)
                ),
            }
            self.write_internal(
                self.identity,
                [point_pb2.PointSample(name=n, value=v) for n, v in values.items()],
            )
            await asyncio.sleep(CORE_POINTS_PERIOD)


def _own_rss() -> int:
    """The core's resident memory in bytes, from /proc/self/statm (as psutil reads it; psutil
    itself would cost the core ~1 MiB of modules for this one number)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _read_floor(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0)
    except FileNotFoundError:
        return None  # a brand-new site
    except (OSError, ValueError) as err:
        # Unreadable: the persisted points still give a floor; jump anyway, say so, carry on.
        log.warning("cannot read %s (%s); revisions continue from the stored points", path, err)
        return 0


def _write_floor(path: Path, revision: int) -> None:
    """Durably record where this run's revisions start, before any is handed out: the next
    start jumps above it even if this run crashes before its first history flush."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(f"{revision}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
