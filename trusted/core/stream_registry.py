"""Every open stream with its caller, and a watchdog that ends those of revoked or expired callers,
and those whose caller a policy reload left without the stream's verb.

The per-message re-check (`Gate.recheck`) only runs when a stream has something to send: an idle
watch with a long heartbeat, or a Health.Watch that never sends again, would outlive the
revocation of its caller. The watchdog runs while any stream is open: it stats ``crl.pem``
every ``TICK`` seconds and re-checks every identity with open streams at once when a new list is
in force, and every ``RECHECK_INTERVAL`` seconds otherwise (expiry needs no file change). A
refused caller's streams end with the status and audited refusal a call would get. A reload
that takes the stream's verb from its caller altogether ends it the same way at the next
re-check (a reload that only narrows the caller's points needs no ending: the streams filter
each point against the policy in force).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from trusted.core.errors import CoreError, to_rpc_status
from trusted.policy import NO_VERB

if TYPE_CHECKING:
    from trusted.core.auth import Gate, Peer

__all__ = ["RECHECK_INTERVAL", "TICK", "OpenStream", "StreamRegistry"]

log = logging.getLogger(__name__)

TICK = 0.1  # how often the CRL file is looked at while streams are open
RECHECK_INTERVAL = 0.5  # every open stream's caller is re-checked at least this often


@dataclass(eq=False, slots=True)
class OpenStream:
    peer: Peer
    method: str
    context: grpc.aio.ServicerContext
    task: asyncio.Task | None
    # The verb the stream's method needs (NO_VERB: any authenticated client may hold it).
    verb: str = NO_VERB
    # Set by the watchdog when it ended the stream (the status is already sent and audited).
    ended: CoreError | None = None


@dataclass
class StreamRegistry:
    by_serial: dict[int, set[OpenStream]] = field(default_factory=dict)
    _watchdog: asyncio.Task | None = None

    def __len__(self) -> int:
        return sum(len(s) for s in self.by_serial.values())

    def add(self, gate: Gate, stream: OpenStream) -> None:
        self.by_serial.setdefault(stream.peer.serial, set()).add(stream)
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(
                self._watch(gate), name="smx-stream-revocation-watchdog"
            )

    def discard(self, stream: OpenStream) -> None:
        streams = self.by_serial.get(stream.peer.serial)
        if streams is None:
            return
        streams.discard(stream)
        if not streams:
            del self.by_serial[stream.peer.serial]
        if not self.by_serial and self._watchdog is not None:
            task, self._watchdog = self._watchdog, None
            if task is not asyncio.current_task():
                task.cancel()

    async def check(self, gate: Gate) -> None:
        """Re-check every caller with open streams; end the streams of those refused."""
        for serial in list(self.by_serial):
            streams = self.by_serial.get(serial)
            if not streams:
                continue
            first = next(iter(streams))
            try:
                gate.recheck(first.peer, first.method)
            except CoreError as err:
                for stream in list(streams):
                    await self._end(gate, stream, err)
                continue
            for stream in list(streams):
                verb = stream.verb
                if verb != NO_VERB and not gate.policy.allows(stream.peer.identity, verb, None):
                    lost = gate.not_granted(stream.peer, stream.method, verb, None)
                    await self._end(gate, stream, lost)

    async def _end(self, gate: Gate, stream: OpenStream, err: CoreError) -> None:
        if stream.ended is not None:
            return
        refusal = CoreError(err.reason, err.message)
        refusal.identity = stream.peer.uri
        stream.ended = refusal
        gate.refused(refusal, stream.peer.uri, stream.method)
        log.info("ending %s of %s: %s", stream.method, stream.peer.uri, err.reason)
        # The status goes out now, from here; the handler is then cancelled so that its own
        # clean-up (unwatch, stream place) runs.
        with contextlib.suppress(Exception):
            await stream.context.abort_with_status(to_rpc_status(refusal))
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        self.discard(stream)

    async def _watch(self, gate: Gate) -> None:
        loop = asyncio.get_running_loop()
        version = gate.revocations.version
        next_check = loop.time() + RECHECK_INTERVAL
        while self.by_serial:
            await asyncio.sleep(TICK)
            try:
                gate.revocations.refresh(force=True)
                now = loop.time()
                if gate.revocations.version != version or now >= next_check:
                    version = gate.revocations.version
                    next_check = now + RECHECK_INTERVAL
                    await self.check(gate)
            except Exception:  # the watchdog must outlive any one failure
                log.exception("open-stream revocation check failed")
