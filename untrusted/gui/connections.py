"""The bound on TCP connections, before any HTTP is read: so many in all and so many from one
address (an IPv6 host: its /64); beyond either, a connection is closed at once. With the
process's file limit lowered at start, a flood of idle connections cannot take the GUI's
memory or descriptors, nor, from one address, the owner's place."""

from __future__ import annotations

import asyncio
import collections
import logging
import resource
import time

from websockets.asyncio.server import ServerConnection

from .addresses import address_key

__all__ = ["ConnectionLimits", "limit_open_files"]

log = logging.getLogger("gui")

MAX_OPEN_FILES = 1024
REFUSALS_LOGGED_EVERY_S = 60.0


class ConnectionLimits:
    def __init__(self, total: int, per_address: int) -> None:
        self.total, self.per_address = total, per_address
        self.open: collections.Counter[str] = collections.Counter()
        # Refusals are counted and logged once a minute at most: a flood would fill the log.
        self.refused = 0
        self._logged_at = -REFUSALS_LOGGED_EVERY_S

    def admit(self, address: str) -> bool:
        if self.open.total() >= self.total or self.open[address] >= self.per_address:
            self.refused += 1
            now = time.monotonic()
            if now - self._logged_at >= REFUSALS_LOGGED_EVERY_S:
                self._logged_at = now
                log.warning(
                    "too many connections: %d refused so far (the last from %s)",
                    self.refused,
                    address,
                )
            return False
        self.open[address] += 1
        return True

    def release(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]

    def connection_class(self) -> type[ServerConnection]:
        """websockets' connection, counted from connection_made to connection_lost."""
        limits = self

        class LimitedConnection(ServerConnection):
            counted_as: str | None = None

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                peer = transport.get_extra_info("peername")
                address = address_key(str(peer[0])) if peer else ""
                if limits.admit(address):
                    self.counted_as = address
                else:  # the handshake then ends at once, without a byte read
                    self.transport.abort()

            def connection_lost(self, exc: Exception | None) -> None:
                try:
                    super().connection_lost(exc)
                finally:  # whatever websockets does, the place is given back
                    if self.counted_as is not None:
                        limits.release(self.counted_as)
                        self.counted_as = None

        return LimitedConnection


def limit_open_files(limit: int = MAX_OPEN_FILES) -> None:
    """Lowers the process's file limit (soft and hard) to `limit`: whatever gets past the
    bounds above, the GUI never holds thousands of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new_hard = limit if hard == resource.RLIM_INFINITY else min(hard, limit)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, new_hard), new_hard))
