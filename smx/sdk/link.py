"""A process's connection to the core, and what to do when the core goes away.

One gRPC channel for the whole process. grpc reconnects the channel by itself; this module only
tracks whether the core is reachable, so that writes are buffered instead of failing, asks the
core who we are and what we may do (WhoAmI) after every (re)connection, and runs the
`on_connect` callbacks (declare points, start watches) every time the core is back, since a
restarted core may have lost what it was told before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import grpc

from smx.client import TRANSIENT, Credentials, Stubs, describe_error, error_reason
from smx.names import GlobSet
from smx.v1 import identity_service_pb2

__all__ = ["CoreLink", "Rights"]

log = logging.getLogger(__name__)

# Reasons after which the same certificate can never work: the operator must act.
REFUSED_IDENTITY = frozenset({"CERTIFICATE_REVOKED", "WRONG_SITE", "IDENTITY_INVALID"})
REFUSED_RETRY_S = 30.0


@dataclass(frozen=True)
class Rights:
    """What the policy lets this identity do, as the core reported it (WhoAmI): per verb, the
    rules granting it, each (its patterns, its `except` patterns or None)."""

    rules: Mapping[str, list[tuple[GlobSet, GlobSet | None]]] = field(default_factory=dict)

    @classmethod
    def from_whoami(cls, me: identity_service_pb2.WhoAmIResponse) -> Rights:
        rules: dict[str, list[tuple[GlobSet, GlobSet | None]]] = {}
        for rule in me.rules:
            granted = GlobSet(rule.patterns)
            but = GlobSet(rule.except_patterns) if rule.except_patterns else None
            for verb in rule.verbs:
                rules.setdefault(verb, []).append((granted, but))
        return cls(rules)

    def allows(self, verb: str, name: str) -> bool:
        return any(
            granted.match(name) and (but is None or not but.match(name))
            for granted, but in self.rules.get(verb, ())
        )


class CoreLink:
    def __init__(self, target: str, credentials: Credentials, *, backoff_max: float = 5.0) -> None:
        self.target = target
        self.credentials = credentials
        self.backoff_max = backoff_max
        self.connected = asyncio.Event()
        self.identity = ""
        self.rights = Rights()
        self.last_error = ""
        self.refused = False  # the core refuses this certificate: nothing works until fixed
        self.stubs: Stubs | None = None
        self._lost = asyncio.Event()
        self._on_connect: list[Callable[[], Awaitable[None]]] = []

    def on_connect(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._on_connect.append(callback)

    def open(self) -> Stubs:
        if self.stubs is None:
            self.stubs = Stubs(self.credentials.aio_channel(self.target))
        return self.stubs

    async def refresh_rights(self) -> None:
        """Ask the core again what this identity may do: after a refusal, the policy may have
        changed since the connection (a reload takes effect at once in the core)."""
        try:
            me = await self.open().identity.WhoAmI(identity_service_pb2.WhoAmIRequest(), timeout=5)
        except grpc.aio.AioRpcError as err:
            self.lost_on(err)
            return
        self.rights = Rights.from_whoami(me)

    def lost_on(self, err: grpc.aio.AioRpcError) -> bool:
        """True (and the link re-checks itself) when a call failed because the core is away or
        refuses this certificate: retry after the reconnect, do not drop what was sent."""
        if err.code() in TRANSIENT or error_reason(err) in REFUSED_IDENTITY:
            self.lost(err)
            return True
        return False

    def lost(self, err: BaseException | None = None) -> None:
        """A call failed in a way that means the core is not there: buffer and reconnect."""
        if self.connected.is_set():
            log.warning("core connection lost: %s", describe_error(err))
        self.connected.clear()
        self._lost.set()

    async def run(self) -> None:
        """Keep the link up for the life of the process."""
        stubs = self.open()
        delay = 0.2
        while True:
            try:
                me = await stubs.identity.WhoAmI(identity_service_pb2.WhoAmIRequest(), timeout=5)
                self.identity, self.rights = me.identity, Rights.from_whoami(me)
                self.refused = False
                self._lost.clear()
                for callback in self._on_connect:
                    await callback()
                if self._lost.is_set():  # a callback lost the core again: start over
                    await asyncio.sleep(delay)
                    continue
            except grpc.aio.AioRpcError as err:
                self.last_error = describe_error(err)
                if error_reason(err) in REFUSED_IDENTITY:
                    # Retrying with the same certificate cannot work: say so loudly, keep trying
                    # slowly in case the operator fixes it (re-issue, policy) without a restart.
                    log.error("the core refuses this certificate: %s", self.last_error)
                    self.refused, delay = True, REFUSED_RETRY_S
                else:
                    log.info(
                        "core not reachable at %s (%s); retrying in %.1f s",
                        self.target,
                        self.last_error,
                        delay,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max) if not self.refused else delay
                continue
            delay = 0.2
            self.last_error = ""
            self.connected.set()
            log.info("connected to the core as %s", self.identity)
            await self._until_lost(stubs)

    async def _until_lost(self, stubs: Stubs) -> None:
        """Until a call fails for want of the core, or the connection drops: a core that
        restarted between two calls would otherwise go unnoticed (and with it, what it forgot:
        declarations, watches)."""
        lost = asyncio.ensure_future(self._lost.wait())
        changed: asyncio.Future[None] | None = None
        state = stubs.channel.get_state()
        try:
            while not lost.done():
                changed = asyncio.ensure_future(stubs.channel.wait_for_state_change(state))
                await asyncio.wait({lost, changed}, return_when=asyncio.FIRST_COMPLETED)
                if lost.done():
                    return
                was, state = state, stubs.channel.get_state()
                if was == grpc.ChannelConnectivity.READY and state != was:
                    self.lost(ConnectionError(f"connection to the core dropped ({state.name})"))
        finally:
            for future in (lost, changed):
                if future is not None:
                    future.cancel()

    async def close(self) -> None:
        if self.stubs is not None:
            await self.stubs.channel.close()
            self.stubs = None
