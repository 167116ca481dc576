"""Refused handshakes: password guessing slowed per peer and per charge point id, and the
refusals logged without flooding the log (docs/OCPP.md, "The handshake").

Each peer address and each charge point id has a count of failed attempts. From the
`FREE`-th on, a failure blocks the key for a delay that doubles (`first_delay` up to
`max_delay`); an attempt from a blocked peer, or for a blocked id, is refused like a wrong
password without its credentials being checked, so guesses cost time whatever the speed of
the attacker. A peer that authenticated as an id before is not held by that id's block
(another peer cannot lock a charger out), only by its own. A success clears the peer's and
the id's counts; counts are forgotten after `forget` seconds without a failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["RefusalLog", "Throttle"]

log = logging.getLogger("extensions.ocpp_proxy.server")

PEERS = 4096  # peer addresses remembered (the oldest forgotten first)


@dataclass
class _Key:
    failures: int = 0
    blocked_until: float = 0.0
    last: float = 0.0


@dataclass
class Throttle:
    free: int = 5  # failures before the first block
    first_delay: float = 1.0
    max_delay: float = 60.0
    forget: float = 900.0
    peers: OrderedDict[str, _Key] = field(default_factory=OrderedDict)
    ids: dict[str, _Key] = field(default_factory=dict)
    good: dict[str, OrderedDict[str, None]] = field(default_factory=dict)  # id -> peers
    checked: int = 0  # credentials checked (tests: guesses that were really tried)

    def blocked(self, peer: str, cp_id: str) -> bool:
        """Refuse without checking: the peer, or the id (for a peer it never saw), is blocked."""
        now = time.monotonic()
        if self._get(self.peers, peer, now).blocked_until > now:
            return True
        if peer in self.good.get(cp_id, ()):
            return False
        return self._get(self.ids, cp_id, now).blocked_until > now

    def failed(self, peer: str, cp_id: str | None) -> None:
        now = time.monotonic()
        self._fail(self.peers, peer, now)
        self.peers.move_to_end(peer)
        while len(self.peers) > PEERS:
            self.peers.popitem(last=False)
        if cp_id is not None:
            self._fail(self.ids, cp_id, now)

    def succeeded(self, peer: str, cp_id: str) -> None:
        self.peers.pop(peer, None)
        self.ids.pop(cp_id, None)
        good = self.good.setdefault(cp_id, OrderedDict())
        good[peer] = None
        good.move_to_end(peer)
        while len(good) > 4:
            good.popitem(last=False)

    def _get(self, table: dict[str, _Key], key: str, now: float) -> _Key:
        entry = table.get(key)
        if entry is None or now - entry.last > self.forget:
            return _Key()
        return entry

    def _fail(self, table: dict[str, _Key], key: str, now: float) -> None:
        entry = table[key] = self._get(table, key, now)
        entry.failures += 1
        entry.last = now
        if entry.failures >= self.free:
            delay = self.first_delay * 2 ** min(entry.failures - self.free, 16)
            entry.blocked_until = now + min(delay, self.max_delay)


@dataclass
class RefusalLog:
    """The first refusal is one WARNING line; those that follow within `interval` are counted
    and summed up in one line `interval` seconds later."""

    interval: float = 60.0
    suppressed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    _timer: asyncio.TimerHandle | None = None

    def refused(self, line: str, reason: str) -> None:
        if self._timer is None:
            log.warning("%s", line)
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._flush)
            return
        self.suppressed += 1
        if reason in self.reasons or len(self.reasons) < 8:
            self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def _flush(self) -> None:
        self._timer = None
        if not self.suppressed:
            return
        detail = ", ".join(f"{n} {why}" for why, n in self.reasons.items())
        log.warning(
            "%d more charger connections refused in the last %g s (%s)",
            self.suppressed,
            self.interval,
            detail,
        )
        self.suppressed = 0
        self.reasons = {}
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._flush)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
