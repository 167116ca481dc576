"""A connector as an SMX device (`ev<N>`): a PushedDevice fed by the proxy's observer.

A session of the device is a session of its charge point: it starts when the charger connects
(`online` = True) and ends when it disconnects, which the SDK records as a failure: `online`
turns False (GOOD: that is known), the other points BAD with their last values and their own
source times (the charger's MeterValues or status time, not the disconnection's), until the
charger is back. A connector that is idle for hours is fine (no silence timeout): the link,
not the data, says the device is alive.
"""

from __future__ import annotations

import asyncio
from typing import Any

from extensions.sdk import PointSpec, PushedDevice, Reading

__all__ = ["ConnectorDevice", "point_specs"]


def point_specs(dev: str) -> list[PointSpec]:
    def double(point: str, unit: str, text: str) -> PointSpec:
        return PointSpec(f"{dev}/{point}", unit=unit, description=text)

    return [
        PointSpec(f"{dev}/online", kind="bool", description="its charge point is connected"),
        PointSpec(f"{dev}/status", kind="string", description="OCPP connector status"),
        PointSpec(f"{dev}/error", kind="string", description="OCPP errorCode (1.6)"),
        PointSpec(f"{dev}/charging_state", kind="string", description="OCPP 2.0.1 chargingState"),
        PointSpec(f"{dev}/tx_active", kind="bool", description="a transaction is running"),
        PointSpec(f"{dev}/tx_id", kind="string", description="transaction id, '' when none"),
        double("P", "W", "active power, > 0 charging"),
        *(double(f"P{n}", "W", f"active power, phase {n}") for n in "123"),
        double("I", "A", "current (no phase given)"),
        *(double(f"I{n}", "A", f"current, phase {n}") for n in "123"),
        double("U", "V", "voltage (no phase given)"),
        *(double(f"U{n}", "V", f"voltage, phase {n}") for n in "123"),
        double("Ap", "kWh", "energy register (Energy.Active.Import.Register)"),
        double("SoC", "%", "the EV's state of charge"),
        double("E_session", "kWh", "energy of the running (or last) transaction"),
        double("I_offered", "A", "current the charger offers the EV (Current.Offered)"),
        PointSpec(
            f"{dev}/scada_up", kind="bool", description="its charge point's SCADA connection is up"
        ),  # fmt: skip
        PointSpec(
            f"{dev}/scada_stored",
            kind="int",
            description="its charge point's frames stored for the SCADA (outage store)",
        ),  # fmt: skip
        double("I_max_set", "A", "setpoint: charging current limit per phase (our profile)"),
        double("P_max_set", "W", "setpoint: charging power limit (our profile)"),
    ]


class ConnectorDevice(PushedDevice):
    reconnect_delay = 0.05  # `run` itself waits for the charger: no need to back off
    max_backoff = 0.5
    keep_source_times = True  # BAD at disconnection, each with its MeterValues (status) time

    def failure_readings(self, err: BaseException | str) -> dict[str, Any]:
        # GOOD: we know it is not connected, nor its SCADA connection (which goes with it)
        return {f"{self.name}/online": False, f"{self.name}/scada_up": False}

    def __init__(self, name: str, cp_id: str, connector: int) -> None:
        self.name, self.cp_id, self.connector = name, cp_id, connector
        self.queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()

    def feed(self, readings: dict[str, Reading]) -> None:
        """Observations by short point name (from the proxy's observer)."""
        self.queue.put_nowait({f"{self.name}/{k}": v for k, v in readings.items()})

    def connected(self) -> None:
        self.queue.put_nowait({f"{self.name}/online": True})

    def disconnected(self) -> None:
        self.queue.put_nowait(ConnectionError(f"charge point {self.cp_id} disconnected"))

    async def run(self) -> None:
        while True:
            item = await self.queue.get()
            if isinstance(item, BaseException):
                raise item
            self.publish(item)
