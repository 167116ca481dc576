"""Forwarding setpoints for mirrored points down to the remote USM, with outcomes that never lie.

A local request for `usm1/ess/P_set` becomes RequestSetpoint(`ess/P_set`, same value, the
REMAINING validity, request_key = the local setpoint's id) on the remote; the remote's outcome
(followed on the remote core's outcome stream, for at most `forward_timeout`) is reported
locally: APPLIED, CLAMPED to the remote's value, or REJECTED with the remote's reason. REJECTED
is reported only when the remote did not apply it, or when it never left this site; when the
answer is lost (link down, a slow remote owner, this extension restarted) the setpoint is
UNCONFIRMED and `reconcile_forever` asks the remote once the link is back, and reports what the
remote says. The rules: docs/SETPOINTS.md.

At most once: the request key makes asking again safe (the remote answers with the setpoint the
first request created, whatever became of it, and changes nothing), and which remote setpoint
each local one became is kept on disk (forwarded.py), so a restarted remote_usm follows it by id.
Local expiry needs nothing remotely: the remote setpoint was given the same validity and expires
by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from extensions.sdk import (
    Applied,
    Clamped,
    Rejected,
    SetpointRequest,
    SetpointState,
    Unconfirmed,
)
from smx.client import TRANSIENT, describe_error
from smx.setpoint_status import MIN_VALID_S  # the remote core refuses shorter validities
from smx.terminal import printable

from .config import RemoteConfig
from .forwarded import ForwardedMap
from .remote import RemoteLink

if TYPE_CHECKING:
    from extensions.sdk import Extension

__all__ = ["SetpointForwarder", "UNREACHABLE"]

log = logging.getLogger(__name__)

UNREACHABLE = "remote USM unreachable"
# The local router waits for the handler a little longer than the handler waits for the remote.
HANDLER_MARGIN_S = 2.0
# While something is unconfirmed and the link is up, the remote is asked this often.
RECONCILE_S = 1.0
CALL_TIMEOUT = 5.0
# The remote core keeps setpoints in memory only: after its restart it cannot say.
FORGOTTEN = "the remote USM no longer knows it (restarted?); its device may run it until it expires"
# What the remote says is kept and audited here: words for a person, bounded.
MAX_REMOTE_TEXT = 200

Result = Applied | Clamped | Rejected | Unconfirmed


class LinkFailed(Exception):
    """The call failed on the way: it may or may not have reached the remote."""


@dataclass
class Unsettled:
    """A setpoint reported UNCONFIRMED: what to ask the remote once the link is back."""

    req: SetpointRequest
    remote_id: str  # "" when not known (a lost reply): asked again with its request key


class SetpointForwarder:
    def __init__(self, ext: Extension, cfg: RemoteConfig, remote: RemoteLink) -> None:
        self.ext = ext
        self.cfg = cfg
        self.remote = remote
        self.pattern = f"{cfg.prefix}/**/*_set"
        self.forwarded = ForwardedMap(_state_file(ext))  # local id -> remote id, on disk
        self.outcomes: dict[str, Result] = {}  # local id -> last outcome, for re-deliveries
        self.unsettled: dict[str, Unsettled] = {}  # local id -> what to reconcile
        self.remote_requests = 0
        # Setpoints requested before this run started may have been sent by the last one.
        self.started_at = time.time()
        self._unsettled_added = asyncio.Event()
        ext.on_setpoint(self.pattern, timeout=cfg.forward_timeout + HANDLER_MARGIN_S)(self.handle)

    def remote_name(self, local_name: str) -> str:
        return local_name.removeprefix(f"{self.cfg.prefix}/")

    async def handle(self, req: SetpointRequest) -> Result:
        deadline = time.monotonic() + self.cfg.forward_timeout
        remote_id = self.forwarded.get(req.id)
        if remote_id is None:
            # Reported before, or requested before this run: the last run may have sent it.
            maybe_sent = req.status != "PENDING" or req.requested_at < self.started_at
            if not self.remote.up.is_set():
                if maybe_sent:
                    return self._unconfirmed(Unsettled(req, ""), UNREACHABLE)
                return Rejected(UNREACHABLE)  # true: it never left this site
            try:
                sent = await self._request(req, deadline)
            except LinkFailed as err:
                return self._unconfirmed(Unsettled(req, ""), str(err))
            if not isinstance(sent, str):
                return sent
            remote_id = sent
        else:
            log.info("setpoint %s (%s) is remote setpoint %s", req.name, req.id, remote_id)
        result = await self._outcome(req, remote_id, deadline)
        self.outcomes[req.id] = result
        return result

    async def _request(self, req: SetpointRequest, deadline: float) -> str | Rejected:
        """The remote id this local setpoint became: requested now, or the one an earlier
        request under the same key created. Rejected when the remote refuses it; LinkFailed
        when the answer did not come back."""
        remaining = req.expires_at - time.time()
        if remaining < MIN_VALID_S:
            return Rejected(f"less than {MIN_VALID_S:g} s of validity left to forward")
        name = self.remote_name(req.name)
        try:
            async with asyncio.timeout(max(0.5, deadline - time.monotonic())):
                sp = await self.remote.client.request_setpoint(
                    name, req.value, remaining, request_key=req.id
                )
        except (grpc.aio.AioRpcError, TimeoutError) as err:
            if isinstance(err, grpc.aio.AioRpcError) and err.code() not in TRANSIENT:
                return Rejected(f"remote USM refused the request: {_short(describe_error(err))}")
            raise LinkFailed(f"no answer from the remote USM ({describe_error(err)})") from err
        self.remote_requests += 1
        self.forwarded.add(req.id, sp.id, req.expires_at)
        log.info(
            "setpoint %s=%r (%s) forwarded as %s on %s, valid %.1f s",
            req.name,
            req.value,
            req.id,
            sp.id,
            self.cfg.remote,
            remaining,
        )
        return sp.id

    async def _outcome(self, req: SetpointRequest, remote_id: str, deadline: float) -> Result:
        try:
            sp = await self.remote.client.outcome(remote_id, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            known = self.outcomes.get(req.id)
            if known is not None and not isinstance(known, Unconfirmed):
                # Re-sent after a link heal or a remote restart (which forgot the setpoint; its
                # device still runs it until it expires): what the remote said then stands.
                return known
            why = (
                f"the remote USM's owner has not reported within {self.cfg.forward_timeout:g} s"
                f" (remote setpoint {remote_id} still pending)"
                if self.remote.up.is_set()
                else f"{UNREACHABLE} after forwarding it as {remote_id}"
            )
            return self._unconfirmed(Unsettled(req, remote_id), why)
        return _result(sp)

    # -- reconciliation -------------------------------------------------------------------

    def _unconfirmed(self, entry: Unsettled, why: str) -> Unconfirmed:
        self.unsettled[entry.req.id] = entry
        self._unsettled_added.set()
        log.warning(
            "setpoint %s (%s) unconfirmed: %s; asking the remote when the link is back",
            entry.req.name,
            entry.req.id,
            why,
        )
        return Unconfirmed(f"{why}; outcome to be confirmed")

    async def reconcile_forever(self) -> None:
        """While setpoints are UNCONFIRMED, ask the remote about them whenever the link is up,
        and report each real outcome as soon as it is known."""
        while True:
            if not self.unsettled:
                self._unsettled_added.clear()
                await self._unsettled_added.wait()
            await self.remote.up.wait()
            for local_id, entry in list(self.unsettled.items()):
                if entry.req.expires_at <= time.time():
                    # The local core expires it as unconfirmed: nothing left to correct.
                    del self.unsettled[local_id]
                    continue
                try:
                    result = await self._settle(entry)
                except (grpc.aio.AioRpcError, TimeoutError, LinkFailed) as err:
                    log.info("reconciling setpoint %s: %s", entry.req.id, describe_error(err))
                    break  # the link is failing again: the mirror notices
                if isinstance(result, str) or self.unsettled.get(local_id) is not entry:
                    continue
                del self.unsettled[local_id]
                self.outcomes[local_id] = result
                await self.ext.setpoints.report_outcome(entry.req, result)
            await asyncio.sleep(RECONCILE_S)

    async def _settle(self, entry: Unsettled) -> Result | str:
        """What the remote says became of `entry`; while that is not known yet, why not."""
        if not entry.remote_id:
            # Asked again under its key: the setpoint the lost request created, or a new one
            # if it never arrived (it is still valid here, so it is still wanted).
            sent = await self._request(entry.req, time.monotonic() + CALL_TIMEOUT)
            if not isinstance(sent, str):
                return sent
            entry.remote_id = sent
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                reply = await self.remote.client.get_setpoint(id=entry.remote_id)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return FORGOTTEN
            raise
        if reply.status in ("PENDING", "UNCONFIRMED"):
            return f"the remote USM has it {reply.status} ({entry.remote_id})"
        log.info(
            "setpoint %s (%s): the remote says %s (%s)",
            entry.req.name,
            entry.req.id,
            reply.status,
            entry.remote_id,
        )
        return _result(reply)


def _state_file(ext: Extension) -> Path:
    """`run/<name>/forwarded.json`: the process's own directory (private under `smx run` as
    root), so it survives restarts."""
    return ext.state_dir / "forwarded.json"


def _short(text: str) -> str:
    """Text from the remote as this site keeps and audits it: printable, bounded."""
    clean = printable(text)
    return clean if len(clean) <= MAX_REMOTE_TEXT else clean[: MAX_REMOTE_TEXT - 1] + "…"


def _result(sp: SetpointState) -> Result:
    reason = _short(sp.reason)
    if sp.status == "APPLIED":
        return Applied(sp.applied_value)
    if sp.status == "CLAMPED":
        return Clamped(sp.applied_value, reason or "clamped by the remote USM")
    if sp.status == "REJECTED":
        return Rejected(f"remote USM: {reason or 'rejected'}")
    if sp.status == "UNCONFIRMED":
        return Unconfirmed(f"remote USM: {reason or 'unconfirmed'}")
    # EXPIRED or SUPERSEDED there: the remote device no longer runs it.
    return Rejected(f"remote setpoint {_short(sp.id)} {_short(sp.status).lower()} there")
