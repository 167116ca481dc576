"""The example battery extension: polls the battery, owns `<device>/P_set`.

Its points are named after its device id (its name unless site.toml gives `devices`), so two
batteries are simply two instances: `battery/P`, `battery2/P`.

Config (the `[extensions.battery.config]` table of site.toml, or SMX_CONFIG):
    host = "127.0.0.1"   port = 7701   interval = "1s"
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from extensions.sdk import (
    Applied,
    Clamped,
    Extension,
    PointSpec,
    PolledDevice,
    Seconds,
    SetpointRequest,
    main_of,
    setting,
)

from .protocol import decode, encode


@dataclass(frozen=True)
class BatteryConfig:
    host: str = "127.0.0.1"
    port: int = setting(7701, min=1, max=65535)
    interval: Seconds = setting(1.0, min=0.05, max=3600)


def points(dev: str) -> list[PointSpec]:
    return [
        PointSpec(f"{dev}/P", unit="W", period=1.0, description="battery power, P > 0 charging"),
        PointSpec(f"{dev}/SoC", unit="%", period=1.0, description="state of charge"),
        PointSpec(f"{dev}/ESS_state", kind="string", period=1.0, description="as reported"),
        PointSpec(f"{dev}/P_set", unit="W", description="requested battery power"),
    ]


class BatteryLink(PolledDevice):
    """One TCP connection to the battery, reopened after any error."""

    def __init__(self, dev: str, config: BatteryConfig) -> None:
        self.name = dev
        self.host, self.port = config.host, config.port
        self.interval = config.interval
        self.timeout = 2.0
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()  # poll and setpoint share the one connection

    async def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        async with self._lock:
            try:
                if self._conn is None:
                    self._conn = await asyncio.open_connection(self.host, self.port)
                reader, writer = self._conn
                writer.write(encode(request))
                await writer.drain()
                reply = decode(await reader.readline())
            except (OSError, ValueError, asyncio.CancelledError):
                await self.close()
                raise
        if "error" in reply:
            raise RuntimeError(f"battery says: {reply['error']}")
        return reply

    async def poll(self) -> dict[str, Any]:
        r = await self.ask({"op": "read"})
        return {
            f"{self.name}/P": float(r["P"]),
            f"{self.name}/SoC": float(r["SoC"]),
            f"{self.name}/ESS_state": str(r["state"]),
        }

    async def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None


def setup(ext: Extension) -> None:
    dev = ext.device_ids[0]
    ext.declare(points(dev))
    battery = BatteryLink(dev, ext.settings(BatteryConfig))
    ext.add_device(battery)

    async def fall_back(req: SetpointRequest) -> None:
        await battery.ask({"op": "set", "P": 0.0})  # autonomous mode: idle

    @ext.on_setpoint(f"{dev}/P_set", on_expire=fall_back, timeout=5.0)
    async def set_power(req: SetpointRequest) -> Applied | Clamped:
        accepted = (await battery.ask({"op": "set", "P": float(req.value)}))["P"]
        if accepted != float(req.value):
            return Clamped(accepted, f"battery limit {abs(accepted):g} W")
        return Applied(accepted)


if __name__ == "__main__":
    main_of(setup)
