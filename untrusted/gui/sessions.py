"""Who is logged in: session tokens (the HttpOnly cookie), the one-use tickets that turn a
password checked over the WebSocket into a cookie, and the bound on failed logins."""

from __future__ import annotations

import collections
import secrets
import time
from collections.abc import Callable

__all__ = ["FailedLogins", "Tokens"]

COOKIE = "smx_gui_session"
TICKET_LIFETIME_S = 30.0
FAILURE_WINDOW_S = 60.0


class Tokens:
    """Random tokens valid for a while; at most `limit` at a time (the oldest go first)."""

    def __init__(self, lifetime: float, limit: int, clock: Callable[[], float] = time.monotonic):
        self.lifetime, self.limit, self.clock = lifetime, limit, clock
        self._expiry: dict[str, float] = {}

    def issue(self) -> str:
        self._forget_expired()
        while len(self._expiry) >= self.limit:
            del self._expiry[next(iter(self._expiry))]
        token = secrets.token_urlsafe(32)
        self._expiry[token] = self.clock() + self.lifetime
        return token

    def valid(self, token: str | None) -> bool:
        expiry = self._expiry.get(token or "")
        return expiry is not None and expiry > self.clock()

    def redeem(self, token: str | None) -> bool:
        """Valid once: a ticket that was used cannot be used again."""
        return self._expiry.pop(token or "", 0.0) > self.clock()

    def revoke(self, token: str | None) -> None:
        self._expiry.pop(token or "", None)

    def _forget_expired(self) -> None:
        now = self.clock()
        for token in [t for t, e in self._expiry.items() if e <= now]:
            del self._expiry[token]


class FailedLogins:
    """At most `limit` wrong passwords per minute for the whole GUI: a guesser from many
    addresses is as slow as from one (a real user waits a minute at worst)."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.clock = limit, clock
        self._times: collections.deque[float] = collections.deque()

    def wait_s(self) -> float:
        """Seconds until a login may be tried again (0: now)."""
        now = self.clock()
        while self._times and self._times[0] <= now - FAILURE_WINDOW_S:
            self._times.popleft()
        if len(self._times) < self.limit:
            return 0.0
        return self._times[0] + FAILURE_WINDOW_S - now

    def failed(self) -> None:
        self._times.append(self.clock())
