"""The smm extension: every meter of the site's metering (the SMM at the point of common
coupling and the sub-meters) read into the core, each under its own device id.

Config (the `[extensions.smm.config]` table of site.toml; list each device id in the
extension's `devices` so the policy lets it write them):

    [[extensions.smm.config.modbus]]      # Modbus RTU / TCP meters: see modbus_device.py
    device = "pv"
    map = "eastron_sdm630"
    unit = 1
    host = "127.0.0.1"
    port = 5020

    [[extensions.smm.config.iec62056]]    # IEC 62056-21 meters: see iec_device.py
    device = "smm"
    port = "/dev/ttyUSB0"
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from extensions.sdk import Extension, SetupError, main_of
from extensions.sdk.protocols.modbus_link import LinkPool

from .modbus_device import MeterConfigError, build_meters

log = logging.getLogger("smm")

CONFIG_KEYS = {"modbus", "iec62056"}


def setup(ext: Extension) -> None:
    config = dict(ext.config)
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise SetupError(
            f"smm config: unknown key(s) {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}"
        )
    # Relative paths (user register maps) are relative to the site directory.
    base = Path(os.environ.get("SMX_CONFIG", ".")).resolve().parent.parent
    devices: list[Any] = []
    try:
        devices += build_meters(config.get("modbus", []), LinkPool(), base_dir=base)
        if config.get("iec62056"):
            from .iec_device import IecConfigError, IecMeterDevice

            try:
                devices += [IecMeterDevice(entry) for entry in config["iec62056"]]
            except IecConfigError as err:
                raise SetupError(f"smm config: iec62056: {err}") from err
    except (MeterConfigError, ValueError) as err:
        raise SetupError(f"smm config: {err}") from err
    owned = set(ext.env.devices)
    for device in devices:
        if device.meter.device not in owned:
            raise SetupError(
                f"smm config: meter device {device.meter.device!r} is not in this extension's "
                f"devices {sorted(owned)} (add it to `devices` in site.toml)"
            )
        ext.declare(device.specs())
        ext.add_device(device)
    log.info("%d meters configured", len(devices))


if __name__ == "__main__":
    main_of(setup)
