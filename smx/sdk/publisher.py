"""Batched writes that survive the core going away.

`publish` only records the sample as the latest value of its point. A flush task sends what is
pending in one WritePoints every `interval` (or sooner when `max_batch` points wait). While the
core is unreachable nothing is lost but intermediate values: each point keeps its latest sample
and all of them are written as soon as the core is back. Points added since the last flush are
declared first, so they get their metadata before their first value: a value whose point is still
to be declared (added while a declaration call was in flight, or the core went away meanwhile)
waits in `pending` until that declaration is done.

A point the policy does not let this client write (PERMISSION_NOT_GRANTED: a reload may have
taken the right away) is dropped, said once, and not sent again for `RETRY_REFUSED_S`: a
publish loop must not write a denied record into the core's audit log at every tick. The
client's rights are asked for again at the same time, so `may()` follows the policy.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from smx.aio import wait_event
from smx.client import error_info
from smx.v1 import point_pb2
from smx.v1 import point_service_pb2 as pb

from .declarations import Declarations
from .link import CoreLink

__all__ = ["Publisher"]

log = logging.getLogger(__name__)

CALL_TIMEOUT = 10.0
RETRY_REFUSED_S = 60.0  # a point refused for want of rights is tried again after this long


class Publisher:
    def __init__(
        self,
        link: CoreLink,
        declarations: Declarations,
        *,
        interval: float = 0.2,
        max_batch: int = 1000,
    ) -> None:
        self.link = link
        self.declarations = declarations
        self.interval = interval
        self.max_batch = max_batch
        self.pending: dict[str, point_pb2.PointSample] = {}
        self.written = 0
        self.dropped = 0
        self.last_revision = 0
        # name -> when the core refused it for want of rights (time.monotonic())
        self.not_granted: dict[str, float] = {}
        self._wake = asyncio.Event()

    def publish(self, sample: point_pb2.PointSample) -> None:
        if sample.name in self.declarations.refused:
            self.dropped += 1  # the core will not take it; said once when it refused
            return
        since = self.not_granted.get(sample.name)
        if since is not None:
            if time.monotonic() - since < RETRY_REFUSED_S:
                self.dropped += 1
                return
            del self.not_granted[sample.name]  # try again: the policy may have changed back
        self.pending.pop(sample.name, None)  # keep the dict in arrival order
        self.pending[sample.name] = sample
        if len(self.pending) >= self.max_batch:
            self._wake.set()

    async def run(self) -> None:
        while True:
            await wait_event(self._wake, self.interval)
            self._wake.clear()
            await self.link.connected.wait()
            await self.flush()

    async def flush(self) -> bool:
        """Declare what is new, then send everything pending; False when the core was
        unreachable (all kept)."""
        reachable = await self.declarations.declare_new()
        while reachable and self.pending and self.link.connected.is_set():
            self._drop_refused_declarations()
            # Values of declared points only: a point added while a declaration call was in
            # flight (or while the last batch was) is declared first, never written undeclared.
            ready = [n for n in self.pending if not self.declarations.waiting(n)]
            if not ready:
                reachable = await self.declarations.declare_new()
                continue
            batch = [self.pending.pop(n) for n in ready[: self.max_batch]]
            try:
                resp = await self.link.open().points.WritePoints(
                    pb.WritePointsRequest(samples=batch), timeout=CALL_TIMEOUT
                )
            except asyncio.CancelledError:
                self._put_back(batch)  # stopping mid-write: keep it for the final flush
                raise
            except grpc.aio.AioRpcError as err:
                self._put_back(batch)
                if self.link.lost_on(err):
                    return False
                if self._drop_refused(err):
                    await self.link.refresh_rights()
                continue
            self.written += len(batch)
            self.last_revision = resp.revision
        return not self.pending

    def _drop_refused_declarations(self) -> None:
        for name in [n for n in self.pending if n in self.declarations.refused]:
            del self.pending[name]
            self.dropped += 1  # the core refused its declaration: it would refuse the value

    def _put_back(self, batch: list[point_pb2.PointSample]) -> None:
        # Samples published while the call was in flight are newer: they win.
        for sample in batch:
            self.pending.setdefault(sample.name, sample)

    def _drop_refused(self, err: grpc.aio.AioRpcError) -> bool:
        """A batch is refused whole for one bad point: drop that point, retry the others.
        True when the refusal was for want of rights (the caller then asks for its rights)."""
        info = error_info(err)
        point = info.metadata.get("point") if info is not None else None
        reason = info.reason if info is not None else err.code().name
        not_granted = reason == "PERMISSION_NOT_GRANTED"
        # Without a point the verb itself is refused: every pending point goes.
        names = [point] if point and point in self.pending else list(self.pending)
        for name in names:
            del self.pending[name]
            if not_granted:
                self.not_granted[name] = time.monotonic()
        self.dropped += len(names)
        what = names[0] if len(names) == 1 else f"a batch of {len(names)} samples"
        later = f"; not sent again for {RETRY_REFUSED_S:g} s" if not_granted else ""
        log.error("core refused %s (%s): %s; dropped%s", what, reason, err.details(), later)
        return not_granted
