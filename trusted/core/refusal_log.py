"""Refusals in the core's log, bounded per (identity, reason) whatever a client does.

The first refusal of an (identity, reason) pair is logged at once, with its method and point.
Further refusals of that pair within the interval (10 s by default) are only counted; when the
interval ends they are logged as one summary line::

    identity=spiffe://s/untrusted/x reason=PERMISSION_NOT_GRANTED refused 1234 times in the
    last 10 s, methods: /smx.v1.PointService/GetPoints (1200), /smx.v1.PointService/... (34)

(the count excludes the refusal already logged on its own line). A pair that keeps being refused
gets one summary per interval; a pair quiet for a whole interval is forgotten, so its next
refusal is logged at once again. The number of pairs held is capped too (beyond it, refusals
are counted under identity ``*``). The audit log keeps its own budget (trusted.core.audit).

Summaries are emitted by a timer on the running event loop; without one (unit tests, tools)
`flush` does it, and `record` flushes a pair whose interval is over before counting into it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["RefusalLog"]

_log = logging.getLogger("trusted.core.auth")

MAX_PAIRS = 4096
MAX_METHODS = 16  # distinct methods counted per pair and interval (the rest as "other")
SHOWN_METHODS = 5  # methods named in a summary line


@dataclass(slots=True)
class _Window:
    end: float
    count: int = 0
    methods: dict[str, int] = field(default_factory=dict)


class RefusalLog:
    """Rate-limited refusal lines: at most one immediate line and one summary per interval
    for each (identity, reason)."""

    def __init__(
        self,
        interval: float = 10.0,
        *,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_pairs: int = MAX_PAIRS,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.interval = interval
        self._log = logger or _log
        self._clock = clock
        self._max_pairs = max_pairs
        self._windows: dict[tuple[str, str], _Window] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._windows)

    def record(self, identity: str, reason: str, method: str, point: str = "") -> None:
        """One refused call."""
        now = self._clock()
        identity = identity or "-"
        key = (identity, reason)
        win = self._windows.get(key)
        if win is not None and now >= win.end:
            self._close(key, win, now)
            win = self._windows.get(key)
        if win is None:
            if len(self._windows) >= self._max_pairs:
                key = ("*", reason)
                win = self._windows.get(key)
            if win is None:
                self._windows[key] = _Window(end=now + self.interval)
                self._log.warning(
                    "denied identity=%s method=%s point=%s reason=%s",
                    identity,
                    method,
                    point or "-",
                    reason,
                )
                self._arm(now)
                return
        win.count += 1
        if method in win.methods or len(win.methods) < MAX_METHODS:
            win.methods[method] = win.methods.get(method, 0) + 1
        else:
            win.methods["other"] = win.methods.get("other", 0) + 1
        self._arm(now)

    def flush(self, now: float | None = None) -> None:
        """Emit the summaries of every interval that has ended (called by the timer)."""
        now = self._clock() if now is None else now
        for key, win in list(self._windows.items()):
            if now >= win.end:
                self._close(key, win, now)

    def _close(self, key: tuple[str, str], win: _Window, now: float) -> None:
        if win.count == 0:
            del self._windows[key]
            return
        shown = sorted(win.methods.items(), key=lambda kv: (-kv[1], kv[0]))
        names = ", ".join(f"{m} ({n})" for m, n in shown[:SHOWN_METHODS])
        if len(shown) > SHOWN_METHODS:
            names += f", +{len(shown) - SHOWN_METHODS} more"
        self._log.warning(
            "identity=%s reason=%s refused %d times in the last %g s, methods: %s",
            key[0],
            key[1],
            win.count,
            self.interval,
            names,
        )
        # Still being refused: the next interval is counted too, not logged line by line.
        self._windows[key] = _Window(end=now + self.interval)

    def _arm(self, now: float) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        delay = max(0.05, min(w.end for w in self._windows.values()) - now)
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._clock()
        self.flush(now)
        if self._windows:
            self._arm(now)

    def close(self) -> None:
        """Emit pending summaries now and stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for key, win in list(self._windows.items()):
            if win.count:
                self._close(key, win, self._clock())
        self._windows.clear()
