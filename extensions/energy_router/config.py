"""The energy_router config table (`[extensions.er.config]` of site.toml) as a typed schema:
every key, its default and its range; an unknown or mistyped key stops the extension with one
line naming it. docs/ENERGY-ROUTER.md explains each key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from extensions.sdk import Seconds, setting

__all__ = ["ErConfig"]


@dataclass(frozen=True)
class ErConfig:
    inverter_port: Path  # serial device of the inverter controller (id 1), required
    battery_port: Path  # serial device of the battery+PV controller (id 2), required
    baudrate: int = setting(9600, min=300, max=115200)
    keepalive: Seconds = setting(1.0, min=0.05, max=60)  # a KA to each controller this often
    link_timeout: Seconds = setting(3.0, min=0.1, max=600)  # nothing received: link lost
    startup_pause: Seconds = setting(5.0, min=0, max=60)  # the controller's pause after its ID
    answer_timeout: Seconds = setting(2.0, min=0.05, max=60)  # for the ID answer, per try
    confirm_timeout: Seconds = setting(2.0, min=0.05, max=30)  # for a setpoint's confirmation
    initial_soc: float = setting(50.0, min=0, max=100)  # % told the battery controller at start
    soc_from_core: bool = True  # rather the last SoC the core holds for <device>/SoC
    # The devices' own sign of power (the points are converted to the load reference).
    battery_positive: Literal["discharge", "charge"] = "discharge"
    inverter_positive: Literal["export", "import"] = "export"
    # Limits setpoints are clamped to (W, var)
    inverter_p_max: float = setting(3000.0, min=0, max=1e6)
    inverter_q_max: float = setting(3000.0, min=0, max=1e6)
    battery_charge_max: float = setting(3000.0, min=0, max=1e6)
    battery_discharge_max: float = setting(3000.0, min=0, max=1e6)
    pv_p_max: float = setting(3000.0, min=0, max=1e6)
    period: Seconds = setting(1.0, min=0.05, max=3600)  # how often the controllers report
    max_backoff: Seconds = setting(30.0, min=0.05, max=3600)  # between reconnection tries
