"""The simulated site behind the simulator: a GEN24 Plus with PV strings, a battery, a house
load and a Smart Meter at the grid connection. Both protocols of the simulator show this one
state, so the Solar API and SunSpec readings of it agree.

Power balance (W, each >= 0 unless said): the inverter's AC output is PV minus what goes into
the battery (`battery` > 0 charging), the grid gives the rest of the house load
(`grid` > 0 import). Without control the battery takes the PV surplus and covers the deficit
(self-consumption), within `w_cha_max`. Model 124 control (control.py has the rules) limits
or forces it; the revert timer puts the battery back in autonomous mode when it runs out. The
SoC integrates the battery power and stops it at the reserve (discharging) and at 100 %.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Plant"]


@dataclass
class Plant:
    capacity_wh: float = 10_000.0
    w_cha_max: float = 5000.0
    soc: float = 50.0
    reserve: float = 10.0  # MinRsvPct
    pv_w: float | None = None  # fixed PV power, or None: a slow swing around 3 kW
    load_w: float | None = None  # fixed house load, or None: a swing around 1.5 kW
    clock: Callable[[], float] = time.monotonic
    # model 124 control as written: StorCtl_Mod, rates in %, revert timer
    mod: int = 0
    in_rate: float = 100.0
    out_rate: float = 100.0
    revert_s: int = 0
    written_at: float = 0.0
    reverts: int = 0
    # counters (Wh) and the state of the last step
    inverter_wh: float = 7_512_000.0
    import_wh: float = 1_247_000.0
    export_wh: float = 1_705_000.0
    battery: float = 0.0
    t0: float = field(default=0.0)
    _last: float | None = None

    def __post_init__(self) -> None:
        self.t0 = self.clock()

    def pv(self, t: float) -> float:
        return self.pv_w if self.pv_w is not None else 3000.0 + 600.0 * math.sin(t / 40.0)

    def load(self, t: float) -> float:
        return self.load_w if self.load_w is not None else 1500.0 + 300.0 * math.sin(t / 17.0)

    def control(self, mod: int, in_rate: float, out_rate: float, revert_s: int) -> None:
        """A write of the model 124 control registers (restarts the revert timer)."""
        self.step()
        self.mod, self.in_rate, self.out_rate, self.revert_s = mod, in_rate, out_rate, revert_s
        self.written_at = self.clock()

    def target(self, pv: float, load: float) -> float:
        """Battery power (W, + charge) for this PV and load, under the control in force."""
        limit = self.w_cha_max
        low, high = -limit, limit
        if self.mod & 1:
            high = self.in_rate / 100.0 * limit  # < 0 forces a discharge
        if self.mod & 2:
            low = -self.out_rate / 100.0 * limit  # > 0 forces a charge
        p = min(max(pv - load, low), high) if low <= high else low
        p = min(max(p, -limit), limit)
        if p < 0 and self.soc <= self.reserve:
            return 0.0
        if p > 0 and self.soc >= 100.0:
            return 0.0
        return p

    def step(self) -> None:
        now = self.clock()
        if self.mod and self.revert_s and now - self.written_at >= self.revert_s:
            self.mod, self.in_rate, self.out_rate, self.revert_s = 0, 100.0, 100.0, 0
            self.reverts += 1
        t = now - self.t0
        if self._last is not None and now > self._last:
            hours = (now - self._last) / 3600.0
            self.soc = min(
                100.0, max(0.0, self.soc + self.battery * hours / self.capacity_wh * 100)
            )
            self.inverter_wh += max(0.0, self.ac()) * hours
            grid = self.grid()
            self.import_wh += max(0.0, grid) * hours
            self.export_wh += max(0.0, -grid) * hours
        self._last = now
        self.battery = self.target(self.pv(t), self.load(t))

    def now_t(self) -> float:
        return self.clock() - self.t0

    def ac(self) -> float:
        """The inverter's AC output (W delivered)."""
        return self.pv(self.now_t()) - self.battery

    def grid(self) -> float:
        """At the grid connection, import > 0."""
        return self.load(self.now_t()) - self.ac()

    def state(self) -> str:
        """The battery's state, as model 124's ChaSt names it."""
        if self.battery > 1:
            return "CHARGING"
        if self.battery < -1:
            return "DISCHARGING"
        return "FULL" if self.soc >= 100 else "HOLDING"
