"""energy_router: the S4G Energy Router's two controllers (inverter, battery+PV) over their
serial lines. docs/ENERGY-ROUTER.md has the protocol, the points, their signs and the config.

    [extensions.er]
    module = "extensions.energy_router"
    os_groups = ["dialout"]
    [extensions.er.config]
    inverter_port = "/dev/ttyACM0"
    battery_port = "/dev/ttyACM1"
"""

from __future__ import annotations

import logging
import math

from extensions.sdk import CallFailed, CoreUnavailable, Extension

from . import messages as m
from .config import ErConfig
from .control import ModeSetpoint, PowerSetpoint, register
from .frames import Frame
from .link import ControllerLink, LinkTiming
from .messages import BATTERY, INVERTER
from .points import ErPoints

__all__ = ["ErConfig", "setup"]

log = logging.getLogger("energy_router")

CORE_WAIT = 5.0  # s the battery handshake waits for the core, for the last SoC it holds


def setup(ext: Extension) -> None:
    cfg = ext.settings(ErConfig)
    device = ext.device_ids[0]
    points = ErPoints(
        device,
        cfg.period,
        battery_sign=1.0 if cfg.battery_positive == "charge" else -1.0,
        inverter_sign=1.0 if cfg.inverter_positive == "import" else -1.0,
    )
    ext.declare(points.specs())
    timing = LinkTiming(
        baudrate=cfg.baudrate,
        keepalive=cfg.keepalive,
        link_timeout=cfg.link_timeout,
        startup_pause=cfg.startup_pause,
        answer_timeout=cfg.answer_timeout,
        confirm_timeout=cfg.confirm_timeout,
    )
    soc_point = points.name("SoC")

    async def initial_soc() -> float:
        # The controller keeps no SoC across power cycles, and takes the one of every ID
        # request: the last one the core holds is a better guess than a constant (and after a
        # restart of this process, the controller's own). Worth a short wait for the core.
        if not cfg.soc_from_core:
            return cfg.initial_soc
        try:
            await ext.client.wait_connected(CORE_WAIT)
            held = (await ext.client.get_points([soc_point])).get(soc_point)
        except (CallFailed, CoreUnavailable, TimeoutError) as err:
            log.info("last SoC not readable (%s): %g %% from the config", err, cfg.initial_soc)
            return cfg.initial_soc
        value = held.value if held is not None else None
        if isinstance(value, float) and math.isfinite(value) and 0 <= value <= 100:
            log.info("initial SoC %g %%: the last the core holds", value)
            return value
        return cfg.initial_soc

    inverter = ControllerLink(
        f"{device}.inverter",
        INVERTER,
        str(cfg.inverter_port),
        timing,
        lambda frame: points.readings(INVERTER, frame),
        points.online(INVERTER),
        # The inverter ignores the SoC; the battery controller, on a swapped port, takes it.
        initial_soc=initial_soc,
        max_backoff=cfg.max_backoff,
    )
    battery = ControllerLink(
        f"{device}.battery",
        BATTERY,
        str(cfg.battery_port),
        timing,
        lambda frame: points.readings(BATTERY, frame),
        points.online(BATTERY),
        initial_soc=initial_soc,
        max_backoff=cfg.max_backoff,
    )
    ext.add_device(inverter)
    ext.add_device(battery)

    power = [
        PowerSetpoint(
            "P_set",
            inverter,
            m.INV_P,
            -cfg.inverter_p_max,
            cfg.inverter_p_max,
            lambda v: points.inverter_sign * v,
        ),
        PowerSetpoint(
            "Q_set",
            inverter,
            m.INV_Q,
            -cfg.inverter_q_max,
            cfg.inverter_q_max,
            lambda v: points.inverter_sign * v,
        ),
        PowerSetpoint(
            "P_ESS_set",
            battery,
            m.BAT_P,
            -cfg.battery_discharge_max,
            cfg.battery_charge_max,
            lambda v: points.battery_sign * v,
        ),
        # A PV limit in the load reference: -2000 lets the PV produce at most 2000 W.
        PowerSetpoint(
            "P_PV_set",
            battery,
            m.PV_P,
            -cfg.pv_p_max,
            0.0,
            abs,  # the limit is the production: -v, never a negative zero
            # A PV mode frame ends the limit. The mode in force stays (pv_mode_set = 0 keeps
            # the PV off); none in force: MPPT, no limit.
            lambda: battery.in_force.get(m.PV_MODE, Frame(BATTERY.command, m.PV_MODE, b"\x01")),
            above_hi="a PV limit is <= 0 W (load reference: -2000 lets the PV produce at most "
            "2000 W)",
        ),
    ]
    modes = [
        ModeSetpoint(
            "inverter_mode_set", inverter, m.INV_MODE, {0: "off", 1: "standby", 2: "island"}
        ),
        ModeSetpoint("battery_mode_set", battery, m.BAT_MODE, {0: "off", 1: "standby"}),
        ModeSetpoint("pv_mode_set", battery, m.PV_MODE, {0: "off", 1: "MPPT"}),
    ]
    register(ext, device, power, modes)
    log.info("%s: inverter on %s, battery+PV on %s", device, cfg.inverter_port, cfg.battery_port)
