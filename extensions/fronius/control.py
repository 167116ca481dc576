"""Battery control through SunSpec model 124 (storage), as Fronius implements it (GEN24 and
Symo Hybrid, "Modbus TCP & RTU" documentation):

- `StorCtl_Mod` bit 0 makes `InWRte` (charge rate, % of `WChaMax`) a limit, bit 1 makes
  `OutWRte` (discharge rate, % of `WChaMax`) one; a negative rate forces the other way. So
  charging at X W is StorCtl_Mod = 3, InWRte = X, OutWRte = -X (in %), discharging the
  mirror image, holding at 0 W both rates 0;
- `InOutWRte_RvrtTms` (s): the device drops the rates and returns to its autonomous mode by
  itself when they are not written again in time, so a silent USM never leaves the battery
  forced. We write it as min(`revert_after`, the setpoint's remaining validity) and rewrite
  the rates every `revert_after` / 3 while the setpoint is in force;
- autonomous mode: StorCtl_Mod = 0, rates back to 100 %.

`fronius/P_ESS_set` is in W, load reference (+ charge, - discharge). A request is clamped to
the device's limits (WChaMax, model 120's MaxChaRte/MaxDisChaRte, no discharge at or below the
reserve `MinRsvPct`, nor while the SoC or the reserve is unknown, no charge when full),
written, then read back: every register written must read as written, or the setpoint is
REJECTED (and autonomous mode restored). Every keep-alive rewrite reads the limits again and
plans the request anew: a battery that ran down to its reserve (or filled up) while the
setpoint is in force is held at 0 W, and the setpoint's outcome is corrected (CLAMPED with the
reason, APPLIED again when the limit no longer binds).

A write whose answer did not come back has an unknown outcome: UNCONFIRMED, tried again every
second until the inverter answers (then APPLIED, CLAMPED or REJECTED from the write and its
read-back). A keep-alive the inverter does not answer makes the outcome UNCONFIRMED too; once
the timer of the last write that may have reached it has run out, the reason says it reverted.
The core cannot revive a REJECTED setpoint, so a silent inverter never makes one REJECTED: it
is written again as soon as the inverter answers, while the setpoint is valid.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from extensions.sdk import Applied, Clamped, Rejected, Unconfirmed
from extensions.sdk.protocols.modbus_link import ModbusLinkError
from extensions.sdk.protocols.sunspec import ModelLocation, link_reader, read_registers
from extensions.sdk.protocols.sunspec_models import decode_model, fixed_points
from smx.aio import wait_event

from .sunspec_source import SunSpecSource

__all__ = [
    "Limits",
    "Plan",
    "Report",
    "Result",
    "StorageControl",
    "outcome",
    "plan",
    "rate_word",
]

log = logging.getLogger(__name__)

CHARGE_LIMIT, DISCHARGE_LIMIT = 1, 2  # StorCtl_Mod bits
_OFFSETS = {name: p.offset for name, p in fixed_points(124).items()}
MOD = _OFFSETS["StorCtl_Mod"]
RATES = _OFFSETS["OutWRte"]  # OutWRte, InWRte, InOutWRte_WinTms, InOutWRte_RvrtTms follow
assert [_OFFSETS[n] - RATES for n in ("InWRte", "InOutWRte_WinTms", "InOutWRte_RvrtTms")] == [
    1,
    2,
    3,
]


@dataclass(frozen=True)
class Limits:
    w_cha_max: float  # W: the reference of both rates
    max_charge: float  # W
    max_discharge: float  # W, positive
    rate_sf: int  # InOutWRte_SF
    reserve: float | None = None  # % SoC below which nothing is discharged; None: unknown
    soc: float | None = None  # %; None: unknown


@dataclass(frozen=True)
class Plan:
    power: float  # W, + charge: what the rates written give
    reason: str  # why it differs from the request ("" if it does not)
    mod: int
    out_word: int
    in_word: int


def rate_word(percent: float, sf: int) -> int:
    """A rate in % as the int16 register word at scale factor `sf` (0x8000 is "not
    implemented": the range stops at +-32767)."""
    raw = max(-32767, min(32767, round(percent / 10.0**sf)))
    return raw & 0xFFFF


def _word_value(word: int, sf: int) -> float:
    return (word - 0x10000 if word & 0x8000 else word) * 10.0**sf


def plan(request: float, limits: Limits) -> Plan:
    """What to write for `request` W (+ charge), clamped to `limits`. Pure.

    Fail safe: a discharge needs both the SoC and the reserve known (a reserve that cannot be
    checked is not assumed kept). A charge with the SoC unknown is written: it cannot eat into
    the reserve, and the battery's own management ends a charge at full whatever the rates."""
    target, reason = request, ""
    if target > limits.max_charge:
        target, reason = limits.max_charge, f"charge limit {limits.max_charge:g} W"
    elif target < -limits.max_discharge:
        target, reason = -limits.max_discharge, f"discharge limit {limits.max_discharge:g} W"
    soc, reserve = limits.soc, limits.reserve
    if target < 0 and (soc is None or reserve is None):
        unknown = " and ".join(
            name
            for name, value in (("SoC", soc), ("reserve (MinRsvPct)", reserve))
            if value is None
        )
        target = 0.0
        reason = f"{unknown} unknown: no discharge, the reserve cannot be checked"
    elif target < 0 and soc is not None and reserve is not None and soc <= reserve:
        target, reason = 0.0, f"SoC {soc:g} % at or below the reserve {reserve:g} %"
    if target > 0 and soc is not None and soc >= 100.0:
        target, reason = 0.0, "battery full"
    percent = target / limits.w_cha_max * 100.0
    in_word, out_word = rate_word(percent, limits.rate_sf), rate_word(-percent, limits.rate_sf)
    power = _word_value(in_word, limits.rate_sf) / 100.0 * limits.w_cha_max
    return Plan(power, reason, CHARGE_LIMIT | DISCHARGE_LIMIT, out_word, in_word)


def outcome(request: float, p: Plan) -> Applied | Clamped:
    """The setpoint's status for plan `p` of `request` W."""
    if p.reason:
        return Clamped(p.power, p.reason)
    return Applied(p.power if p.power != request else None)


def _percent(value: object) -> float | None:
    """A SoC or reserve in %, None unless a number in 0..100 (a bad scale factor is unknown)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 100:
        return float(value)
    return None


# Tells the core a changed outcome of the setpoint in force (SetpointRouter.report_outcome).
Result = Applied | Clamped | Rejected | Unconfirmed
Report = Callable[[Result], Awaitable[None]]

RETRY_S = 1.0  # between tries while an outcome is unknown (a silent inverter)
# The device's timer counts whole seconds on its own clock: a margin before we call it ended.
REVERT_MARGIN_S = 1.0


def _unanswered(err: BaseException) -> bool:
    """A request that may have reached the device and got no answer (no answer in time, the
    connection lost under it). Not a Modbus exception (an answer), not a connection that could
    not be opened (nothing sent)."""
    return (
        isinstance(err, ModbusLinkError)
        and err.code is None
        and not str(err).startswith("cannot open")
    )


class WriteFailed(Exception):
    """A write sequence that did not complete: which of its writes may have been taken (answered
    OK, or sent and unanswered), and whether its outcome is unknown (no answer)."""

    def __init__(self, err: BaseException, rates: bool, mod: bool, unknown: bool) -> None:
        super().__init__(str(err))
        self.rates_maybe, self.mod_maybe, self.unknown = rates, mod, unknown


@dataclass(frozen=True)
class Active:
    """The setpoint in force: what was asked, what is written, until when, whom to tell."""

    request: float  # W
    plan: Plan | None  # what was last written (None: no write of it confirmed yet)
    expires_at: float  # unix s
    report: Report | None = None
    told: Result | None = None  # the outcome the core was last told


class StorageControl:
    def __init__(self, source: SunSpecSource, revert_after: float = 60.0) -> None:
        self.source = source
        self.revert_after = revert_after
        self.active: Active | None = None
        self.writes = 0
        # Until when (unix s) the device may run forced rates of a write that may have reached
        # it: its revert timer ends them then at the latest. 0: autonomous, as read back.
        self.forced_until = 0.0
        self._wake = asyncio.Event()

    async def _model(self) -> ModelLocation:
        models = await self.source.ensure_models()
        if 124 not in models:
            raise LookupError(
                f"unit {self.source.unit} has no SunSpec storage model 124 "
                f"(models {sorted(models)}): no battery to control"
            )
        return models[124]

    async def _words(self, model: ModelLocation) -> list[int]:
        read = link_reader(self.source.link, self.source.unit)
        return await read_registers(read, model.start, model.length + 2)

    async def limits(self, model: ModelLocation) -> Limits:
        return self._limits(decode_model(await self._words(model)))

    def _limits(self, storage: dict[str, Any]) -> Limits:
        plate = self.source.nameplate
        w_cha_max = storage.get("WChaMax")
        if not isinstance(w_cha_max, float) or w_cha_max <= 0:
            raise ValueError(f"model 124 gives no usable WChaMax ({w_cha_max!r})")
        sf = storage.get("InOutWRte_SF")
        charge = discharge = w_cha_max
        if isinstance(plate.get("MaxChaRte"), float):
            charge = min(charge, plate["MaxChaRte"])
        if isinstance(plate.get("MaxDisChaRte"), float):
            discharge = min(discharge, plate["MaxDisChaRte"])
        return Limits(
            w_cha_max,
            charge,
            discharge,
            sf if isinstance(sf, int) else 0,
            _percent(storage.get("MinRsvPct")),
            _percent(storage.get("ChaState")),
        )

    def _revert_seconds(self, expires_at: float) -> int:
        remaining = math.ceil(expires_at - time.time())
        return max(1, min(int(self.revert_after), remaining, 65534))

    async def _write(self, model: ModelLocation, mod: int, rates: list[int]) -> None:
        """The rate block and StorCtl_Mod, in two writes; read back, every word as written.
        WriteFailed says which writes may have been taken when it did not complete.

        The order is the one that is safe if the link drops between the two writes. Under
        control (mod != 0) the rates go first, with their revert timer, and StorCtl_Mod enables
        them after: half done, the device is still autonomous (mod 0 never enables rates) or
        runs the new rates under the mode already set, until the timer just written ends them.
        Enabling first would run whatever rates the registers held (a device may keep old
        forced rates after its timer ran out) with no fresh timer. Back to autonomous, mod 0
        goes first: half done, the device is autonomous already; rates first would leave
        StorCtl_Mod 3 with 100 % limits and the timer off, under our control indefinitely.

        A write that got no answer may have been taken: the device's timer then runs from
        some moment before we gave up, so `forced_until` moves to now + the timer written."""
        link, unit = self.source.link, self.source.unit
        steps: list[tuple[int, list[int]]] = [(RATES, rates), (MOD, [mod])]
        if not mod:
            steps.reverse()
        maybe = {RATES: False, MOD: False}
        for offset, words in steps:
            try:
                await link.write(unit, model.start + offset, words)
            except Exception as err:
                unknown = _unanswered(err)
                maybe[offset] = unknown
                if mod and unknown:
                    self.forced_until = max(self.forced_until, time.time() + rates[3])
                raise WriteFailed(err, maybe[RATES], maybe[MOD], unknown) from err
            maybe[offset] = True
            if offset == MOD and not mod:
                self.forced_until = 0.0  # StorCtl_Mod 0 taken: autonomous
        self.writes += 1
        if mod:
            # Taken (maybe: the read-back tells); a timer running from before is replaced.
            self.forced_until = max(self.forced_until, time.time() + rates[3])
        try:
            words = await self._words(model)
        except Exception as err:
            raise WriteFailed(err, True, True, unknown=True) from err
        seen = [words[MOD], *words[RATES : RATES + len(rates)]]
        if seen != [mod, *rates]:
            raise WriteFailed(
                RuntimeError(
                    f"read back StorCtl_Mod, rates {seen} after writing {[mod, *rates]}: "
                    "the device did not take them (is Modbus control enabled on the inverter?)"
                ),
                False,  # the device says what it runs: not this
                False,
                unknown=False,
            )
        if mod:
            self.forced_until = time.time() + rates[3]

    async def _put(
        self, request: float, expires_at: float, following: bool
    ) -> tuple[Result, Plan | None]:
        """Plan `request` W on the limits of the moment, write it, read it back (the lock
        held): the outcome and the plan written. `following`: a keep-alive of the setpoint in
        force, which the device may run already (an earlier write, its timer not ended).

        REJECTED only when the device answered that it did not take it (a Modbus exception, a
        read-back that differs) and nothing of it may run (autonomous mode restored, or never
        enabled); a write without an answer is UNCONFIRMED, and so is a keep-alive the device
        does not answer (the core cannot revive a REJECTED setpoint: it is written again when
        the device answers)."""
        ran_before = following and time.time() < self.forced_until + REVERT_MARGIN_S
        try:
            model = await self._model()
            storage = decode_model(await self._words(model))
            limits = self._limits(storage)
        except Exception as err:  # nothing sent
            if following:
                return self._silent(err), None
            return Rejected(str(err)), None
        p = plan(request, limits)
        rates = [p.out_word, p.in_word, 0, self._revert_seconds(expires_at)]
        try:
            await self._write(model, p.mod, rates)
        except WriteFailed as failed:
            enabled = failed.mod_maybe or storage.get("StorCtl_Mod") not in (0, None)
            may_run = ran_before or (failed.rates_maybe and enabled)
            if failed.unknown and may_run:
                log.warning("P_ESS_set %g W: write sent, no answer: %s", request, failed)
                return self._unknown(failed), p
            if await self._restore(model, f"after a failed write ({failed})") or not may_run:
                return Rejected(f"not applied: {failed}"), None
            return Unconfirmed(
                f"not taken ({failed}) and autonomous mode not restored: the inverter may run "
                f"an earlier write until its revert timer ends, at most {self.revert_after:g} s"
            ), p
        return outcome(request, p), p

    def _unknown(self, err: BaseException) -> Unconfirmed:
        return Unconfirmed(
            f"write sent, no answer ({err}); the inverter may run it until its revert timer "
            f"ends, at most {self.revert_after:g} s"
        )

    def _silent(self, err: BaseException) -> Unconfirmed:
        """The outcome while the inverter does not answer: it may run the setpoint until the
        timer of the last write that may have reached it; after that it certainly reverted."""
        does = "does not answer" if _unanswered(err) else "cannot be read"
        if time.time() < self.forced_until + REVERT_MARGIN_S:
            return Unconfirmed(
                f"the inverter {does} ({err}); it may run the setpoint until its "
                f"revert timer ends, at most {self.revert_after:g} s after the last write"
            )
        return Unconfirmed(
            f"the inverter {does} ({err}) and has reverted to autonomous mode by its "
            "timer: not applied now; written again when the inverter answers"
        )

    async def apply(
        self, request: float, expires_at: float, report: Report | None = None
    ) -> Result:
        """Write `request` W until `expires_at`; the outcome. `report` is told when it changes
        later: a keep-alive rewrite (the SoC reached the reserve, the battery is full...), an
        unknown outcome settled, a silent inverter."""
        if not math.isfinite(request):
            return Rejected(f"{request} W is not a power")
        async with self.source.lock:
            result, p = await self._put(request, expires_at, following=False)
            if isinstance(result, Rejected):
                self.active = None
            else:
                self.active = Active(request, p, expires_at, report, result)
                if isinstance(result, Unconfirmed):
                    self._wake.set()  # follow it up at once, not at the next keep-alive
        if p is not None and not isinstance(result, Rejected):
            log.info("P_ESS_set %g W: writing %g W %s", request, p.power, p.reason)
        return result

    async def autonomous(self) -> None:
        """Back to the device's own mode; raises if it does not read back so."""
        async with self.source.lock:
            self.active = None
            if 124 not in await self.source.ensure_models():
                return  # no battery: nothing was ever forced
            model = await self._model()
            limits = await self.limits(model)
            full = rate_word(100.0, limits.rate_sf)
            await self._write(model, 0, [full, full, 0, 0])
        log.info("battery back in autonomous mode")

    async def _restore(self, model: ModelLocation, why: str) -> bool:
        """Autonomous mode, read back; False (logged) if that failed."""
        try:
            full = rate_word(100.0, (await self.limits(model)).rate_sf)
            await self._write(model, 0, [full, full, 0, 0])
        except Exception as err:
            log.error("cannot restore autonomous mode %s: %s", why, err)
            return False
        return True

    def _pause(self) -> float:
        """Until the next keep-alive: `revert_after` / 3, or sooner while the outcome is
        unknown (a try every RETRY_S, and when the device's timer must have ended)."""
        period = max(0.5, self.revert_after / 3)
        active = self.active
        if active is None or not isinstance(active.told, Unconfirmed):
            return period
        pause = min(period, RETRY_S)
        left = self.forced_until + REVERT_MARGIN_S - time.time()
        if left > 0:
            pause = min(pause, left + 0.05)
        return max(0.05, pause)

    async def keep_alive(self) -> None:
        """Rewrite the setpoint in force before the device's revert timer ends, every
        `revert_after` / 3, planned anew on the limits of the moment; while its outcome is
        unknown (no answer), try every second. Each try corrects the outcome told."""
        while True:
            self._wake.clear()
            await wait_event(self._wake, self._pause())
            try:
                await self.refresh()
            except Exception as err:
                log.warning("refreshing the battery setpoint failed: %s", err)

    async def refresh(self) -> None:
        """One keep-alive rewrite: read the limits (SoC, reserve...), plan the request in
        force again, write it; report the outcome if it changed (UNCONFIRMED while the inverter
        does not answer, REJECTED if it refuses, APPLIED or CLAMPED once it runs it again)."""
        active = self.active
        if active is None or active.expires_at <= time.time():
            return
        async with self.source.lock:
            if self.active is not active:
                return  # replaced or ended meanwhile
            result, p = await self._put(active.request, active.expires_at, following=True)
            if isinstance(result, Rejected):
                self.active = None
            else:
                self.active = replace(active, plan=p or active.plan, told=result)
        if _same(result, active.told):
            return
        if isinstance(result, Unconfirmed | Rejected):
            log.warning("P_ESS_set %g W: %s: %s", active.request, _status(result), result.reason)
        elif p is not None:
            log.info("P_ESS_set %g W: now writing %g W %s", active.request, p.power, p.reason)
        if active.report is not None:
            await active.report(result)


def _status(result: Result) -> str:
    return type(result).__name__.upper()


def _same(a: Result, b: Result | None) -> bool:
    """Whether the core needs no new report: the same outcome, or the same kind of unknown
    (a reason that only names another error of a silent link is not worth a report)."""
    if isinstance(a, Unconfirmed) and isinstance(b, Unconfirmed):
        return ("reverted" in a.reason) == ("reverted" in b.reason)
    return a == b
