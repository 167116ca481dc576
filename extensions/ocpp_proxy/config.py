"""The ocpp_proxy config table (`[extensions.ocpp.config]` of site.toml) as a typed schema:
the listener for the charge points, and per charge point its credentials, its SCADA (upstream)
and the device ids of its connectors (docs/OCPP.md).

[extensions.ocpp.config]
port = 9000                       # chargers connect to ws://<host>:9000/<charge point id>
[[extensions.ocpp.config.charge_points]]
id = "CP001"
upstream = "wss://scada.example/ocpp"   # the proxy connects to <upstream>/CP001
connectors = ["ev1"]                    # connector 1 is ev1, connector 2 the next ...
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from extensions.sdk import Seconds, setting
from smx.names import DEVICE_ID

__all__ = ["ChargePointConfig", "OcppConfig", "VERSIONS"]

# WebSocket subprotocol -> the `ocpp` library's version name (its schema directory).
VERSIONS = {"ocpp1.6": "1.6", "ocpp2.0.1": "2.0.1"}
_DEVICE = re.compile(DEVICE_ID)
# OCPP-J: the charge point id is the last path segment; printable, no '/', at most 48 chars.
_CP_ID = re.compile(r"[A-Za-z0-9._:*+|@-]{1,48}")


def _cp_id(value: str) -> str | None:
    return None if _CP_ID.fullmatch(value) else f"{value!r} is not a charge point id"


def _url(value: str) -> str | None:
    if not value:
        return None
    if not re.match(r"wss?://[^/]", value):
        return f"{value!r} is not a ws:// or wss:// URL"
    return None


def _devices(values: list[str]) -> str | None:
    if not values:
        return "must list the device id of connector 1 at least"
    bad = [v for v in values if not _DEVICE.fullmatch(v)]
    return f"{bad[0]!r} is not a device id ({DEVICE_ID})" if bad else None


@dataclass(frozen=True)
class ChargePointConfig:
    id: str = setting(check=_cp_id)
    connectors: list[str] = setting(check=_devices)  # device id of connector 1, 2, ...
    # The SCADA/CSMS base URL: the proxy connects to <upstream>/<id>; empty: no SCADA (local
    # control only, every call answered by the proxy where it can).
    upstream: str = setting("", check=_url)
    upstream_username: str = ""  # default: the charge point id (OCPP Basic auth)
    upstream_password: str = ""  # empty: no Basic auth towards the SCADA
    upstream_ca: Path | None = None  # wss: trust this CA (default: the system's)
    upstream_cert: Path | None = None  # wss with a client certificate (profile 3)
    upstream_key: Path | None = None
    # OCPP security profile the charger must use: 0 none, 1 Basic auth, 2 TLS + Basic auth,
    # 3 TLS + client certificate whose CN is the charge point id.
    security_profile: int = setting(0, min=0, max=3)
    password: str = ""  # the charger's Basic auth password (profiles 1 and 2)
    # How a setpoint reaches the charger: a ChargePointMaxProfile (whole charge point, one
    # connector only) or a TxProfile on the connector's running transaction.
    profile: Literal["ChargePointMaxProfile", "TxProfile"] = "ChargePointMaxProfile"
    # A charger that offers no subprotocol is taken to speak this one (lenient mode only).
    default_version: Literal["ocpp1.6", "ocpp2.0.1"] = "ocpp1.6"


def _profile_ids(value: int) -> str | None:
    return None if value > 0 else "must be positive"


@dataclass(frozen=True)
class OcppConfig:
    host: str = "127.0.0.1"
    port: int = setting(9000, min=0, max=65535)  # 0: any free port (tests)
    # wss: the server certificate and key (security profiles 2 and 3)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None  # CA of the chargers' certificates (profile 3)
    charge_points: list[ChargePointConfig] = field(default_factory=list)
    # Accept a charger that offers no WebSocket subprotocol (it gets its default_version).
    lenient_subprotocol: bool = False
    # A frame that fails the OCPP schemas: "forward" it anyway, or "refuse" it (a CALL is
    # answered with a CALLERROR, anything else dropped). Always logged.
    invalid_frames: Literal["forward", "refuse"] = "forward"
    max_frame: int = setting(262_144, min=1024, max=16 * 2**20)  # bytes; larger: close 1009
    # Our own calls to chargers (SetChargingProfile, ClearChargingProfile)
    answer_timeout: Seconds = setting(5.0, min=0.1, max=60)  # then the setpoint is UNCONFIRMED
    call_timeout: Seconds = setting(30.0, min=1, max=600)  # an unanswered call is given up
    stack_level: int = setting(8, min=0, max=1000)  # reserved for the proxy's profiles
    profile_id_base: int = setting(917_000, check=_profile_ids)  # ours: base + connector
    # Upstream outage: a call the proxy cannot answer itself waits this long for the SCADA,
    # then the charger link is closed so that the charger's own queue keeps it.
    hold_timeout: Seconds = setting(15.0, min=0.1, max=300)
    reconnect_max: Seconds = setting(10.0, min=0.05, max=600)  # upstream back-off ceiling
    queue_dir: Path | None = None  # default: <site>/run/<name>/ocpp-queue
    # The outage store's bound per charge point (and OCPP version): beyond it a call is held,
    # not answered, so the charger's own offline queue keeps it.
    store_max_bytes: int = setting(8 * 2**20, min=65_536, max=2**30)
    store_max_frames: int = setting(20_000, min=10, max=1_000_000)
    # Frames waiting per direction of one charge point: a SCADA CALL beyond it is answered
    # with a CALLERROR, any other frame beyond it closes the connection that sent it.
    queue_limit: int = setting(100, min=10, max=10_000)
