"""Energy indexes integrated from P(t) for a device that has no counter of its own
(docs/DATA-MODEL.md): `Ap` from the power drawn (P > 0), `Am` from the power delivered (P < 0),
by the trapezoidal rule over each sample interval, split where P crosses zero. Such values are
DERIVED. The totals are kept in a small JSON file so that they survive restarts; it is written
at most every `save_every` seconds (an SD card wears with every write) and at stop, so a crash
loses at most that much integration. A gap longer than `max_gap` (the device was away) is not
integrated: nobody knows what flowed.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from smx.files import write_atomic

from .values import number

__all__ = ["EnergyIntegrator", "split_trapezoid"]

log = logging.getLogger(__name__)
WS_PER_KWH = 3_600_000.0


def split_trapezoid(p0: float, p1: float, dt: float) -> tuple[float, float]:
    """(energy drawn, energy delivered) in joules over `dt` seconds of power going linearly
    from `p0` to `p1` W; both >= 0."""
    if p0 >= 0 and p1 >= 0:
        return (p0 + p1) / 2 * dt, 0.0
    if p0 <= 0 and p1 <= 0:
        return 0.0, -(p0 + p1) / 2 * dt
    t_zero = p0 / (p0 - p1) * dt  # where the line crosses zero
    first, second = p0 / 2 * t_zero, p1 / 2 * (dt - t_zero)
    return (first, -second) if p0 > 0 else (second, -first)


class EnergyIntegrator:
    """Ap/Am (kWh) of the points named in `state`, integrated from samples of P."""

    def __init__(self, path: Path | None, *, max_gap: float = 300.0, save_every: float = 60.0):
        self.path = path
        self.max_gap = max_gap
        self.save_every = save_every
        self.totals: dict[str, float] = {}
        self._last: tuple[float, float] | None = None  # (t, P)
        self._saved_at = 0.0
        self._dirty = False
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            log.warning("energy state %s unreadable (%s): integrating from 0", path, err)
            return
        if isinstance(data, dict):  # number(): a 400-digit integer is no total, not a crash
            totals = {k: number(v) for k, v in data.items()}
            self.totals = {k: v for k, v in totals.items() if v is not None and v >= 0}

    def add(self, power: float, t: float, imported: str, exported: str) -> dict[str, float]:
        """A sample of P at time `t` (s); returns the totals of both indexes (kWh)."""
        self.totals.setdefault(imported, 0.0)
        self.totals.setdefault(exported, 0.0)
        if self._last is not None:
            t0, p0 = self._last
            dt = t - t0
            if 0 < dt <= self.max_gap:
                drawn, delivered = split_trapezoid(p0, power, dt)
                self.totals[imported] += drawn / WS_PER_KWH
                self.totals[exported] += delivered / WS_PER_KWH
                self._dirty = True
        self._last = (t, power)
        if self._dirty and time.monotonic() - self._saved_at >= self.save_every:
            self.save()
        return {imported: self.totals[imported], exported: self.totals[exported]}

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(self.path, json.dumps(self.totals).encode(), 0o600)
        except OSError as err:
            log.warning("cannot save the energy state to %s: %s", self.path, err)
            return
        self._saved_at = time.monotonic()
        self._dirty = False
