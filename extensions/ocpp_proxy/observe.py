"""What the proxy learns from the frames it forwards: per connector, its status, the transaction
(state, id, session energy) and the meter values with the charger's own timestamps.

The observer sees every frame of one charge point session, both ways, after it was forwarded.
It pairs each CALLRESULT with its CALL (the result alone has no action) and hands readings by
connector to `emit(connector, {point: Reading})`. 1.6 numbers connectors; 2.0.1 numbers EVSEs
(one connector each here): both are "connector N", device N of the charge point's config.

The observer only reads: the link queues each frame before it is observed and catches what
the observer raises, so a payload it cannot make sense of never touches forwarding. Its
tables are bounded: connectors beyond the charge point's configured ones are ignored, and it
remembers at most TRANSACTIONS transaction ids.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from extensions.sdk import Reading

from .frames import CALL, CALLRESULT, Frame
from .meter import sampled_values

__all__ = ["Emit", "Observer"]

Emit = Callable[[int, dict[str, Reading]], None]
REMEMBER = 256  # calls awaiting their result, per direction
TRANSACTIONS = 64  # transaction id -> connector, the most recent ones


def _number(value: Any) -> float | None:
    """A JSON number (not a bool), else None."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


@dataclass
class Connector:
    status: str = ""
    tx_id: str = ""
    start_kwh: float | None = None  # the energy register at the start of the transaction
    # The power and current points its meter values gave: 0 when the transaction ends.
    flowing: set[str] = field(default_factory=set)


