"""GESSCon's recommended battery profile: the message (docs/lessag-gesscon-profile.schema.json),
its validation, and the current and next day's profile kept on disk across restarts, rolled
over at local midnight. docs/LESSAG.md, "GESSCon"."""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from smx.files import write_atomic

__all__ = ["DayProfile", "Profile", "ProfileError", "ProfileStore", "parse_profile"]

HOURS = 24
MAX_POWER_W = 1_000_000.0  # 1 MW: beyond any battery a USM drives; a typo, not a plan
PRIORITIES = (0, 1, 2)
_KEYS = {
    "id",
    "Date_crt",
    "Date_next",
    "Period",
    "P_bat_DC_set_now",
    "Priority_set_now",
    "P_bat_DC_set_next",
    "Priority_set_next",
}


class ProfileError(ValueError):
    """A message that is not a valid profile; `field` names where (JSON path style)."""

    def __init__(self, field: str, problem: str, msg_id: str | None = None) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem, self.msg_id = field, problem, msg_id


@dataclass(frozen=True)
class DayProfile:
    date: str  # YYYY-MM-DD, local
    power: list[float]  # W per hour, > 0 charging (load reference)
    priority: list[int]


@dataclass(frozen=True)
class Profile:
    id: str | None
    today: DayProfile
    tomorrow: DayProfile | None


def _date(msg: dict[str, Any], key: str) -> dt.date:
    if key not in msg:
        raise ProfileError(key, "missing: a date YYYY-MM-DD is required")
    value = msg[key]
    if not isinstance(value, str):
        raise ProfileError(key, f"must be a date YYYY-MM-DD, got {value!r}")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ProfileError(key, f"{value!r} is not a date YYYY-MM-DD") from None


def _hours(msg: dict[str, Any], key: str, kind: type) -> list[Any]:
    if key not in msg:
        raise ProfileError(key, f"missing: an array of {HOURS} values (one per hour) is required")
    values = msg[key]
    if not isinstance(values, list) or len(values) != HOURS:
        raise ProfileError(key, f"required, an array of {HOURS} values (one per hour)")
    out: list[Any] = []
    for i, v in enumerate(values):
        where = f"{key}[{i}]"
        if kind is int:
            if isinstance(v, bool) or not isinstance(v, int) or v not in PRIORITIES:
                raise ProfileError(where, f"must be a priority 0, 1 or 2, got {v!r}")
            out.append(v)
        else:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ProfileError(where, f"must be a number of watts, got {v!r}")
            if abs(v) > MAX_POWER_W:
                raise ProfileError(where, f"{v} W is out of range (at most {MAX_POWER_W:g} W)")
            out.append(float(v))
    return out


def parse_profile(payload: bytes, today: dt.date, max_bytes: int) -> Profile:
    """The profile of a GESSCon message received on `today` (local); ProfileError otherwise."""
    if len(payload) > max_bytes:
        raise ProfileError("$", f"message of {len(payload)} bytes is over {max_bytes}")
    try:
        msg = json.loads(payload)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        why = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise ProfileError("$", f"not JSON: {why}") from None
    if not isinstance(msg, dict):
        raise ProfileError("$", "must be a JSON object")
    msg_id = msg.get("id")
    if msg_id is not None and (not isinstance(msg_id, str) or len(msg_id) > 64):
        raise ProfileError("id", "must be a string of at most 64 characters")
    try:
        for key in msg:
            if key not in _KEYS:
                raise ProfileError(key, "unknown field")
        if "Period" not in msg:
            raise ProfileError("Period", "missing: must be 60 (minutes per value)")
        if msg["Period"] != 60 or isinstance(msg["Period"], bool):
            raise ProfileError(
                "Period", f"must be 60 (minutes per value), got {msg.get('Period')!r}"
            )
        crt, nxt = _date(msg, "Date_crt"), _date(msg, "Date_next")
        if crt != today:
            raise ProfileError("Date_crt", f"{crt} is not today ({today}, local time)")
        if nxt != crt + dt.timedelta(days=1):
            raise ProfileError("Date_next", f"{nxt} is not the day after Date_crt ({crt})")
        now = DayProfile(
            crt.isoformat(),
            _hours(msg, "P_bat_DC_set_now", float),
            _hours(msg, "Priority_set_now", int),
        )
        after = DayProfile(
            nxt.isoformat(),
            _hours(msg, "P_bat_DC_set_next", float),
            _hours(msg, "Priority_set_next", int),
        )
    except ProfileError as err:
        err.msg_id = msg_id
        raise
    return Profile(msg_id, now, after)


class ProfileStore:
    """The profile in force, on disk (`profile.json`, written atomically) so a restarted agent
    goes on with it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.profile: Profile | None = None
        try:
            raw = json.loads(path.read_text())
            self.profile = Profile(
                raw["id"],
                DayProfile(**raw["today"]),
                DayProfile(**raw["tomorrow"]) if raw["tomorrow"] else None,
            )
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, RecursionError) as err:
            raise ValueError(f"{path}: not a profile this agent wrote ({err}); delete it") from err

    def replace(self, profile: Profile) -> None:
        self.profile = profile
        self._save()

    def day(self, today: dt.date) -> DayProfile | None:
        """Today's profile, rolling over to the next one at local midnight; None when the
        profile in hand is for other days."""
        p = self.profile
        if p is None:
            return None
        if p.today.date == today.isoformat():
            return p.today
        if p.tomorrow is not None and p.tomorrow.date == today.isoformat():
            self.profile = Profile(p.id, p.tomorrow, None)  # midnight passed
            self._save()
            return self.profile.today
        return None

    def _save(self) -> None:
        p = self.profile
        assert p is not None
        data = {
            "id": p.id,
            "today": asdict(p.today),
            "tomorrow": asdict(p.tomorrow) if p.tomorrow else None,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(data).encode(), 0o600)
