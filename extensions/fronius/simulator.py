"""A Fronius GEN24 Plus with battery and Smart Meter, for tests and `smx demo`: the Solar API
v1 over HTTP (sim_solar_api.py) and Modbus TCP SunSpec (sim_sunspec.py) on one simulated
plant (sim_plant.py), whose battery obeys model-124 writes and their revert timer.

    python -m extensions.fronius.simulator --http-port 8080 --modbus-port 5502

Under `smx run` (a `[simulators.NAME]` table) its config gives `host`, `http_port`,
`modbus_port`, `soc`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from smx.aio import stop_on_signals
from smx.process_env import load_config

from .sim_http import HttpServer
from .sim_plant import Plant
from .sim_solar_api import SolarApiResponder
from .sim_sunspec import SunSpecServer

__all__ = ["Simulator", "main"]


class Simulator:
    def __init__(
        self,
        host: str = "127.0.0.1",
        http_port: int = 0,
        modbus_port: int = 5502,
        plant: Plant | None = None,
    ) -> None:
        self.plant = plant or Plant()
        self.http = HttpServer(SolarApiResponder(self.plant), host, http_port)
        self.modbus = SunSpecServer(self.plant, host, modbus_port)

    async def start(self) -> Simulator:
        await self.http.start()
        await self.modbus.start()
        return self

    async def stop(self) -> None:
        await self.modbus.stop()
        await self.http.stop()


async def _run(host: str, http_port: int, modbus_port: int, soc: float) -> None:
    sim = await Simulator(host, http_port, modbus_port, Plant(soc=soc)).start()
    print(
        f"ready: Solar API http://{host}:{sim.http.port}, Modbus {host}:{modbus_port}", flush=True
    )
    stop = stop_on_signals()
    await stop.wait()
    await sim.stop()


def main(argv: list[str] | None = None) -> None:
    config = load_config(os.environ)
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--host", default=config.get("host", "127.0.0.1"))
    parser.add_argument("--http-port", type=int, default=config.get("http_port", 8080))
    parser.add_argument("--modbus-port", type=int, default=config.get("modbus_port", 5502))
    parser.add_argument("--soc", type=float, default=config.get("soc", 50.0))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    asyncio.run(_run(args.host, args.http_port, args.modbus_port, args.soc))


if __name__ == "__main__":
    main()
