"""The example battery extension: polls the battery, owns `battery/P_set`.

Config (the `[extensions.battery.config]` table of site.toml, or SMX_CONFIG):
    host = "127.0.0.1"   port = 7701   interval = 1.0
"""

from __future__ import annotations

import asyncio
from typing import Any

from extensions.sdk import Applied, Clamped, Device, Extension, PointSpec, main_of

from .protocol import decode, encode

POINTS = [
    PointSpec("battery/P", unit="W", period=1.0, description="battery power, P > 0 charging"),
    PointSpec("battery/SoC", unit="%", period=1.0, description="state of charge"),
    PointSpec("battery/ESS_state", kind="string", period=1.0, description="as reported"),
    PointSpec("battery/P_set", unit="W", description="requested battery power"),
]


class BatteryLink(Device):
    """One TCP connection to the battery, reopened after any error."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.name = "battery"
        self.host = config.get("host", "127.0.0.1")
        self.port = int(config.get("port", 7701))
        self.interval = float(config.get("interval", 1.0))
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
            "battery/P": float(r["P"]),
            "battery/SoC": float(r["SoC"]),
            "battery/ESS_state": str(r["state"]),
        }

    async def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None


def setup(ext: Extension) -> None:
    ext.declare(POINTS)
    battery = BatteryLink(dict(ext.config))
    ext.add_device(battery)

    async def fall_back(req: Any) -> None:
        await battery.ask({"op": "set", "P": 0.0})  # autonomous mode: idle

    @ext.on_setpoint("battery/P_set", on_expire=fall_back)
    async def set_power(req: Any) -> Applied | Clamped:
        accepted = (await battery.ask({"op": "set", "P": float(req.value)}))["P"]
        if accepted != float(req.value):
            return Clamped(accepted, f"battery limit {abs(accepted):g} W")
        return Applied(accepted)


if __name__ == "__main__":
    main_of(setup)
