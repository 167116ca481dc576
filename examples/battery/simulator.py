"""A simulated battery: 10 kWh, +-5 kW, its state of charge following the power it runs at.

python -m examples.battery.simulator --port 7701
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from smx.process_env import load_config

from .protocol import decode, encode

CAPACITY_WH = 10_000.0
MAX_W = 5_000.0


class Battery:
    def __init__(self, soc: float = 50.0) -> None:
        self.soc = soc
        self.power = 0.0
        self._t = time.monotonic()

    def step(self) -> None:
        now = time.monotonic()
        self.soc += self.power * (now - self._t) / 3600 / CAPACITY_WH * 100
        self.soc = min(100.0, max(0.0, self.soc))
        if self.soc in (0.0, 100.0):
            self.power = 0.0  # full or empty: the BMS stops
        self._t = now

    def handle(self, request: dict) -> dict:
        self.step()
        if request.get("op") == "read":
            state = "CHARGING" if self.power > 0 else "DISCHARGING" if self.power < 0 else "STANDBY"
            return {"P": round(self.power, 1), "SoC": round(self.soc, 2), "state": state}
        if request.get("op") == "set" and isinstance(request.get("P"), int | float):
            self.power = max(-MAX_W, min(MAX_W, float(request["P"])))
            return {"P": self.power}
        return {"error": f"unknown request {request!r}"}


async def serve(host: str, port: int) -> None:
    battery = Battery()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    reply = battery.handle(decode(line))
                except ValueError as err:
                    reply = {"error": str(err)}
                writer.write(encode(reply))
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(client, host, port)
    print(f"battery simulator on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    port = args.port
    if port is None:  # under `smx run` the settings come as SMX_CONFIG
        port = int(load_config(os.environ).get("port", 7701))
    asyncio.run(serve(args.host, port))


if __name__ == "__main__":
    main()
