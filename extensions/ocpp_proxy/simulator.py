"""Simulators for the OCPP proxy, for tests, benchmarks and `smx demo`: a charging point with
an EV (sim_charger.py, the `ocpp` library, 1.6 or 2.0.1) and a minimal SCADA/CSMS
(sim_csms.py). Each runs if given:

    python -m extensions.ocpp_proxy.simulator --csms-port 9100
    python -m extensions.ocpp_proxy.simulator --charger ws://127.0.0.1:9000/CP1 --version ocpp1.6
    python -m extensions.ocpp_proxy.simulator --csms-port 9100 --charger ws://127.0.0.1:9000/CP1

The charger reconnects every second until it gets through (start it before the proxy if you
like), charges for `--session` s at up to `--max-current` A, reports MeterValues every
`--interval` s, and plugs in again `--pause` s after each session. Under `smx run` (a
`[simulators.NAME]` table) the same keys come from its config: `csms_port`, `charger`,
`version`, `interval`, `session`, `pause`, `max_current`, `speed`, `password`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

from smx.aio import stop_on_signals
from smx.process_env import load_config

from .sim_charger import Ev, SimCharger
from .sim_csms import SimCsms

__all__ = ["main"]

log = logging.getLogger("ocpp-simulator")


async def _charger_forever(args: argparse.Namespace) -> None:
    while True:
        sim = SimCharger(
            args.charger,
            args.version,
            ev=Ev(max_current=args.max_current),
            interval=args.interval,
            session_s=args.session,
            password=args.password,
            speed=args.speed,
        )
        try:
            await sim.run(plug_after=1.0, again_after=args.pause)
        except Exception as err:  # the proxy is not there yet, or went away
            log.info("charger: %s; again in 1 s", err)
        await asyncio.sleep(1.0)


async def _run(args: argparse.Namespace) -> None:
    stop = stop_on_signals()
    csms = None
    tasks = []
    if args.csms_port is not None:
        csms = await SimCsms(args.host, args.csms_port).start()
        print(f"ready: CSMS {csms.url}/<charge point id>", flush=True)
    if args.charger:
        tasks.append(asyncio.ensure_future(_charger_forever(args)))
        print(f"ready: charger -> {args.charger} ({args.version})", flush=True)
    await stop.wait()
    for task in tasks:
        task.cancel()
    if csms is not None:
        await csms.stop()


def main(argv: list[str] | None = None) -> None:
    config: dict[str, Any] = load_config(os.environ)
    p = argparse.ArgumentParser(
        prog="python -m extensions.ocpp_proxy.simulator",
        description=(
            "Simulators for the OCPP proxy: a minimal CSMS (the SCADA side, --csms-port) and/or "
            "a charging point with an EV (--charger). Give one or both. The charger "
            "reconnects every second until it gets through; like a real charger it drops a "
            "TxProfile when its transaction ends. Under `smx run` a [simulators.NAME] table "
            "gives the defaults (csms_port, charger, version, interval, session, pause, "
            "max_current, speed, password). See docs/OCPP.md."
        ),
    )
    p.add_argument(
        "--host",
        default=config.get("host", "127.0.0.1"),
        help="address the CSMS listens on (default %(default)s)",
    )
    p.add_argument(
        "--csms-port",
        type=int,
        default=config.get("csms_port"),
        help="run the CSMS on this port (accepts everything; 1.6 transaction ids from 1)",
    )
    p.add_argument(
        "--charger",
        default=config.get("charger", ""),
        help="run a charger connecting to this URL, the proxy's address and the "
        "charge point id, e.g. ws://127.0.0.1:9000/CP1",
    )
    p.add_argument(
        "--version",
        default=config.get("version", "ocpp1.6"),
        choices=["ocpp1.6", "ocpp2.0.1"],
        help="the charger's OCPP version (default %(default)s)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=config.get("interval", 5.0),
        help="seconds between MeterValues (default %(default)s)",
    )
    p.add_argument(
        "--session",
        type=float,
        default=config.get("session", 600.0),
        help="seconds a charging session lasts at most (default %(default)s)",
    )
    p.add_argument(
        "--pause",
        type=float,
        default=config.get("pause", 30.0),
        help="seconds before the EV plugs in again (default %(default)s)",
    )
    p.add_argument(
        "--max-current",
        type=float,
        default=config.get("max_current", 16.0),
        help="the EV's maximum current per phase, A (default %(default)s); it "
        "charges at the lower of this and the charging profiles",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=config.get("speed", 1.0),
        help="simulated seconds per second for the energy and SoC (default %(default)s)",
    )
    p.add_argument(
        "--password",
        default=config.get("password", ""),
        help="the charger's Basic auth password (security profile 1 and 2)",
    )
    args = p.parse_args(argv)
    if args.csms_port is None and not args.charger:
        p.error("nothing to simulate: give --csms-port and/or --charger")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
