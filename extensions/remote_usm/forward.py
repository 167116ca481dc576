"""Forwarding setpoints for mirrored points down to the remote USM, with outcomes that never lie.

A local request for `usm1/ess/P_set` becomes RequestSetpoint(`ess/P_set`, same value, the
REMAINING validity) on the remote; the remote's outcome (followed on the remote core's outcome
stream, for at most `forward_timeout`) is reported locally: APPLIED, CLAMPED to the remote's
value, or REJECTED with the remote's reason. REJECTED is reported only when the remote did not
apply it (or it never left this site); when the answer is lost (link down, a slow remote owner,
this extension restarted) the setpoint is UNCONFIRMED and `Reconciler` asks the remote by id once
the link is back, and reports what the remote says. The rules: docs/SETPOINTS.md.

No duplicates (at most once): the local core re-sends the setpoints in force whenever our
setpoint watch restarts; a local id already forwarded is answered from the remote setpoint it was
mapped to, not requested again. After a restart of this extension (map lost) a re-sent setpoint
is looked for on the remote first: the remote's current setpoint for the name is ours when it
has our identity, the same value and (within a few seconds) the same expiry. Local expiry needs
nothing remotely: the remote setpoint was given the same validity and expires by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
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
from smx.aio import wait_event
from smx.client import TRANSIENT, describe_error

from .config import RemoteConfig
from .remote import RemoteLink

if TYPE_CHECKING:
    from extensions.sdk import Extension

__all__ = ["SetpointForwarder", "UNREACHABLE"]

log = logging.getLogger(__name__)

UNREACHABLE = "remote USM unreachable"
MIN_VALID_S = 1.0  # the remote core refuses shorter validities
ADOPT_EXPIRY_SLACK_S = 5.0
REMEMBER = 10_000  # local ids kept (a setpoint lives 24 h at most; a few per minute at most)
# The local router waits for the handler a little longer than the handler waits for the remote.
HANDLER_MARGIN_S = 2.0
# While something is unconfirmed and the link is up, the remote is asked this often.
RECONCILE_S = 1.0
CALL_TIMEOUT = 5.0
# The remote core keeps setpoints in memory only: after its restart it cannot say.
FORGOTTEN = "the remote USM no longer knows it (restarted?); its device may run it until it expires"

Result = Applied | Clamped | Rejected | Unconfirmed


@dataclass
class Unsettled:
    """A setpoint reported UNCONFIRMED: what to ask the remote once the link is back."""

    req: SetpointRequest
    remote_id: str  # "" when the request's reply was lost (look for it by name)
    # When no remote setpoint of ours is found by name: "reject" (it never reached the remote),
    # "forward" (a previous run may or may not have sent it: send it now), "wait" (it did reach
    # the remote, which forgot it in a restart: its device may run it until it expires).
    if_missing: str


class SetpointForwarder:
    def __init__(self, ext: Extension, cfg: RemoteConfig, remote: RemoteLink) -> None:
        self.ext = ext
        self.cfg = cfg
        self.remote = remote
        self.pattern = f"{cfg.prefix}/**/*_set"
        self.forwarded: OrderedDict[str, str] = OrderedDict()  # local id -> remote id
        self.outcomes: dict[str, Result] = {}  # local id -> last outcome, for re-deliveries
        self.unsettled: dict[str, Unsettled] = {}  # local id -> what to reconcile
        self.remote_requests = 0
        # Setpoints requested before this run started may have been forwarded by the last one.
        self.started_at = time.time()
        self._unsettled_added = asyncio.Event()
        ext.on_setpoint(self.pattern, timeout=cfg.forward_timeout + HANDLER_MARGIN_S)(self.handle)

    def remote_name(self, local_name: str) -> str:
        return local_name.removeprefix(f"{self.cfg.prefix}/")

    async def handle(self, req: SetpointRequest) -> Result:
        deadline = time.monotonic() + self.cfg.forward_timeout
        remote_id = self.forwarded.get(req.id)
        if remote_id is None:
            if req.status != "PENDING":
                # Reported by an earlier run of this extension: it was forwarded. Never again:
                # find out what became of it.
                return await self._settle_now(Unsettled(req, "", "wait"), deadline)
            maybe_sent = req.requested_at < self.started_at  # by the run before this one
            try:
                if not self.remote.up.is_set():
                    raise ConnectionError(UNREACHABLE)
                outcome = await self._forward(req, deadline)
            except (grpc.aio.AioRpcError, ConnectionError, TimeoutError) as err:
                if maybe_sent:
                    why = UNREACHABLE if isinstance(err, ConnectionError) else describe_error(err)
                    return self._unconfirmed(Unsettled(req, "", "forward"), why)
                return Rejected(UNREACHABLE)  # true: it never left this site
            if not isinstance(outcome, str):
                return outcome
            remote_id = outcome
        else:
            log.info(
                "setpoint %s (%s) re-sent: already forwarded as %s", req.name, req.id, remote_id
            )
        result = await self._outcome(req, remote_id, deadline)
        self.outcomes[req.id] = result
        return result

    async def _forward(self, req: SetpointRequest, deadline: float) -> str | Result:
        """The remote id for this local request (requested now, or found there); or the
        outcome to report when there is none. Raises AioRpcError when the link fails before
        anything was sent."""
        remaining = req.expires_at - time.time()
        if remaining < MIN_VALID_S:
            return Rejected(f"less than {MIN_VALID_S:g} s of validity left to forward")
        name = self.remote_name(req.name)
        # A link error or a timeout here: nothing was sent.
        found = await self._find(req, in_force_only=True, deadline=deadline)
        if found is not None:
            log.info("setpoint %s (%s) adopted remote setpoint %s", req.name, req.id, found.id)
            self._remember(req.id, found.id)
            return found.id
        try:
            async with asyncio.timeout(max(0.5, deadline - time.monotonic())):
                sp = await self.remote.client.request_setpoint(name, req.value, remaining)
        except (grpc.aio.AioRpcError, TimeoutError) as err:
            if isinstance(err, grpc.aio.AioRpcError) and err.code() not in TRANSIENT:
                return Rejected(f"remote USM refused the request: {describe_error(err)}")
            # The request may have reached the remote before the reply was lost: wait for the
            # link and look for it before saying anything.
            log.info("setpoint %s (%s): reply lost (%s)", req.name, req.id, describe_error(err))
            return await self._settle_now(Unsettled(req, "", "reject"), deadline)
        self.remote_requests += 1
        self._remember(req.id, sp.id)
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
                # device still runs it until it expires). Requesting again would duplicate it.
                return known
            why = (
                f"the remote USM's owner has not reported within {self.cfg.forward_timeout:g} s"
                f" (remote setpoint {remote_id} still pending)"
                if self.remote.up.is_set()
                else f"{UNREACHABLE} after forwarding it as {remote_id}"
            )
            return self._unconfirmed(Unsettled(req, remote_id, "wait"), why)
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

    async def _settle_now(self, entry: Unsettled, deadline: float) -> Result:
        """Settle `entry` before `deadline` if the link allows (waiting for it), else report it
        UNCONFIRMED and leave it to `reconcile_forever`."""
        await wait_event(self.remote.up, deadline - time.monotonic())
        if self.remote.up.is_set():
            try:
                async with asyncio.timeout(max(0.5, deadline - time.monotonic())):
                    result = await self._settle(entry)
            except (grpc.aio.AioRpcError, TimeoutError) as err:
                return self._unconfirmed(entry, describe_error(err))
            if not isinstance(result, str):
                return result
            return self._unconfirmed(entry, result)
        return self._unconfirmed(entry, UNREACHABLE)

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
                except (grpc.aio.AioRpcError, TimeoutError) as err:
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
        req = entry.req
        if not entry.remote_id:
            found = await self._find(req, in_force_only=False)
            if found is None:
                if entry.if_missing == "reject":
                    return Rejected("it never reached the remote USM (not found there)")
                if entry.if_missing == "forward":
                    forwarded = await self._forward(req, time.monotonic() + CALL_TIMEOUT)
                    if not isinstance(forwarded, str):
                        return forwarded
                    entry.remote_id = forwarded
                    return f"forwarded as {forwarded} after the link returned"
                return FORGOTTEN
            entry.remote_id = found.id
            self._remember(req.id, found.id)
        try:
            reply = await self.remote.client.get_setpoint(id=entry.remote_id)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return FORGOTTEN
            raise
        if reply.status in ("PENDING", "UNCONFIRMED"):
            return f"the remote USM has it {reply.status} ({entry.remote_id})"
        log.info(
            "setpoint %s (%s): the remote says %s (%s)",
            req.name,
            req.id,
            reply.status,
            entry.remote_id,
        )
        return _result(reply)

    async def _find(
        self, req: SetpointRequest, *, in_force_only: bool, deadline: float | None = None
    ) -> SetpointState | None:
        """The remote setpoint this local one already became, if the remote still has it as
        the current one for its name."""
        limit = CALL_TIMEOUT if deadline is None else max(0.5, deadline - time.monotonic())
        try:
            async with asyncio.timeout(min(CALL_TIMEOUT, limit)):
                sp = await self.remote.client.get_setpoint(name=self.remote_name(req.name))
        except grpc.aio.AioRpcError as err:
            if err.code() in TRANSIENT:
                raise
            return None  # none yet, or no read right on the remote
        if (
            sp.requester == self.remote.identity
            and (sp.in_force() or not in_force_only)
            and sp.value == req.value
            and abs(sp.expires_at - req.expires_at) <= ADOPT_EXPIRY_SLACK_S
            and not self._mapped_elsewhere(sp.id, req.id)
        ):
            return sp
        return None

    def _mapped_elsewhere(self, remote_id: str, local_id: str) -> bool:
        """Another local setpoint already became `remote_id`: it is not this one's."""
        return any(r == remote_id and lid != local_id for lid, r in self.forwarded.items())

    def _remember(self, local_id: str, remote_id: str) -> None:
        self.forwarded[local_id] = remote_id
        while len(self.forwarded) > REMEMBER:
            old, _ = self.forwarded.popitem(last=False)
            self.outcomes.pop(old, None)


def _result(sp: SetpointState) -> Result:
    if sp.status == "APPLIED":
        return Applied(sp.applied_value)
    if sp.status == "CLAMPED":
        return Clamped(sp.applied_value, sp.reason or "clamped by the remote USM")
    if sp.status == "REJECTED":
        return Rejected(f"remote USM: {sp.reason or 'rejected'}")
    if sp.status == "UNCONFIRMED":
        return Unconfirmed(f"remote USM: {sp.reason or 'unconfirmed'}")
    # EXPIRED or SUPERSEDED there: the remote device no longer runs it.
    return Rejected(f"remote setpoint {sp.id} {sp.status.lower()}")
