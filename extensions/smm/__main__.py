"""The smm extension: every meter of the site's metering (the SMM at the point of common
coupling and the sub-meters) read into the core, each under its own device id.

Config (the `[extensions.smm.config]` table of site.toml, every key in config.py; list each
device id in the extension's `devices` so the policy lets it write them):

    [[extensions.smm.config.modbus]]      # Modbus RTU / TCP meters: ModbusMeterConfig
    device = "pv"
    map = "eastron_sdm630"
    unit = 1
    host = "127.0.0.1"
    port = 5020

    [[extensions.smm.config.iec62056]]    # IEC 62056-21 meters: IecMeterConfig
    device = "smm"
    port = "/dev/ttyUSB0"
"""

from __future__ import annotations

import logging
from typing import Any

from extensions.sdk import Extension, SetupError, main_of
from extensions.sdk.protocols.modbus_link import LinkPool

from .config import SmmConfig
from .modbus_device import build_meters

__all__ = ["SmmConfig", "setup"]

log = logging.getLogger("smm")


def setup(ext: Extension) -> None:
    config = ext.settings(SmmConfig)
    check_devices(config, ext.device_ids, ext.config_key)
    # Relative paths (user register maps) are relative to the site directory.
    devices: list[Any] = build_meters(
        config.modbus, LinkPool(), base_dir=ext.site_dir, where=f"{ext.config_key}.modbus"
    )
    if config.iec62056:
        from .iec_device import IecMeterDevice

        devices += [IecMeterDevice(entry) for entry in config.iec62056]
    for device in devices:
        ext.declare(device.specs())
        ext.add_device(device)
    log.info("%d meters configured", len(devices))


def check_devices(config: SmmConfig, owned: tuple[str, ...], where: str) -> None:
    """Every meter publishes under a device id of this extension, one meter per id; SetupError
    naming the entry's `device` key otherwise."""
    used: dict[str, str] = {}
    entries = [(f"modbus[{i}]", e.device) for i, e in enumerate(config.modbus)]
    entries += [(f"iec62056[{i}]", e.device) for i, e in enumerate(config.iec62056)]
    for entry, device in entries:
        key = f"{where}.{entry}.device"
        if device not in owned:
            raise SetupError(
                f"{key}: {device!r} is not one of this extension's devices {sorted(owned)} "
                "(add it to `devices` in site.toml)"
            )
        if device in used:
            raise SetupError(f"{key}: {device!r} is already the device of {used[device]}")
        used[device] = entry


if __name__ == "__main__":
    main_of(setup)
