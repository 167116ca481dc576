"""lessag's settings: the `[agents.lessag.config]` table of site.toml, checked by the SDK
(`agent.settings(LessagConfig)`): unknown keys and bad values are one line naming the key.
Every key and its meaning: docs/LESSAG.md."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from smx import settings as checks
from smx.sdk import Seconds, setting

__all__ = [
    "DeviceConfig",
    "EssConfig",
    "EvConfig",
    "LessagConfig",
    "MqttConfig",
    "QueueConfig",
    "size_bytes",
]

# Device kinds of the S4G line protocol (docs/DATA-MODEL.md, "Device ids and kinds").
KIND_CODES = {
    "SMM": 0,
    "PV": 1,
    "EV": 2,
    "ESS": 3,
    "ASM": 4,
    "ER": 5,
    "AGGREGATOR": 6,
    "FRONIUS": 7,
}
Kind = Literal["SMM", "PV", "EV", "ESS", "ASM", "ER", "AGGREGATOR", "FRONIUS"]
Format = Literal["senml", "influx"]
_CP = re.compile(r"ev[0-9]{1,3}")


def _size(value: str) -> str | None:
    try:
        checks.parse_size(value)
    except checks.ConfigError as err:
        return str(err).removeprefix("size: ")
    return None


def size_bytes(value: str) -> int:
    return checks.parse_size(value)


def _charge_points(cps: list[str]) -> str | None:
    bad = [cp for cp in cps if not _CP.fullmatch(cp)]
    return f"charge points are named ev<N>, not {', '.join(bad)}" if bad else None


@dataclass(frozen=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = setting(1883, min=1, max=65535)
    protocol: Literal["3.1.1", "5"] = "5"
    client_id: str = ""  # default: <site>-<agent name>
    prefix: str = ""  # topic prefix; default: <site>/<agent name>
    qos: int = setting(1, min=0, max=1)
    keepalive: Seconds = setting(30.0, min=5, max=3600)
    session_expiry: Seconds = setting(86400.0, min=0, max=7 * 86400)  # MQTT 5 only
    # TLS: `ca` turns it on; `cert` and `key` present a client certificate.
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    username: str = ""
    password_file: Path | None = None  # secrets never in site.toml: a file holding the password
    backoff_min: Seconds = setting(1.0, min=0.1, max=60)
    backoff_max: Seconds = setting(60.0, min=1, max=3600)


@dataclass(frozen=True)
class QueueConfig:
    """Store and forward (docs/LESSAG.md): where, how much, how long, how fast."""

    path: Path | None = None  # default: run/<name>/queue.db under the site directory
    max_size: str = setting("64MB", check=_size)
    max_age: Seconds = setting(7 * 86400.0, min=60, max=365 * 86400)
    drain_rate: float = setting(500.0, min=1, max=100_000)  # backlog messages per second
    flush_every: Seconds = setting(2.0, min=0.1, max=60)  # SD cards: one write per this, at most
    max_inflight: int = setting(1000, min=1, max=65535)  # unacknowledged: beyond it, to disk
    ack_timeout: Seconds = setting(30.0, min=1, max=3600)


@dataclass(frozen=True)
class DeviceConfig:
    id: str  # device prefix as in the core: smm, ess, ev1, usm1/ess
    type: Kind = "SMM"
    points: list[str] = field(default_factory=lambda: ["*"])  # patterns after the prefix
    topic: str = ""  # default: the top-level `topic`
    measurement: str = ""  # line protocol measurement; default: the top-level `measurement`
    format: Format | None = None  # default: the top-level `format`


@dataclass(frozen=True)
class EssConfig:
    """Local ESS control from the GESSCon profile (docs/LESSAG.md, "Priorities")."""

    enabled: bool = True
    setpoint: str = "ess/P_set"  # W, > 0 charging
    battery_power: str = "ess/P"
    soc: str = "ess/SoC"
    pcc_power: str = "smm/P"
    pv_power: str = ""  # optional, reported only
    period: Seconds = setting(5.0, min=1, max=300)
    max_charge: float = setting(5000.0, min=0)  # W
    max_discharge: float = setting(5000.0, min=0)  # W, as a positive number
    soc_min: float = setting(10.0, min=0, max=100)  # % reserve kept under priority 1
    soc_max: float = setting(95.0, min=0, max=100)
    timezone: str = ""  # IANA name for "local midnight"; default: the system's
    max_message: str = setting("16KB", check=_size)


@dataclass(frozen=True)
class EvConfig:
    """EVChCon commands for these charge points only."""

    charge_points: list[str] = setting(default_factory=list, check=_charge_points)
    max_valid_for: Seconds = setting(86400.0, min=1, max=86400)


@dataclass(frozen=True)
class LessagConfig:
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    publish_every: Seconds = setting(10.0, min=0.05, max=86400)
    on_change: bool = False  # also publish a device when a point moves beyond its deadband
    deadband: dict[str, float] = field(default_factory=dict)  # point name -> absolute change
    min_gap: Seconds = setting(1.0, min=0, max=3600)  # between two on-change publishes
    format: Format = "senml"
    topic: str = "{prefix}/{device}/data"
    measurement: str = "{site}-{device}"
    other_qualities: Literal["mark", "omit"] = "mark"  # UNCERTAIN, BAD, STALE values
    devices: list[DeviceConfig] = field(default_factory=list)
    queue: QueueConfig = field(default_factory=QueueConfig)
    ess: EssConfig = field(default_factory=EssConfig)
    ev: EvConfig = field(default_factory=EvConfig)
