"""Forwarding setpoints for mirrored points down to the remote USM.

A local request for `usm1/ess/P_set` becomes RequestSetpoint(`ess/P_set`, same value, the
REMAINING validity) on the remote; the remote's outcome (followed on the remote core's outcome
stream, for at most `forward_timeout`) is reported locally: APPLIED, CLAMPED to the remote's
value, or REJECTED with the remote's reason ("remote USM unreachable" when it is).

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

from extensions.sdk import Applied, Clamped, Rejected, SetpointRequest, SetpointState
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
        ext.on_setpoint(self.pattern, timeout=cfg.forward_timeout + HANDLER_MARGIN_S)(self.handle)

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
        adopted = await self._adoptable(req, name)
        if adopted:
            log.info("setpoint %s (%s) adopted remote setpoint %s", req.name, req.id, adopted)
            self._remember(req.id, adopted)
            return adopted
        try:
            async with asyncio.timeout(max(0.5, deadline - time.monotonic())):
                sp = await self.remote.client.request_setpoint(name, req.value, remaining)
        except (grpc.aio.AioRpcError, TimeoutError) as err:
            if isinstance(err, grpc.aio.AioRpcError) and err.code() not in TRANSIENT:
                return Rejected(f"remote USM refused the request: {describe_error(err)}")
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

    async def _adopt_after_loss(self, req: SetpointRequest, name: str, deadline: float) -> str:
        if not await wait_event(self.remote.up, deadline - time.monotonic()):
            return ""
        return await self._adoptable(req, name)

    async def _adoptable(self, req: SetpointRequest, name: str) -> str:
        """The id of the remote setpoint this local one already became, if it is in force."""
        try:
            sp = await self.remote.client.get_setpoint(name=name)
        except grpc.aio.AioRpcError:
            return ""  # none yet, or no read right on the remote: request
        if (
            sp.requester == self.remote.identity
            and sp.in_force()
            and sp.value == req.value
            and abs(sp.expires_at - req.expires_at) <= ADOPT_EXPIRY_SLACK_S
            and sp.id not in self.forwarded.values()
        ):
            return sp.id
        return ""

    async def _outcome(self, req: SetpointRequest, remote_id: str, deadline: float) -> Result:
        try:
            sp = await self.remote.client.outcome(remote_id, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            known = self.outcomes.get(req.id)
            if known is not None:
                # Re-sent after a link heal or a remote restart (which forgot the setpoint; its
                # device still runs it until it expires). Requesting again would duplicate it.
                return known
            if not self.remote.up.is_set():
                return Rejected(UNREACHABLE)
            return Rejected(
                f"the remote USM's owner did not report within {self.cfg.forward_timeout:g} s"
                f" (remote setpoint {remote_id} still pending)"
            )
        return _result(sp)

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
    return Rejected(f"remote setpoint {sp.id} {sp.status.lower()}")
