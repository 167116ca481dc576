"""Forwarding setpoints for mirrored points down to the remote USM.

A local request for `usm1/ess/P_set` becomes RequestSetpoint(`ess/P_set`, same value, the
REMAINING validity) on the remote; the remote's outcome (polled with GetSetpoint by id until it
is not PENDING, for at most `forward_timeout`) is reported locally: APPLIED, CLAMPED to the
remote's value, or REJECTED with the remote's reason ("remote USM unreachable" when it is).

No duplicates: the local core re-sends the setpoints in force whenever our setpoint watch
restarts; a local id already forwarded is answered from the remote setpoint it was mapped to, not
requested again. After a restart of this extension (map lost) a re-sent local setpoint is
adopted when the remote's current setpoint for the name is ours, active, with the same value and
(within a few seconds) the same expiry. Local expiry needs nothing remotely: the remote setpoint
was given the same validity and expires by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import grpc
from google.protobuf.duration_pb2 import Duration

from extensions.sdk import Applied, Clamped, Rejected, SetpointRequest
from extensions.sdk.link import TRANSIENT
from extensions.sdk.values import from_value, to_value
from smx.client import error_reason
from smx.v1 import control_service_pb2 as cpb

from .config import RemoteConfig
from .remote import RemoteLink, describe

if TYPE_CHECKING:
    from extensions.sdk import Extension

__all__ = ["SetpointForwarder", "UNREACHABLE"]

log = logging.getLogger(__name__)

UNREACHABLE = "remote USM unreachable"
ACTIVE = frozenset(
    {cpb.SETPOINT_STATUS_PENDING, cpb.SETPOINT_STATUS_APPLIED, cpb.SETPOINT_STATUS_CLAMPED}
)
MIN_VALID_S = 1.0  # the remote core refuses shorter validities
ADOPT_EXPIRY_SLACK_S = 5.0
REMEMBER = 10_000  # local ids kept (a setpoint lives 24 h at most; a few per minute at most)
POLL_FIRST, POLL_MAX = 0.05, 0.5

Result = Applied | Clamped | Rejected


class SetpointForwarder:
    def __init__(self, ext: Extension, cfg: RemoteConfig, remote: RemoteLink) -> None:
        self.ext = ext
        self.cfg = cfg
        self.remote = remote
        self.pattern = f"{cfg.prefix}/**/*_set"
        self.forwarded: OrderedDict[str, str] = OrderedDict()  # local id -> remote id
        self.outcomes: dict[str, Result] = {}  # local id -> last outcome, for re-deliveries
        self.remote_requests = 0
        # The router must wait for us a little longer than we wait for the remote.
        ext.setpoints.handler_timeout = max(
            ext.setpoints.handler_timeout, cfg.forward_timeout + 2.0
        )
        ext.on_setpoint(self.pattern)(self.handle)

    def remote_name(self, local_name: str) -> str:
        return local_name.removeprefix(f"{self.cfg.prefix}/")

    async def handle(self, req: SetpointRequest) -> Result:
        deadline = time.monotonic() + self.cfg.forward_timeout
        remote_id = self.forwarded.get(req.id)
        if remote_id is None:
            if not self.remote.up.is_set():
                return Rejected(UNREACHABLE)
            outcome = await self._forward(req, deadline)
            if isinstance(outcome, Rejected):
                return outcome
            remote_id = outcome
        else:
            log.info(
                "setpoint %s (%s) re-sent: already forwarded as %s", req.name, req.id, remote_id
            )
        result = await self._outcome(req, remote_id, deadline)
        self.outcomes[req.id] = result
        return result

    async def _forward(self, req: SetpointRequest, deadline: float) -> str | Rejected:
        """The remote id for this local request (requested now, or adopted); or why not."""
        remaining = req.expires_at - time.time()
        if remaining < MIN_VALID_S:
            return Rejected(f"less than {MIN_VALID_S:g} s of validity left to forward")
        name = self.remote_name(req.name)
        stubs = self.remote.open()
        adopted = await self._adoptable(req, name)
        if adopted:
            log.info("setpoint %s (%s) adopted remote setpoint %s", req.name, req.id, adopted)
            self._remember(req.id, adopted)
            return adopted
        valid_for = Duration()
        valid_for.FromNanoseconds(int(remaining * 1e9))
        try:
            resp = await stubs.control.RequestSetpoint(
                cpb.RequestSetpointRequest(
                    name=name, value=to_value(req.value), valid_for=valid_for
                ),
                timeout=max(0.5, deadline - time.monotonic()),
            )
        except grpc.aio.AioRpcError as err:
            if err.code() not in TRANSIENT:
                return Rejected(f"remote USM refused the request: {describe(err)}")
            # The request may have reached the remote before the reply was lost: look for it
            # before saying no, or the remote would run what we reported as rejected.
            adopted = await self._adopt_after_loss(req, name, deadline)
            if not adopted:
                return Rejected(UNREACHABLE)
            log.info(
                "setpoint %s (%s) found on the remote as %s after a lost reply",
                req.name,
                req.id,
                adopted,
            )
            self._remember(req.id, adopted)
            return adopted
        self.remote_requests += 1
        remote_id = resp.setpoint.id
        self._remember(req.id, remote_id)
        log.info(
            "setpoint %s=%r (%s) forwarded as %s on %s, valid %.1f s",
            req.name,
            req.value,
            req.id,
            remote_id,
            self.cfg.remote,
            remaining,
        )
        return remote_id

    async def _adopt_after_loss(self, req: SetpointRequest, name: str, deadline: float) -> str:
        try:
            await asyncio.wait_for(self.remote.up.wait(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return ""
        return await self._adoptable(req, name)

    async def _adoptable(self, req: SetpointRequest, name: str) -> str:
        """The id of the remote setpoint this local one already became, if it is in force."""
        assert self.remote.stubs is not None
        try:
            resp = await self.remote.stubs.control.GetSetpoint(
                cpb.GetSetpointRequest(name=name), timeout=2.0
            )
        except grpc.aio.AioRpcError:
            return ""  # none yet, or no read right on the remote: request
        sp = resp.setpoint
        if (
            sp.requester == self.remote.identity
            and sp.status in ACTIVE
            and from_value(sp.value) == req.value
            and abs(sp.expire_time.ToMilliseconds() / 1000 - req.expires_at) <= ADOPT_EXPIRY_SLACK_S
            and sp.id not in self.forwarded.values()
        ):
            return sp.id
        return ""

    async def _outcome(self, req: SetpointRequest, remote_id: str, deadline: float) -> Result:
        assert self.remote.stubs is not None
        delay = POLL_FIRST
        while True:
            try:
                resp = await self.remote.stubs.control.GetSetpoint(
                    cpb.GetSetpointRequest(id=remote_id),
                    timeout=max(0.2, min(2.0, deadline - time.monotonic())),
                )
            except grpc.aio.AioRpcError as err:
                known = self.outcomes.get(req.id)
                if error_reason(err) == "SETPOINT_NOT_FOUND" and known is not None:
                    # The remote core restarted and forgot it; its device still runs it until
                    # it expires. Requesting it again would duplicate it: keep the outcome.
                    return known
                if err.code() not in TRANSIENT:
                    return Rejected(f"remote setpoint {remote_id}: {describe(err)}")
                sp = None
            else:
                sp = resp.setpoint
                if sp.status != cpb.SETPOINT_STATUS_PENDING:
                    return _result(sp)
            if time.monotonic() + delay >= deadline:
                if sp is None:
                    # Unreachable now; a setpoint re-sent after a link heal keeps what it had.
                    return self.outcomes.get(req.id) or Rejected(UNREACHABLE)
                return Rejected(
                    f"the remote USM's owner did not report within {self.cfg.forward_timeout:g} s"
                    f" (remote setpoint {remote_id} still pending)"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)

    def _remember(self, local_id: str, remote_id: str) -> None:
        self.forwarded[local_id] = remote_id
        while len(self.forwarded) > REMEMBER:
            old, _ = self.forwarded.popitem(last=False)
            self.outcomes.pop(old, None)


def _result(sp: cpb.Setpoint) -> Result:
    status = sp.status
    if status == cpb.SETPOINT_STATUS_APPLIED:
        return Applied(from_value(sp.applied_value) if sp.HasField("applied_value") else None)
    if status == cpb.SETPOINT_STATUS_CLAMPED:
        return Clamped(from_value(sp.applied_value), sp.reason or "clamped by the remote USM")
    if status == cpb.SETPOINT_STATUS_REJECTED:
        return Rejected(f"remote USM: {sp.reason or 'rejected'}")
    word = cpb.SetpointStatus.Name(status).removeprefix("SETPOINT_STATUS_").lower()
    return Rejected(f"remote setpoint {sp.id} {word}")
