"""The samples that are in the segment file but not yet compacted into chunks, kept in memory
per point so that reads see them without parsing the file.

The writer thread adds each flushed record and drains the lot at compaction; readers (worker
threads) copy one point's arrays. A lock makes each of these atomic with respect to the others.
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from trusted.core.history_chunk import Columns, Value
from trusted.core.history_segment import Record

__all__ = ["Recent", "settle"]


@dataclass(slots=True)
class _Series:
    ts: array = field(default_factory=lambda: array("q"))
    values: list[Value] = field(default_factory=list)
    qs: array = field(default_factory=lambda: array("i"))


def settle(ts: array, values: list[Value], qs: array) -> Columns:
    """Sort by ts, keeping the last write of each ts (as INSERT OR REPLACE did)."""
    if all(a < b for a, b in zip(ts, ts[1:], strict=False)):
        return ts, values, qs
    last = {t: i for i, t in enumerate(ts)}
    order = [last[t] for t in sorted(last)]
    return (
        array("q", [ts[i] for i in order]),
        [values[i] for i in order],
        array("i", [qs[i] for i in order]),
    )


class Recent:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[str, _Series] = {}
        self.count = 0
        self.last: dict[str, bytes] = {}
        self.meta: dict[str, bytes] = {}

    def add(self, rec: Record) -> None:
        with self._lock:
            series = self._series
            for name, ts, v, q in rec.samples:
                s = series.get(name)
                if s is None:
                    s = series[name] = _Series()
                s.ts.append(ts)
                s.values.append(v)
                s.qs.append(q)
            self.count += len(rec.samples)
            self.last.update(rec.last)
            self.meta.update(rec.meta)

    def columns(self, name: str) -> Columns | None:
        """One point's samples, sorted and deduplicated (a copy)."""
        with self._lock:
            s = self._series.get(name)
            if s is None:
                return None
            ts, values, qs = array("q", s.ts), list(s.values), array("i", s.qs)
        return settle(ts, values, qs)

    def has_text(self, name: str, lo: int, hi: int) -> bool:
        cols = self.columns(name)
        if cols is None:
            return False
        ts, values, _ = cols
        return any(type(v) is str for t, v in zip(ts, values, strict=True) if lo <= t < hi)

    def older_than(self, cutoff: int, keep: Callable[[str], bool]) -> bool:
        with self._lock:
            return any(s.ts and min(s.ts) < cutoff for n, s in self._series.items() if not keep(n))

    def drain(self) -> tuple[dict[str, Columns], dict[str, bytes], dict[str, bytes]]:
        """Everything, for compaction; the store stays as it is until `clear`."""
        with self._lock:
            items = [
                (n, array("q", s.ts), list(s.values), array("i", s.qs))
                for n, s in self._series.items()
            ]
            last, meta = dict(self.last), dict(self.meta)
        return {n: settle(ts, vs, qs) for n, ts, vs, qs in items}, last, meta

    def clear(self) -> None:
        with self._lock:
            self._series = {}
            self.count = 0
            self.last = {}
            self.meta = {}
