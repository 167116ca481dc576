"""Who is logged in: session tokens (the HttpOnly cookie), the one-use tickets that turn a
password checked over the WebSocket into a cookie."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

__all__ = ["Tokens"]

COOKIE = "smx_gui_session"
TICKET_LIFETIME_S = 30.0


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
