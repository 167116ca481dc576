"""The fronius config table (`[extensions.fronius.config]` of site.toml) as a typed schema:
every key, its default and its range. `ext.settings(FroniusConfig)` checks it; an unknown or
mistyped key stops the extension with one line naming it (docs/FRONIUS.md)."""

from __future__ import annotations

from dataclasses import dataclass

from extensions.sdk import Seconds, setting

__all__ = ["FroniusConfig"]


def _not_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


@dataclass(frozen=True)
class FroniusConfig:
    host: str = setting(check=_not_empty)  # the inverter (GEN24) or Datamanager, required
    interval: Seconds = setting(5.0, min=0.05, max=3600)  # between polls
    # Solar API v1 (JSON over HTTP)
    solar_api: bool = True
    http_port: int = setting(80, min=1, max=65535)
    http_timeout: Seconds = setting(5.0, min=0.05, max=60)
    # Fronius asks for no more than one realtime request of a device every 4 s
    min_request_gap: Seconds = setting(4.0, min=0, max=3600)
    inverter_id: int = setting(1, min=0, max=255)  # Solar API DeviceId of the inverter
    # Modbus TCP SunSpec (read, and battery control through model 124)
    modbus: bool = True
    modbus_port: int = setting(502, min=1, max=65535)
    unit: int = setting(1, min=1, max=247)  # the inverter's unit id
    meter_unit: int = setting(200, min=0, max=247)  # Smart Meter: 200 (GEN24), 240; 0: none
    response_timeout: Seconds = setting(1.0, min=0.01, max=60)
    # battery control
    control: bool = True
    revert_after: Seconds = setting(60.0, min=2, max=65534)  # InOutWRte_RvrtTms
    # the Smart Meter's device id (must be one of the extension's `devices` to be published)
    meter_device: str = "fronius_meter"
    max_backoff: Seconds = setting(60.0, min=0.01, max=86400)
