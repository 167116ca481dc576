"""A simulated charging point on the `ocpp` library (1.6 or 2.0.1) with an EV: it boots, the EV
plugs in, is authorised, charges at min(the EV's maximum, the active charging profile's limit)
and the charger reports MeterValues (power, per-phase current and voltage, energy register,
SoC) every `interval` until the EV is full or `session_s` has passed, then stops.

Charging profiles: the limit of the highest stack level of each purpose, and the lowest of
the purposes (a simplification of OCPP's composite schedule), in A or W. A TxProfile is
refused unless it names the running transaction, and dropped when that transaction ends, as
real chargers do.

An unanswered call is sent again, as real chargers do with their transaction messages (1.6
TransactionMessageAttempts / TransactionMessageRetryInterval, 2.0.1 OCPPCommCtrlr
MessageAttempts / MessageAttemptInterval): after `call_timeout` s without an answer, up to
`attempts` sends in all, `retry_interval` x the attempt number s apart, with the same message id
(a CSMS that had it recognises the repeat).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from smx.aio import wait_event

__all__ = ["Ev", "SimCharger"]

log = logging.getLogger(__name__)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Ev:
    max_current: float = 16.0  # A per phase
    phases: int = 3
    voltage: float = 230.0
    capacity_kwh: float = 60.0
    soc: float = 40.0  # %


@dataclass
class Profiles:
    by_id: dict[int, tuple[str, int, str, float]] = field(default_factory=dict)  # purpose...

    def set(self, pid: int, purpose: str, level: int, unit: str, limit: float) -> None:
        self.by_id[pid] = (purpose, level, unit, limit)

    def clear(self, pid: int | None) -> None:
        if pid is None:
            self.by_id.clear()
        else:
            self.by_id.pop(pid, None)

    def end_transaction(self) -> None:
        """A TxProfile lives as long as its transaction (OCPP 1.6 3.13.4, 2.0.1 K01)."""
        self.by_id = {k: v for k, v in self.by_id.items() if v[0] != "TxProfile"}

    def limit_a(self, ev: Ev) -> float:
        """The current limit per phase the profiles allow."""
        best: dict[str, tuple[int, float]] = {}
        for purpose, level, unit, limit in self.by_id.values():
            amps = limit if unit == "A" else limit / (ev.voltage * ev.phases)
            if purpose not in best or level > best[purpose][0]:
                best[purpose] = (level, amps)
        return min([ev.max_current, *(a for _, a in best.values())])


class SimCharger:
    def __init__(
        self,
        url: str,
        version: str = "ocpp1.6",
        *,
        ev: Ev | None = None,
        interval: float = 1.0,
        session_s: float = 3600.0,
        id_tag: str = "SIMTAG01",
        password: str = "",
        speed: float = 1.0,
        call_timeout: float = 10.0,
        attempts: int = 3,
        retry_interval: float = 1.0,
    ) -> None:
        self.url, self.version = url, version
        self.ev = ev or Ev()
        self.interval, self.session_s, self.id_tag = interval, session_s, id_tag
        self.password = password
        self.speed = speed  # simulated seconds per second: a session in a test's time
        self.call_timeout = call_timeout  # s without an answer before a call is sent again
        self.attempts = attempts  # sends of one call in all
        self.retry_interval = retry_interval  # s, times the attempt number
        self.profiles = Profiles()
        self.energy_wh = 1_000_000.0
        self.current = 0.0
        self.tx_id: str | None = None
        self.cp: Any = None
        self.unplug = asyncio.Event()
        self.sent: list[str] = []  # every frame, as sent and as received (tests compare them)
        self.received: list[str] = []

    async def accepts(self, purpose: str, tx: Any) -> bool:
        """A TxProfile only for the running transaction (one that right follows the
        StartTransaction.conf may be read before `tx_id` is set: it gets 0.5 s)."""
        if purpose != "TxProfile":
            return True
        for _ in range(10):
            if self.tx_id is not None:
                break
            await asyncio.sleep(0.05)
        return self.tx_id is not None and str(tx) == self.tx_id

    @property
    def power(self) -> float:
        return self.current * self.ev.voltage * self.ev.phases

    async def run(self, *, plug_after: float = 0.2, again_after: float | None = None) -> None:
        """Connect, boot, charge once (and again `again_after` s after each session ends),
        stay connected until cancelled or the link drops."""
        cp_id = self.url.rstrip("/").rpartition("/")[2]
        headers = {}
        if self.password:
            token = base64.b64encode(f"{cp_id}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        async with connect(
            self.url,
            subprotocols=[Subprotocol(self.version)],
            additional_headers=headers,
        ) as ws:
            conn = _Recorded(ws, self.sent, self.received)
            self.cp = (_Cp16 if self.version == "ocpp1.6" else _Cp201)(cp_id, conn, self)
            reader = asyncio.ensure_future(self.cp.start())
            try:
                await self.cp.boot()
                await asyncio.sleep(plug_after)
                await self.charge_once()
                while again_after is not None and not reader.done():
                    await asyncio.sleep(again_after)
                    await self.charge_once()
                await reader
            finally:
                reader.cancel()

    async def charge_once(self) -> None:
        await self.cp.status("Preparing")
        await self.cp.authorize()
        self.tx_id = await self.cp.start_transaction(self.energy_wh)
        await self.cp.status("Charging")
        loop = asyncio.get_running_loop()
        end = loop.time() + self.session_s
        while loop.time() < end and self.ev.soc < 100 and not self.unplug.is_set():
            self.step(self.interval)
            await self.cp.meter_values(self.tx_id, self)
            await wait_event(self.unplug, self.interval)
        self.current = 0.0
        await self.cp.stop_transaction(self.tx_id, self)
        self.tx_id = None
        self.profiles.end_transaction()
        await self.cp.status("Available")

    def step(self, seconds: float) -> None:
        self.current = self.profiles.limit_a(self.ev)
        wh = self.power * seconds * self.speed / 3600.0
        self.energy_wh += wh
        self.ev.soc = min(100.0, self.ev.soc + 100.0 * wh / 1000.0 / self.ev.capacity_kwh)

    def sampled(self) -> list[dict[str, Any]]:
        i, u = round(self.current, 1), self.ev.voltage
        values: list[tuple[str, str, str, float]] = [
            ("Power.Active.Import", "", "W", round(self.power, 1)),
            ("Energy.Active.Import.Register", "", "Wh", round(self.energy_wh, 1)),
            ("SoC", "", "Percent", round(self.ev.soc, 1)),
        ]
        for n in range(1, self.ev.phases + 1):
            values.append(("Current.Import", f"L{n}", "A", i))
            values.append(("Voltage", f"L{n}-N", "V", u))
        out = []
        for measurand, phase, unit, value in values:
            s: dict[str, Any]
            if self.version == "ocpp1.6":
                s = {"measurand": measurand, "unit": unit, "value": f"{value}"}
            else:
                s = {"measurand": measurand, "unitOfMeasure": {"unit": unit}, "value": value}
            if phase:
                s["phase"] = phase
            if measurand == "SoC":
                s["location"] = "EV"
            out.append(s)
        return out


class _Recorded:
    """The connection as the ocpp library uses it, keeping a copy of each frame."""

    def __init__(self, ws: Any, sent: list[str], received: list[str]) -> None:
        self.ws, self.sent, self.received = ws, sent, received

    async def recv(self) -> str:
        raw = await self.ws.recv()
        self.received.append(raw)
        return str(raw)

    async def send(self, raw: str) -> None:
        self.sent.append(raw)
        await self.ws.send(raw)


class _Retrying:
    """A call without an answer within `call_timeout` is sent again, with the same id."""

    sim: SimCharger
    _unique_id_generator: Any

    async def call(
        self,
        payload: Any,
        suppress: bool = True,
        unique_id: Any = None,
        skip_schema_validation: bool = False,
    ) -> Any:
        unique_id = unique_id if unique_id is not None else str(self._unique_id_generator())
        attempts = max(1, self.sim.attempts)
        for attempt in range(1, attempts + 1):
            try:
                return await super().call(  # type: ignore[misc]
                    payload, suppress, unique_id, skip_schema_validation
                )
            except TimeoutError:
                if attempt == attempts:
                    raise
                log.info(
                    "%s %s unanswered (attempt %d of %d): sent again",
                    type(payload).__name__,
                    unique_id,
                    attempt,
                    attempts,
                )
                await asyncio.sleep(self.sim.retry_interval * attempt)


class _Cp16(_Retrying, Cp16):
    def __init__(self, cp_id: str, ws: Any, sim: SimCharger) -> None:
        super().__init__(cp_id, ws, response_timeout=sim.call_timeout)
        self.sim = sim
        self.answer_delay = 0.0  # s before answering SetChargingProfile (a slow charger)

    async def boot(self) -> None:
        await self.call(
            call16.BootNotification(charge_point_model="SIM-1", charge_point_vendor="SMX")
        )
        await self.status("Available")

    async def status(self, status: str) -> None:
        await self.call(call16.StatusNotification(1, "NoError", status, timestamp=now()))

    async def authorize(self) -> None:
        await self.call(call16.Authorize(self.sim.id_tag))

    async def start_transaction(self, meter_wh: float) -> str:
        r = await self.call(call16.StartTransaction(1, self.sim.id_tag, int(meter_wh), now()))
        return str(r.transaction_id)

    async def meter_values(self, tx: str, sim: SimCharger) -> None:
        mv = [{"timestamp": now(), "sampledValue": sim.sampled()}]
        await self.call(call16.MeterValues(1, mv, transaction_id=int(tx)))

    async def stop_transaction(self, tx: str, sim: SimCharger) -> None:
        await self.call(
            call16.StopTransaction(int(sim.energy_wh), now(), int(tx), reason="EVDisconnected")
        )

    @on("SetChargingProfile")
    async def on_set_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any]) -> Any:
        await asyncio.sleep(self.answer_delay)
        p = cs_charging_profiles
        if not await self.sim.accepts(p["charging_profile_purpose"], p.get("transaction_id")):
            return result16.SetChargingProfile("Rejected")
        sched = p["charging_schedule"]
        self.sim.profiles.set(
            p["charging_profile_id"],
            p["charging_profile_purpose"],
            p["stack_level"],
            sched["charging_rate_unit"],
            float(sched["charging_schedule_period"][0]["limit"]),
        )
        return result16.SetChargingProfile("Accepted")

    @on("ClearChargingProfile")
    def on_clear_profile(self, id: int | None = None, **_: Any) -> Any:
        self.sim.profiles.clear(id)
        return result16.ClearChargingProfile("Accepted")


class _Cp201(_Retrying, Cp201):
    def __init__(self, cp_id: str, ws: Any, sim: SimCharger) -> None:
        super().__init__(cp_id, ws, response_timeout=sim.call_timeout)
        self.sim = sim
        self.answer_delay = 0.0  # s before answering SetChargingProfile (a slow charger)
        self.seq = 0

    async def boot(self) -> None:
        station = {"model": "SIM-2", "vendor_name": "SMX"}
        await self.call(call201.BootNotification(charging_station=station, reason="PowerUp"))
        await self.status("Available")

    async def status(self, status: str) -> None:
        status = {"Preparing": "Occupied", "Charging": "Occupied"}.get(status, status)
        await self.call(call201.StatusNotification(now(), status, 1, 1))

    async def authorize(self) -> None:
        await self.call(
            call201.Authorize(id_token={"id_token": self.sim.id_tag, "type": "ISO14443"})
        )

    def _event(self, kind: str, trigger: str, tx: str, **extra: Any) -> Any:
        self.seq += 1
        return call201.TransactionEvent(
            kind, now(), trigger, self.seq, {"transaction_id": tx}, **extra
        )

    async def start_transaction(self, meter_wh: float) -> str:
        tx = f"SIM-{int(meter_wh)}"
        token = {"id_token": self.sim.id_tag, "type": "ISO14443"}
        mv = [{"timestamp": now(), "sampled_value": self.sim.sampled()}]
        await self.call(self._event("Started", "Authorized", tx, evse={"id": 1, "connector_id": 1},
                                    id_token=token, meter_value=mv))  # fmt: skip
        return tx

    async def meter_values(self, tx: str, sim: SimCharger) -> None:
        mv = [{"timestamp": now(), "sampled_value": sim.sampled()}]
        await self.call(self._event("Updated", "MeterValuePeriodic", tx, meter_value=mv))

    async def stop_transaction(self, tx: str, sim: SimCharger) -> None:
        mv = [{"timestamp": now(), "sampled_value": sim.sampled()}]
        await self.call(self._event("Ended", "EVCommunicationLost", tx, meter_value=mv))

    @on("SetChargingProfile")
    async def on_set_profile(self, evse_id: int, charging_profile: dict[str, Any]) -> Any:
        await asyncio.sleep(self.answer_delay)
        p = charging_profile
        if not await self.sim.accepts(p["charging_profile_purpose"], p.get("transaction_id")):
            return result201.SetChargingProfile("Rejected")
        sched = p["charging_schedule"][0]
        self.sim.profiles.set(
            p["id"],
            p["charging_profile_purpose"],
            p["stack_level"],
            sched["charging_rate_unit"],
            float(sched["charging_schedule_period"][0]["limit"]),
        )
        return result201.SetChargingProfile("Accepted")

    @on("ClearChargingProfile")
    def on_clear_profile(self, charging_profile_id: int | None = None, **_: Any) -> Any:
        self.sim.profiles.clear(charging_profile_id)
        return result201.ClearChargingProfile("Accepted")
