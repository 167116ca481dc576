"""Local control: `ev<N>/I_max_set` (A) and `ev<N>/P_max_set` (W) become the proxy's own
SetChargingProfile call to the charger (profiles.py), answered to the proxy only.

Outcomes (docs/SETPOINTS.md): Accepted -> APPLIED (the limit as sent, 0.1 steps); Rejected,
NotSupported or a CALLERROR -> REJECTED with the charger's words; no answer within
`answer_timeout` -> UNCONFIRMED, and the real outcome is reported when the answer comes. A
charger that is not connected -> REJECTED (never sent). The newest of a connector's two
setpoints is its profile: the older one is reported REJECTED ("replaced"). At expiry the
profile is cleared (ClearChargingProfile). At every (re)connection our id range is made to
match what is in force: sent again (outcome reported anew), or cleared where nothing is.
A TxProfile is sent again at each new transaction; between transactions the setpoint is
UNCONFIRMED ("applies at the next transaction").

The SCADA cannot replace or clear ours by id or stack level (the link refuses such calls); a
ClearChargingProfile of the SCADA without an id is forwarded, and once the charger answered it
the profiles in force are sent again, their outcome reported anew (REJECTED when the charger
refuses it now, UNCONFIRMED while it has not answered).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from extensions.sdk import Applied, Rejected, SetpointRequest, Unconfirmed

from .config import ChargePointConfig, OcppConfig
from .frames import CALLERROR, Frame
from .link import Link, ProxyCall, ProxyCallError
from .profiles import clear_profile, set_profile

if TYPE_CHECKING:
    from extensions.sdk import Extension

    from .server import ProxyServer

__all__ = ["Control"]

log = logging.getLogger(__name__)

Result = Applied | Rejected | Unconfirmed
UNITS = {"I_max_set": "A", "P_max_set": "W"}


@dataclass
class InForce:
    req: SetpointRequest
    unit: str
    limit: float


class NoTransaction(ProxyCallError):
    """A TxProfile with no transaction running: sent when one starts."""


class Control:
    def __init__(self, ext: Extension, cfg: OcppConfig, server: ProxyServer) -> None:
        self.ext, self.cfg, self.server = ext, cfg, server
        self.in_force: dict[tuple[str, int], InForce] = {}
        self.targets: dict[str, tuple[ChargePointConfig, int, str]] = {}
        self.followups: set[asyncio.Task[None]] = set()
        for cp in cfg.charge_points:
            for n, dev in enumerate(cp.connectors, start=1):
                for point, unit in UNITS.items():
                    name = f"{dev}/{point}"
                    self.targets[name] = (cp, n, unit)
                    ext.on_setpoint(name, on_expire=self.expire, timeout=cfg.answer_timeout + 2.0)(
                        self.apply
                    )

    def profile_id(self, n: int) -> int:
        return self.cfg.profile_id_base + n

    def payload(self, link: Link, cp: ChargePointConfig, n: int, unit: str, limit: float,
                req: SetpointRequest) -> dict[str, Any]:  # fmt: skip
        tx = ""
        if cp.profile == "TxProfile":
            tx = link.observer.connector(n).tx_id
            if not tx:
                raise NoTransaction(f"no transaction on connector {n}: applies at the next one")
        return set_profile(
            link.version,
            profile_id=self.profile_id(n),
            stack_level=self.cfg.stack_level,
            purpose=cp.profile,
            connector=n,
            unit=unit,
            limit=limit,
            valid_to=dt.datetime.fromtimestamp(req.expires_at, dt.UTC),
            transaction_id=tx,
        )

    async def apply(self, req: SetpointRequest) -> Result:
        cp, n, unit = self.targets[req.name]
        value = float(req.value)
        if value < 0:
            return Rejected("a charging limit cannot be negative")
        limit = round(value, 1)  # OCPP 1.6: multipleOf 0.1
        link = self.server.links.get(cp.id)
        if link is None:
            return Rejected(f"charge point {cp.id} is not connected")
        waiting: Unconfirmed | None = None
        try:
            call = link.call("SetChargingProfile", self.payload(link, cp, n, unit, limit, req))
        except NoTransaction as err:  # in force: sent when a transaction starts
            waiting = Unconfirmed(str(err))
        except ProxyCallError as err:
            return Rejected(str(err))
        previous = self.in_force.get((cp.id, n))
        self.in_force[(cp.id, n)] = InForce(req, unit, limit)
        if previous is not None and previous.req.name != req.name:
            replaced = Rejected(f"replaced by {req.name}")
            self._later(self.ext.setpoints.report_outcome(previous.req, replaced))
        if waiting is not None:
            return waiting
        done, _ = await asyncio.wait({call.answer}, timeout=self.cfg.answer_timeout)
        if done:
            return self._outcome(req, call)
        self._later(self._follow(req, call))
        return Unconfirmed(self._why_late(cp.id, link, call))

    def _why_late(self, cp_id: str, link: Link, call: ProxyCall) -> str:
        within = f"within {self.cfg.answer_timeout:g} s"
        if call.sent.done():
            return f"charge point {cp_id} has not answered {within}"
        waits = f"charge point {cp_id} not sent the profile yet ({within}): "
        if link.outstanding is None:
            return waits + "calls of the proxy queued before it"
        who = "the proxy's previous call" if link.outstanding[0] == "proxy" else "a SCADA call"
        return waits + f"{who} ({link.outstanding[1]}) is still unanswered"

    def _outcome(self, req: SetpointRequest, call: ProxyCall) -> Result:
        try:
            answer: Frame = call.answer.result()
        except ProxyCallError as err:
            if call.sent.done():  # it reached the charger: it may run it (sent again later)
                return Unconfirmed(f"{err} before answering")
            return self._rejected(req, str(err))
        if answer.kind == CALLERROR:
            return self._rejected(
                req, f"the charger answered {answer.error_code}: {answer.description}"
            )
        status = answer.payload.get("status")
        if status == "Accepted":
            return Applied(round(float(req.value), 1))
        return self._rejected(req, f"the charger answered {status}")

    def _rejected(self, req: SetpointRequest, reason: str) -> Rejected:
        cp, n, _ = self.targets[req.name]
        current = self.in_force.get((cp.id, n))
        if current is not None and current.req.id == req.id:
            del self.in_force[(cp.id, n)]
        return Rejected(reason)

    async def _follow(self, req: SetpointRequest, call: ProxyCall) -> None:
        """The answer that came after UNCONFIRMED, reported as the real outcome."""
        try:
            async with asyncio.timeout(self.cfg.call_timeout):
                await asyncio.shield(call.answer)
        except TimeoutError:
            log.warning("setpoint %s (%s): the charger never answered", req.name, req.id)
            return
        except ProxyCallError:
            pass  # disconnected: it may or may not run it; sent again at reconnection
        if call.answer.exception() is None:
            await self.ext.setpoints.report_outcome(req, self._outcome(req, call))

    def _later(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self.followups.add(task)
        task.add_done_callback(self.followups.discard)

    async def expire(self, req: SetpointRequest) -> None:
        """Fall back: clear our profile (only if it is still this setpoint's)."""
        if not req.id:  # at start: the SDK's "nothing in force"; the profile's validTo holds
            return
        cp, n, _ = self.targets[req.name]
        current = self.in_force.get((cp.id, n))
        if current is None or current.req.id != req.id:
            return
        del self.in_force[(cp.id, n)]
        link = self.server.links.get(cp.id)
        if link is None:
            return  # the profile's validTo ends it on the charger
        try:
            call = link.call(
                "ClearChargingProfile", clear_profile(link.version, self.profile_id(n))
            )
            async with asyncio.timeout(self.cfg.answer_timeout):
                answer = await call.answer
            log.info("setpoint %s expired: profile cleared (%s)", req.name, answer.payload)
        except (ProxyCallError, TimeoutError) as err:
            log.warning("setpoint %s expired: clearing the profile failed: %s", req.name, err)

    def reconnected(self, cp_id: str, link: Link) -> None:
        """A charger (re)connected: make its profiles in our id range match what is in force.
        Ours in force are sent again (same id: replaced, never doubled) and their outcome
        reported anew; where nothing is in force ours is cleared (a setpoint that ended while
        the charger was away would otherwise run on the charger until its validTo)."""
        link.on_profiles_cleared = lambda: self._later(
            self._reapply(cp_id, link, "the SCADA cleared the charging profiles")
        )
        link.observer.on_transaction = lambda n, tx: self._transaction(cp_id, link, n, tx)
        cp = next(c for c in self.cfg.charge_points if c.id == cp_id)
        for n in range(1, len(cp.connectors) + 1):
            if (cp_id, n) in self.in_force:
                self._later(self._resend(cp_id, link, n, "the charge point connected again"))
            else:
                self._later(self._clear(link, cp_id, n))

    async def _clear(self, link: Link, cp_id: str, n: int) -> None:
        """Nothing in force on connector n: our profile, if the charger kept one, goes."""
        try:
            call = link.call(
                "ClearChargingProfile", clear_profile(link.version, self.profile_id(n))
            )
            async with asyncio.timeout(self.cfg.call_timeout):
                answer = await call.answer
            log.info("charge point %s: profile %d cleared at connection (%s)", cp_id,
                     self.profile_id(n), answer.payload or answer.error_code)  # fmt: skip
        except (ProxyCallError, TimeoutError) as err:
            log.warning("charge point %s: clearing profile %d failed: %s", cp_id,
                        self.profile_id(n), err)  # fmt: skip

    def _transaction(self, cp_id: str, link: Link, n: int, tx: str) -> None:
        """A TxProfile lives as long as its transaction (OCPP 1.6 3.13.4; 2.0.1 K01): ours is
        sent again for each new one; between transactions the setpoint is UNCONFIRMED."""
        active = self.in_force.get((cp_id, n))
        cp, _, _ = self.targets[active.req.name] if active else (None, 0, "")
        if active is None or cp is None or cp.profile != "TxProfile":
            return
        if tx:
            self._later(self._resend(cp_id, link, n, f"transaction {tx} started"))
        else:
            outcome = Unconfirmed(
                f"the transaction on connector {n} ended and the charger dropped the TxProfile:"
                " applies at the next transaction"
            )
            self._later(self.ext.setpoints.report_outcome(active.req, outcome))

    async def _reapply(self, cp_id: str, link: Link, why: str) -> None:
        for cp_in, n in list(self.in_force):
            if cp_in == cp_id:
                await self._resend(cp_id, link, n, why)

    async def _resend(self, cp_id: str, link: Link, n: int, why: str) -> None:
        """Send connector n's profile in force again and report what the charger says now."""
        active = self.in_force.get((cp_id, n))
        if active is None:
            return
        req = active.req
        cp, _, _ = self.targets[req.name]
        try:
            payload = self.payload(link, cp, n, active.unit, active.limit, req)
            call = link.call("SetChargingProfile", payload)
        except NoTransaction as err:
            outcome: Result = Unconfirmed(f"{why}; {err}")
        except ProxyCallError as err:
            outcome = self._rejected(req, f"{why}; ours not sent again: {err}")
        else:
            done, _ = await asyncio.wait({call.answer}, timeout=self.cfg.answer_timeout)
            if done:
                outcome = self._outcome(req, call)
                if isinstance(outcome, Rejected | Unconfirmed):
                    outcome = type(outcome)(f"{why}; sent again: {outcome.reason}")
            else:
                outcome = Unconfirmed(f"{why}; sent again, not answered yet")
                self._later(self._follow(req, call))
        log.info("setpoint %s: %s; now %s", req.name, why, outcome)
        await self.ext.setpoints.report_outcome(req, outcome)
