"""A simulated battery: 10 kWh, +-5 kW, its state of charge following the power it runs at.

python -m examples.battery.simulator --port 7701
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable

from smx.aio import stop_on_signals
from smx.process_env import load_config

from .protocol import decode, encode

CAPACITY_WH = 10_000.0
MAX_W = 5_000.0


class Battery:
    """The battery's physics: P (W, > 0 charging) within +-MAX_W, SoC (%) the integral of P over
    the capacity, held within 0..100 %. A full battery takes no charge and an empty one gives
    none: the BMS accepts 0 W in that direction (the setpoint is clamped) and stops a battery
    that fills or empties while running. `clock` (s) is injectable for tests."""

    def __init__(self, soc: float = 50.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.soc = soc
        self.power = 0.0
        self._clock = clock
        self._t = clock()

    def step(self) -> None:
        now = self._clock()
        dt = now - self._t
        self._t = now
        if self.power == 0.0 or dt <= 0:
            return
        # Energy to the limit in the current direction: the BMS stops the battery there.
        room_wh = (100.0 - self.soc if self.power > 0 else self.soc) / 100 * CAPACITY_WH
        if abs(self.power) * dt / 3600 >= room_wh:
            self.soc = 100.0 if self.power > 0 else 0.0
            self.power = 0.0
        else:
            self.soc += self.power * dt / 3600 / CAPACITY_WH * 100

    def accept(self, requested: float) -> float:
        """The power the battery will run at when asked for `requested` W."""
        power = max(-MAX_W, min(MAX_W, requested))
        if (power > 0 and self.soc >= 100.0) or (power < 0 and self.soc <= 0.0):
            return 0.0
        return power

    def state(self) -> str:
        return "CHARGING" if self.power > 0 else "DISCHARGING" if self.power < 0 else "STANDBY"

    def handle(self, request: dict) -> dict:
        self.step()
        if request.get("op") == "read":
            return {"P": round(self.power, 1), "SoC": round(self.soc, 2), "state": self.state()}
        if request.get("op") == "set" and isinstance(request.get("P"), int | float):
            self.power = self.accept(float(request["P"]))
            return {"P": self.power}
        return {"error": f"unknown request {request!r}"}


async def serve(host: str, port: int, stop: asyncio.Event | None = None) -> None:
    battery = Battery()
    clients: set[asyncio.StreamWriter] = set()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        clients.add(writer)
        try:
            while line := await reader.readline():
                try:
                    reply = battery.handle(decode(line))
                except ValueError as err:
                    reply = {"error": str(err)}
                writer.write(encode(reply))
                await writer.drain()
        finally:
            clients.discard(writer)
            writer.close()

    server = await asyncio.start_server(client, host, port)
    print(f"battery simulator on {host}:{port}", flush=True)
    async with server:
        if stop is None:
            await server.serve_forever()
        else:
            await stop.wait()
            for writer in list(clients):  # newer Pythons wait for open connections on close
                writer.close()


async def _serve_until_signalled(host: str, port: int) -> None:
    """As a process: SIGTERM (a supervisor's stop) or SIGINT ends it cleanly."""
    stop = stop_on_signals()
    await serve(host, port, stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    port = args.port
    if port is None:  # under `smx run` the settings come as SMX_CONFIG
        port = int(load_config(os.environ).get("port", 7701))
    asyncio.run(_serve_until_signalled(args.host, port))


if __name__ == "__main__":
    main()
