"""fronius: Fronius hybrid inverters (GEN24 Plus, Symo Hybrid) with their battery and Smart
Meter, over the Solar API v1 (JSON over HTTP) and Modbus TCP SunSpec; battery control through
SunSpec model 124. docs/FRONIUS.md has the configuration, the points and their signs.

    [extensions.fronius]
    module = "extensions.fronius"
    devices = ["fronius", "fronius_meter"]
    [extensions.fronius.config]
    host = "192.0.2.20"
"""

from __future__ import annotations

import logging

from extensions.sdk import Extension, SetpointRequest, SetupError
from extensions.sdk.protocols.modbus_link import LinkConfig, LinkPool

from .config import FroniusConfig
from .control import Result, StorageControl
from .device import FroniusDevice
from .energy import EnergyIntegrator
from .solar_api import SolarApi
from .solar_source import SolarSource
from .sunspec_source import SunSpecSource

__all__ = ["FroniusConfig", "setup"]

log = logging.getLogger("fronius")


def setup(ext: Extension) -> None:
    cfg = ext.settings(FroniusConfig)
    if not (cfg.solar_api or cfg.modbus):
        raise SetupError(f"{ext.config_key}: solar_api and modbus are both false: read nothing?")
    if cfg.control and not cfg.modbus:
        raise SetupError(
            f"{ext.config_key}.control: battery control needs modbus = true (SunSpec model 124)"
        )
    name = ext.device_ids[0]
    meter = cfg.meter_device if cfg.meter_device in ext.device_ids[1:] else None
    sunspec = solar = None
    if cfg.modbus:
        link = LinkPool().get(
            LinkConfig(host=cfg.host, port=cfg.modbus_port, response_timeout=cfg.response_timeout)
        )
        sunspec = SunSpecSource(link, cfg.unit, cfg.meter_unit)
    if cfg.solar_api:
        api = SolarApi(
            cfg.host, cfg.http_port, timeout=cfg.http_timeout, min_gap=cfg.min_request_gap
        )
        solar = SolarSource(api, cfg.inverter_id)
    # The integral of P(t) lives in the process's own directory (run/<name>/, private under
    # `smx run` as root; the working directory there), so it survives restarts.
    state = ext.state_dir / "energy.json"
    # A poll: discovery or ~12 Modbus reads, and 5 Solar API requests two at a time, paced.
    timeout = 3 * cfg.http_timeout + cfg.min_request_gap + 14 * cfg.response_timeout + 1
    device = FroniusDevice(
        name,
        sunspec=sunspec,
        solar=solar,
        energy=EnergyIntegrator(state, max_gap=max(300.0, 10 * cfg.interval)),
        meter_name=meter,
        interval=cfg.interval,
        timeout=timeout,
        max_backoff=cfg.max_backoff,
        health={
            source: ext.link_health(f"{name}.{source}")
            for source, on in (("modbus", cfg.modbus), ("solar_api", cfg.solar_api))
            if on
        },
    )
    ext.add_device(device)
    if sunspec is not None and cfg.control:
        control = StorageControl(sunspec, cfg.revert_after)

        async def fall_back(req: SetpointRequest) -> None:
            await control.autonomous()

        @ext.on_setpoint(f"{name}/P_ESS_set", on_expire=fall_back, timeout=5.0)
        async def set_power(req: SetpointRequest) -> Result:
            async def report(result: Result) -> None:
                # A keep-alive found the outcome changed (reserve reached, battery full, the
                # limit no longer binds, the inverter silent or back, an unknown outcome
                # settled): the status must not say less than the device does.
                await ext.setpoints.report_outcome(req, result)

            return await control.apply(float(req.value), req.expires_at, report)

        ext.background(control.keep_alive, "battery-keep-alive")
    log.info(
        "%s at %s: solar_api=%s modbus=%s control=%s meter=%s",
        name,
        cfg.host,
        cfg.solar_api,
        cfg.modbus,
        cfg.control,
        meter,
    )
