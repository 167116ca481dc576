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
from dataclasses import dataclass, field
from typing import Any

from extensions.sdk import Extension, SetupError, main_of
from extensions.sdk.protocols.modbus_link import LinkPool

from .modbus_device import MeterConfigError, build_meters

log = logging.getLogger("smm")


@dataclass(frozen=True)
class SmmConfig:
    """The smm config table: one entry per meter, checked by its reader (modbus_device.py,
    iec_device.py)."""

    modbus: list[dict[str, Any]] = field(default_factory=list)
    iec62056: list[dict[str, Any]] = field(default_factory=list)


def setup(ext: Extension) -> None:
    config = ext.settings(SmmConfig)
    devices: list[Any] = []
    try:
        # Relative paths (user register maps) are relative to the site directory.
        devices += build_meters(config.modbus, LinkPool(), base_dir=ext.site_dir)
        if config.iec62056:
            from .iec_device import IecConfigError, IecMeterDevice

            try:
                devices += [IecMeterDevice(entry) for entry in config.iec62056]
            except IecConfigError as err:
                raise SetupError(f"{ext.config_key}.iec62056: {err}") from err
    except (MeterConfigError, ValueError) as err:
        raise SetupError(f"{ext.config_key}: {err}") from err
    owned = set(ext.device_ids)
    for device in devices:
        if device.meter.device not in owned:
            raise SetupError(
                f"{ext.config_key}: meter device {device.meter.device!r} is not in this "
                f"extension's devices {sorted(owned)} (add it to `devices` in site.toml)"
            )
        ext.declare(device.specs())
        ext.add_device(device)
    log.info("%d meters configured", len(devices))


if __name__ == "__main__":
    main_of(setup)
