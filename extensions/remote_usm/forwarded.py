"""Which remote setpoint each local setpoint became, kept on disk (`run/<name>/forwarded.json`),
so a restarted remote_usm follows what it sent by id instead of sending it again.

Written once per forwarded setpoint (a few a minute at most: an SD card does not notice), whole
and atomically; entries are dropped a minute after their setpoint expired. A missing or broken
file is an empty map (logged): the request key then keeps a re-sent request from being applied
twice, as long as the remote core has not restarted.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from smx.files import write_atomic

__all__ = ["ForwardedMap"]

log = logging.getLogger(__name__)

KEEP_AFTER_EXPIRY_S = 60.0
REMEMBER = 10_000  # a setpoint lives 24 h at most; a few per minute at most


class ForwardedMap:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._map: dict[str, tuple[str, float]] = {}  # local id -> (remote id, expires_at)
        if path is not None and path.exists():
            try:
                raw = json.loads(path.read_bytes())
                self._map = {str(k): (str(v[0]), float(v[1])) for k, v in raw.items()}
            except (OSError, ValueError, TypeError, IndexError, AttributeError) as err:
                log.warning("%s unreadable (%s): starting with no forwarded setpoints", path, err)

    def get(self, local_id: str) -> str | None:
        entry = self._map.get(local_id)
        return entry[0] if entry else None

    def add(self, local_id: str, remote_id: str, expires_at: float) -> None:
        if self._map.get(local_id, ("",))[0] == remote_id:
            return
        now = time.time()
        self._map = {k: v for k, v in self._map.items() if v[1] + KEEP_AFTER_EXPIRY_S > now}
        while len(self._map) >= REMEMBER:
            self._map.pop(next(iter(self._map)))
        self._map[local_id] = (remote_id, expires_at)
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(self.path, json.dumps(self._map).encode(), 0o600)
        except OSError as err:
            log.warning("cannot keep %s (%s): a restart may not find what was sent", self.path, err)
