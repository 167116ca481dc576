"""The proxy's own charging profiles: SetChargingProfile and ClearChargingProfile payloads for
OCPP 1.6 and 2.0.1.

One profile per connector, on the proxy's reserved stack level and profile id
(`profile_id_base` + connector), so it never replaces one of the SCADA's (a charger replaces a
profile with the same id, or the same stack level and purpose). Absolute, starting now, one
period, valid until the setpoint expires: the charger drops it on time even if the proxy is
gone; the proxy also clears it at expiry.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

__all__ = ["PURPOSES", "clear_profile", "set_profile"]

# The proxy's profile purpose (config, 1.6 names) as each version names it.
PURPOSES = {
    "1.6": {"ChargePointMaxProfile": "ChargePointMaxProfile", "TxProfile": "TxProfile"},
    "2.0.1": {"ChargePointMaxProfile": "ChargingStationMaxProfile", "TxProfile": "TxProfile"},
}


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def set_profile(
    version: str,
    *,
    profile_id: int,
    stack_level: int,
    purpose: str,  # "ChargePointMaxProfile" or "TxProfile" (1.6 names)
    connector: int,
    unit: str,  # "A" or "W"
    limit: float,
    valid_to: dt.datetime,
    transaction_id: str = "",
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    start = _iso(now or dt.datetime.now(dt.UTC))
    period = {"startPeriod": 0, "limit": limit}
    if version == "1.6":
        profile: dict[str, Any] = {
            "chargingProfileId": profile_id,
            "stackLevel": stack_level,
            "chargingProfilePurpose": purpose,
            "chargingProfileKind": "Absolute",
            "validTo": _iso(valid_to),
            "chargingSchedule": {
                "chargingRateUnit": unit,
                "startSchedule": start,
                "chargingSchedulePeriod": [period],
            },
        }
        if purpose == "TxProfile":
            profile["transactionId"] = int(transaction_id)
        target = 0 if purpose == "ChargePointMaxProfile" else connector
        return {"connectorId": target, "csChargingProfiles": profile}
    profile = {
        "id": profile_id,
        "stackLevel": stack_level,
        "chargingProfilePurpose": PURPOSES["2.0.1"][purpose],
        "chargingProfileKind": "Absolute",
        "validTo": _iso(valid_to),
        "chargingSchedule": [
            {
                "id": profile_id,
                "startSchedule": start,
                "chargingRateUnit": unit,
                "chargingSchedulePeriod": [period],
            }
        ],
    }
    if purpose == "TxProfile":
        profile["transactionId"] = transaction_id
    target = 0 if purpose == "ChargePointMaxProfile" else connector
    return {"evseId": target, "chargingProfile": profile}


def clear_profile(version: str, profile_id: int) -> dict[str, Any]:
    return {"id": profile_id} if version == "1.6" else {"chargingProfileId": profile_id}