class Observer:
    def __init__(self, version: str, emit: Emit, connectors: int = 16) -> None:
        self.version = version
        self.emit = emit
        self.max_connector = connectors  # connectors 1..this are observed
        self.connectors: dict[int, Connector] = {}
        # CALLs waiting for their result, by sender: "cp" or "csms" (the SCADA or the proxy)
        self.calls: dict[str, OrderedDict[str, Frame]] = {
            "cp": OrderedDict(),
            "csms": OrderedDict(),
        }
        self.tx_connector: OrderedDict[str, int] = OrderedDict()  # transaction id -> connector
        # Told when a connector's transaction changes: (connector, new id or "" when ended).
        self.on_transaction: Callable[[int, str], None] | None = None

    def connector(self, n: int) -> Connector:
        return self.connectors.setdefault(n, Connector())

    def _ours(self, n: Any) -> TypeGuard[int]:
        """`n` is a connector of this charge point's config (0 is the charge point itself)."""
        return type(n) is int and 0 < n <= self.max_connector

    def _remember_tx(self, tx: str, n: int) -> None:
        self.tx_connector[tx] = n
        self.tx_connector.move_to_end(tx)
        while len(self.tx_connector) > TRANSACTIONS:
            self.tx_connector.popitem(last=False)

    def action_of(self, sender: str, frame: Frame) -> str:
        """The action of a CALL, or of the CALL a result from `sender` answers ("" unknown)."""
        if frame.kind == CALL:
            return frame.action
        other = "csms" if sender == "cp" else "cp"
        call = self.calls[other].get(frame.id)
        return call.action if call else ""

    def seen(self, sender: str, frame: Frame) -> None:
        """A frame `sender` sent, forwarded (or answered by the proxy)."""
        if frame.kind == CALL:
            calls = self.calls[sender]
            calls[frame.id] = frame
            while len(calls) > REMEMBER:
                calls.popitem(last=False)
            if sender == "cp":
                self._charger_call(frame)
            return
        other = "csms" if sender == "cp" else "cp"
        call = self.calls[other].pop(frame.id, None)
        if call is not None and frame.kind == CALLRESULT and sender == "csms":
            self._answered(call, frame.payload)

    # -- what chargers say --------------------------------------------------------------------

    def _charger_call(self, call: Frame) -> None:
        p = call.payload
        if call.action == "StatusNotification":
            self._status(p)
        elif call.action == "MeterValues":
            n = p.get("connectorId", p.get("evseId"))
            if self._ours(n):
                tx = p.get("transactionId")  # 1.6: a transaction begun before we saw it
                if type(tx) is int and self.connector(n).tx_id != str(tx):
                    self._remember_tx(str(tx), n)
                    self._transaction(n, str(tx), {}, None)
                self._meter_values(n, p.get("meterValue"))
        elif call.action == "StopTransaction":  # 1.6
            n = self.tx_connector.pop(str(p.get("transactionId")), None)
            if n is not None:
                stop = _number(p.get("meterStop"))
                readings = {}
                if stop is not None:
                    readings = self._energy(n, stop / 1000.0)
                self._transaction(n, "", readings, _time(p.get("timestamp")))
        elif call.action == "TransactionEvent":  # 2.0.1
            self._transaction_event(p)

    def _answered(self, call: Frame, result: Any) -> None:
        if call.action == "StartTransaction" and isinstance(result, dict):  # 1.6
            p = call.payload
            n, tx = p.get("connectorId"), result.get("transactionId")
            if self._ours(n) and type(tx) is int:
                c = self.connector(n)
                start = _number(p.get("meterStart"))  # a string here is not a reading
                c.start_kwh = start / 1000.0 if start is not None else None
                self._remember_tx(str(tx), n)
                readings = {}
                if c.start_kwh is not None:
                    readings = self._energy(n, c.start_kwh)
                self._transaction(n, str(tx), readings, _time(p.get("timestamp")))

    def _status(self, p: dict[str, Any]) -> None:
        n = p.get("connectorId") if self.version == "1.6" else p.get("evseId")
        status = p.get("status") if self.version == "1.6" else p.get("connectorStatus")
        if not self._ours(n) or not isinstance(status, str):
            return  # connector 0 is the charge point itself
        self.connector(n).status = status
        at = _time(p.get("timestamp"))
        readings = {"status": Reading(status, source_time=at)}
        if "errorCode" in p:
            readings["error"] = Reading(str(p["errorCode"]), source_time=at)
        self.emit(n, readings)

    def _transaction_event(self, p: dict[str, Any]) -> None:
        info = _dict(p.get("transactionInfo"))
        tx = info.get("transactionId", "")
        if not isinstance(tx, str):
            return
        evse = _dict(p.get("evse")).get("id")
        n = evse if type(evse) is int else self.tx_connector.get(tx)
        if not tx or not self._ours(n):
            return
        self._remember_tx(tx, n)
        at = _time(p.get("timestamp"))
        event = p.get("eventType")
        c = self.connector(n)
        if event == "Started" or c.tx_id != tx:
            c.start_kwh = None
            self._transaction(n, tx, {}, at)
        if "chargingState" in info:
            self.emit(n, {"charging_state": Reading(str(info["chargingState"]), source_time=at)})
        self._meter_values(n, p.get("meterValue"))
        if event == "Ended":
            self.tx_connector.pop(tx, None)
            self._transaction(n, "", {}, at)

    # -- readings -----------------------------------------------------------------------------

    def _transaction(
        self, n: int, tx: str, readings: dict[str, Reading], at: dt.datetime | None
    ) -> None:
        c = self.connector(n)
        changed = c.tx_id != tx
        c.tx_id = tx
        if not tx:
            c.start_kwh = None
        readings["tx_active"] = Reading(bool(tx), source_time=at)
        readings["tx_id"] = Reading(tx, source_time=at)
        if changed and not tx:
            # A charger's last meter value is of the running transaction (11 kW); after its
            # end nothing flows, and many chargers send nothing more until the next one.
            readings.update({name: Reading(0.0, source_time=at) for name in c.flowing})
            c.flowing.clear()
        self.emit(n, readings)
        if changed and self.on_transaction is not None:
            self.on_transaction(n, tx)

    def _energy(self, n: int, kwh: float, at: dt.datetime | None = None) -> dict[str, Reading]:
        c = self.connector(n)
        readings = {"Ap": Reading(kwh, source_time=at)}
        if c.tx_id and c.start_kwh is None:
            c.start_kwh = kwh  # 2.0.1: the first register reading of the transaction
        if c.start_kwh is not None:
            readings["E_session"] = Reading(max(0.0, kwh - c.start_kwh), source_time=at)
        return readings

    def _meter_values(self, n: int, meter_values: Any) -> None:
        if not isinstance(meter_values, list):
            return
        quality = "UNCERTAIN" if self.connector(n).status == "Faulted" else "GOOD"
        for mv in meter_values:
            if not isinstance(mv, dict) or not isinstance(mv.get("sampledValue"), list):
                continue
            at = _time(mv.get("timestamp"))
            values = sampled_values(mv["sampledValue"])
            readings: dict[str, Reading] = {}
            if "Ap" in values:
                readings.update(self._energy(n, values.pop("Ap"), at))
            for name, value in values.items():
                readings[name] = Reading(value, quality, at)
                if name.startswith(("P", "I")) and name != "I_offered":
                    self.connector(n).flowing.add(name)
            if readings:
                self.emit(n, readings)
