"""Local ESS control: every control period, the battery setpoint from GESSCon's profile for the
current hour, its priority and the live site points, requested through the core with
`valid_for` = 3 periods (a dead agent lets the battery fall back by itself), and reported
upstream with what the owner did with it.

Priorities (docs/LESSAG.md, "Priorities"), powers in W, > 0 charging:

- 0, and every hour without a profile: local self-consumption. The battery takes what the site
  would export and gives what it would import: P_set = P_battery - P_pcc, within the battery's
  power limits and its SoC window [soc_min, soc_max]. The recommendation is ignored.
- 1: follow the recommendation within the battery's power limits and the SoC window: no
  discharge at or below soc_min (the reserve), no charge at or above soc_max.
- 2: follow the recommendation strictly: requested as it is; only the owner's limits apply.

`Priority_accept` is 1 when what the priority asked was done as asked (for 1 and 2: the owner
applied the recommendation unchanged), 0 when a limit, the reserve, the owner (CLAMPED,
REJECTED) or missing live points changed it, and null while the owner's answer is not known
(PENDING, UNCONFIRMED).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from smx.sdk import CallFailed, SetpointState
from smx.setpoint_status import APPLIED_NOW

from .profile import ProfileStore
from .settings import EssConfig

__all__ = ["Decision", "EssControl", "decide"]

log = logging.getLogger(__name__)

Request = Callable[[str, float, float], Awaitable[SetpointState]]
Report = Callable[[bytes], object]


@dataclass(frozen=True)
class Decision:
    value: float | None  # None: request nothing (the owner's fallback runs)
    accept: int  # 1: as the priority asks; 0: changed by a limit, the reserve, missing points
    why: str = ""


def _limit(value: float, cfg: EssConfig, soc: float | None) -> tuple[float, str]:
    """Within the power limits and the SoC window; what changed it."""
    limited = min(max(value, -cfg.max_discharge), cfg.max_charge)
    why = "power limit" if limited != value else ""
    if limited < 0 and (soc is None or soc <= cfg.soc_min):
        return 0.0, "SoC reserve" if soc is not None else "SoC unknown"
    if limited > 0 and soc is not None and soc >= cfg.soc_max:
        return 0.0, "SoC full"
    return limited, why


def decide(
    recommended: float | None,
    priority: int | None,
    live: dict[str, float | None],
    cfg: EssConfig,
) -> Decision:
    """The setpoint for this period. `live`: battery, pcc, soc (None when unknown)."""
    soc = live.get("soc")
    if priority in (None, 0) or recommended is None:
        battery, pcc = live.get("battery"), live.get("pcc")
        if battery is None or pcc is None:
            return Decision(None, 0, "battery or PCC power unknown")
        value, why = _limit(battery - pcc, cfg, soc)
        return Decision(value, 1 if priority == 0 else 0, why)
    if priority == 1:
        value, why = _limit(recommended, cfg, soc)
        return Decision(value, 1 if value == recommended else 0, why)
    return Decision(recommended, 1)


class EssControl:
    def __init__(
        self,
        cfg: EssConfig,
        store: ProfileStore,
        request: Request,
        report: Report,
        now: Callable[[], dt.datetime],
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.request = request
        self.report = report
        self.now = now  # aware local time; a fake clock in tests
        self.live: dict[str, float | None] = {"battery": None, "pcc": None, "soc": None}
        self.last: dict[str, Any] = {}  # the report of the current period
        self.setpoint_id = ""
        self.requests = 0
        self._accept_if_done = 0
        self._early: dict[str, SetpointState] = {}  # outcomes seen before their request returned

    @property
    def valid_for(self) -> float:
        return 3 * self.cfg.period

    def watched(self) -> dict[str, str]:
        """Live point name -> what it is."""
        names = {
            self.cfg.battery_power: "battery",
            self.cfg.pcc_power: "pcc",
            self.cfg.soc: "soc",
        }
        if self.cfg.pv_power:
            names[self.cfg.pv_power] = "pv"
        return names

    def update(self, what: str, value: object, quality: str) -> None:
        usable = quality in ("GOOD", "DERIVED") and isinstance(value, int | float)
        self.live[what] = float(value) if usable else None  # type: ignore[arg-type]

    async def tick(self) -> None:
        """One control period: decide, request, report."""
        now = self.now()
        day = self.store.day(now.date())
        hour = now.hour
        recommended = day.power[hour] if day else None
        priority = day.priority[hour] if day else None
        decision = decide(recommended, priority, self.live, self.cfg)
        self.last = {
            "t": round(now.timestamp(), 3),
            "Date_crt": day.date if day else None,
            "hour": hour,
            "P_bat_DC": self.live["battery"],
            "P_bat_DC_rec": recommended,
            "P_bat_DC_set": decision.value,
            "P_bat_DC_applied": None,
            "Priority_set": priority,
            "Priority_accept": None,
            "status": "NONE",
            "reason": decision.why,
            "setpoint_id": "",
        }
        if "pv" in self.live:
            self.last["P_PV"] = self.live["pv"]
        if decision.value is None:
            self.setpoint_id = ""
            self.last["Priority_accept"] = 0
            self._report()
            return
        self._accept_if_done = decision.accept
        # Our previous request is superseded by this one: that SUPERSEDED is no news upstream,
        # and must not land in this period's report (it is about another request).
        self.setpoint_id = ""
        try:
            sp = await self.request(self.cfg.setpoint, decision.value, self.valid_for)
        except (CallFailed, TimeoutError) as err:
            self.setpoint_id = ""
            self.last.update(status="REFUSED", reason=_refusal(err))
            self.last["Priority_accept"] = 0
            self._report()
            return
        self.requests += 1
        self.setpoint_id = sp.id
        self.last["setpoint_id"] = sp.id
        self.outcome(self._early.pop(sp.id, sp))
        self._early.clear()

    def outcome(self, sp: SetpointState) -> None:
        """The owner's answer (from the requester stream); reported when it is news."""
        if sp.name != self.cfg.setpoint:
            return
        if not sp.id or sp.id != self.setpoint_id or self.last.get("setpoint_id") != sp.id:
            if len(self._early) < 16 and sp.status != "PENDING":
                self._early[sp.id] = sp
            return
        self.last["status"] = sp.status
        if sp.reason:
            self.last["reason"] = sp.reason
        if sp.status in APPLIED_NOW:
            self.last["P_bat_DC_applied"] = sp.applied_value
        accepted = sp.status == "APPLIED" and self._accept_if_done == 1
        if sp.status in ("PENDING", "UNCONFIRMED"):
            self.last["Priority_accept"] = None
        else:
            self.last["Priority_accept"] = 1 if accepted else 0
        if sp.status != "PENDING":
            self._report()

    def _report(self) -> None:
        self.report(json.dumps(self.last, separators=(",", ":")).encode())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("ESS control period failed")  # the next period tries again
            next_at += self.cfg.period
            if next_at < loop.time():
                next_at = loop.time() + self.cfg.period
            await asyncio.sleep(max(0.0, next_at - loop.time()))


def _refusal(err: BaseException) -> str:
    if isinstance(err, CallFailed):
        return f"{err.code().name}: {err.details()}"
    return "the core did not answer in time"
