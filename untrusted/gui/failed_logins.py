"""The bound on wrong passwords: a budget per address a minute, so that a guesser at one
address cannot lock the owner out from another, and a higher ceiling for the whole GUI, so
that a guesser with many addresses is still slow (and scrypt's CPU stays bounded)."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from .addresses import address_key

__all__ = ["FailedLogins"]

WINDOW_S = 60.0


class _Window:
    """Times of failures in the last minute; full at `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.times: collections.deque[float] = collections.deque()

    def forget_old(self, now: float) -> bool:
        """Forgets failures older than a minute; whether any are left."""
        while self.times and self.times[0] <= now - WINDOW_S:
            self.times.popleft()
        return bool(self.times)

    def wait_s(self, now: float) -> float:
        if not self.forget_old(now) or len(self.times) < self.limit:
            return 0.0
        return self.times[0] + WINDOW_S - now


class FailedLogins:
    """At most `per_address` wrong passwords a minute from one address and `total` from all."""

    def __init__(
        self, per_address: int, total: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_address, self.clock = per_address, clock
        self._total = _Window(total)
        # Failures are recorded only while the ceiling lets passwords be checked, so this holds
        # at most `total` addresses, each with a failure in the last minute.
        self._by_address: dict[str, _Window] = {}

    def wait_s(self, address: str) -> float:
        """Seconds until a login from `address` may be tried again (0: now)."""
        now = self.clock()
        for key in [k for k, w in self._by_address.items() if not w.forget_old(now)]:
            del self._by_address[key]
        own = self._by_address.get(address_key(address))
        return max(self._total.wait_s(now), own.wait_s(now) if own else 0.0)

    def failed(self, address: str) -> None:
        now = self.clock()
        self._total.times.append(now)
        key = address_key(address)
        self._by_address.setdefault(key, _Window(self.per_address)).times.append(now)
