"""The points a process declares, told to the core on every (re)connection (a restarted core
may have lost them) and, for points added while running, before their first value is written.

A declaration the core refuses (a name too deep once prefixed, another owner's point) refuses
the whole call: the batch is then declared one point at a time, and only the refused points are
dropped (logged once, their values never sent), so one bad name never hides the others.

One declaration call at a time (a lock): the publisher asks `waiting(name)` before writing a
value, so a point added while another declaration is in flight is never written before its own
declaration (the core would create it without its unit and description).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import grpc

from smx.client import describe_error
from smx.v1 import point_service_pb2 as pb

from .link import CoreLink
from .points import PointSpec

__all__ = ["Declarations"]

log = logging.getLogger(__name__)

CHUNK = 1000
CALL_TIMEOUT = 10.0


class Declarations:
    def __init__(self, link: CoreLink) -> None:
        self.link = link
        self.specs: dict[str, PointSpec] = {}
        self.refused: set[str] = set()
        self._new: dict[str, None] = {}  # added since the last declaration, in order
        self._sending: set[str] = set()  # in a declaration call now
        self._lock = asyncio.Lock()  # one declaration call at a time

    def add(self, specs: Iterable[PointSpec]) -> None:
        for spec in specs:
            if self.specs.get(spec.name) != spec:
                self.specs[spec.name] = spec
                self.refused.discard(spec.name)
                self._new[spec.name] = None

    def waiting(self, name: str) -> bool:
        """`name` is added but not declared yet (or its declaration is in flight): its value
        must wait."""
        return name in self._new or name in self._sending

    async def declare_all(self) -> None:
        """Every point, for a core that may have restarted; a lost core raises (the link then
        retries the whole connection)."""
        async with self._lock:
            self._new.clear()
            await self._declare(list(self.specs.values()), raise_transient=True)

    async def declare_new(self) -> bool:
        """The points added since the last declaration (after any declaration in flight); kept
        for later if the core is away. False when the core is away (nothing was declared)."""
        async with self._lock:
            if not self._new:
                return True
            if not self.link.connected.is_set():
                return False
            names, self._new = list(self._new), {}
            specs = [self.specs[n] for n in names if n in self.specs]
            return await self._declare(specs, raise_transient=False)

    async def _declare(self, specs: list[PointSpec], *, raise_transient: bool) -> bool:
        names = {s.name for s in specs}
        self._sending = names
        try:
            return await self._send(specs, raise_transient=raise_transient)
        except asyncio.CancelledError:
            self._keep(specs)  # stopped mid-call (a flush timed out): still to be declared
            raise
        finally:
            self._sending = set()

    async def _send(
        self, specs: list[PointSpec], *, raise_transient: bool, chunk: int = CHUNK
    ) -> bool:
        """Declare `specs` in calls of `chunk` points; False when the core was lost (what is
        left is kept for the next try)."""
        for i in range(0, len(specs), chunk):
            part = specs[i : i + chunk]
            try:
                await self._call(part)
            except grpc.aio.AioRpcError as err:
                if self.link.lost_on(err):
                    self._keep(specs[i:])
                    if raise_transient:
                        raise
                    return False
                if len(part) == 1:
                    self._refuse(part[0], err)
                elif not await self._send(part, raise_transient=raise_transient, chunk=1):
                    self._keep(specs[i + chunk :])
                    return False
        return True

    async def _call(self, specs: list[PointSpec]) -> None:
        stubs = self.link.open()
        await stubs.points.DeclarePoints(
            pb.DeclarePointsRequest(points=[s.metadata() for s in specs]), timeout=CALL_TIMEOUT
        )

    def _keep(self, specs: list[PointSpec]) -> None:
        for spec in specs:
            self._new[spec.name] = None

    def _refuse(self, spec: PointSpec, err: grpc.aio.AioRpcError) -> None:
        if spec.name not in self.refused:
            log.error("the core refused to declare %s: %s", spec.name, describe_error(err))
        self.refused.add(spec.name)
