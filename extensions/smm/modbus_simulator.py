"""A Modbus meter simulator on pymodbus' own server (RTU on a serial port/pty, or TCP): one or
more meters (unit ids), each serving the registers of a shipped or user map, with values that
change live (or stay as set, for tests).

Like a real RS-485 bus, a unit id nobody serves gets no answer at all (pymodbus' simulator would
answer with an exception). Optionally the simulator emulates the line time of a real bus at a
given baud (pymodbus over a pty has none): each answer is delayed by the time the request and the
answer take on the wire, plus a turnaround time of the meter.

    python -m extensions.smm.modbus_simulator --tcp 127.0.0.1:5020 --meter 1:eastron_sdm630
    python -m extensions.smm.modbus_simulator --rtu /dev/pts/5 --baud 9600 --emulate-line \\
        --meter 1-8:eastron_sdm630 --meter 9:carlogavazzi_em24
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from extensions.sdk.protocols.modbus_maps import RegisterMap
from smx.aio import stop_on_signals

from .meter_maps import resolve_map

__all__ = ["BusSimulator", "SimMeter", "phase_values", "typical_values", "main"]

log = logging.getLogger(__name__)


# The simulated house, one load per phase: active power P_k = base + amp * sin(t / period +
# phase) in W, at a constant displacement power factor (inductive: Q > 0, load reference), on a
# voltage that swings a little. Everything else follows from these, as in a real meter.
_PHASES = (
    # base W, amplitude W, period s, phase, power factor, voltage offset V
    (1000.0, 160.0, 10.0, 0.0, 0.97, 0.8),
    (750.0, 120.0, 13.0, 2.1, 0.93, -0.6),
    (550.0, 90.0, 17.0, 4.2, 0.99, 0.2),
)
_AP0, _AM0, _RP0, _RM0 = 12345.6, 2345.6, 3456.7, 123.4  # the indexes at t = 0 (kWh, kvarh)


def phase_values(k: int, t: float) -> dict[str, float]:
    """Phase `k` (0..2) of the simulated house at time `t` (s), by vocabulary name (U, I, P, Q,
    S, PF), and `Wh`, the active energy drawn since t = 0 (the exact integral of P):
    S = U * I, P = S * PF, Q = sqrt(S^2 - P^2)."""
    base, amp, period, phase, pf, du = _PHASES[k]
    p = base + amp * math.sin(t / period + phase)
    s = p / pf
    u = 230.0 + du + 2.0 * math.sin(t / 10.0 + k)
    joules = base * t + amp * period * (math.cos(phase) - math.cos(t / period + phase))
    return {
        "U": u,
        "I": s / u,
        "P": p,
        "Q": math.sqrt(s * s - p * p),
        "S": s,
        "PF": p / s,
        "Wh": joules / 3600.0,
    }


def typical_values(register_map: RegisterMap, t: float = 0.0) -> dict[str, float]:
    """Plausible, physically consistent values for every point of a map at time `t` (s): a
    house importing ~2.3 kW on three phases (the first phase alone, ~1 kW, on a single-phase
    meter), with slow swings, and indexes that advance with the power.

    Per phase S = U * I, |P| <= S, |Q| <= S, PF = P / S. Totals are the sums of the phases
    (P, Q, and S as the arithmetic sum, as meters compute it), PF = P / S, I the sum of the
    phase currents and U their mean. The import indexes are the integrals of P and Q."""
    phases = [phase_values(k, t) for k in range(register_map.phases)]
    total_p = sum(ph["P"] for ph in phases)
    total_s = sum(ph["S"] for ph in phases)
    # Q = P * tan(phi) per phase, so its integral is the phase's energy times tan(phi).
    reactive_wh = sum(ph["Wh"] * ph["Q"] / ph["P"] for ph in phases)
    totals = {
        "U": sum(ph["U"] for ph in phases) / len(phases),
        "I": sum(ph["I"] for ph in phases),
        "P": total_p,
        "Q": sum(ph["Q"] for ph in phases),
        "S": total_s,
        "PF": total_p / total_s,
        "f": 50.0 + 0.02 * math.sin(t / 10.0),
        "Ap": _AP0 + sum(ph["Wh"] for ph in phases) / 1000.0,
        "Am": _AM0,  # the house only imports: the export indexes stand still
        "Rp": _RP0 + reactive_wh / 1000.0,
        "Rm": _RM0,
    }
    out: dict[str, float] = {}
    for name in register_map.points:
        if name in totals:
            out[name] = totals[name]
        elif name[-1] in "123" and name[:-1] in ("U", "I", "P", "Q", "S", "PF"):
            out[name] = phases[int(name[-1]) - 1][name[:-1]]
    return out


def _sunspec_factor(
    register_map: RegisterMap, scale_register: int, values: Mapping[str, float]
) -> int:
    """The most precise power-of-ten exponent that keeps every value of that scale factor in
    its register's range."""
    users = [p for p in register_map.points.values() if p.scale_register == scale_register]
    for sf in range(-3, 6):
        if all(_fits(p.type, values.get(p.name, 0.0) / (p.scale * 10.0**sf)) for p in users):
            return sf
    return 5


def _fits(type_: str, raw: float) -> bool:
    limits = {"int16": 2**15 - 1, "uint16": 2**16 - 2, "int32": 2**31 - 1, "uint32": 2**32 - 2}
    limit = limits.get(type_)
    return limit is None or abs(raw) <= limit and (not type_.startswith("u") or raw >= 0)


@dataclass
class SimMeter:
    """One simulated meter: a unit id, its map, and what it shows."""

    unit: int
    register_map: RegisterMap
    live: bool = True
    values: dict[str, float] = field(default_factory=dict)
    scale_factors: dict[int, int] = field(default_factory=dict)
    registers: dict[int, int] = field(default_factory=dict)
    reads: int = 0

    def __post_init__(self) -> None:
        if not self.values:
            self.values = typical_values(self.register_map)
        self.refresh(self.values)

    def refresh(self, values: Mapping[str, float]) -> None:
        self.values = dict(values)
        m = self.register_map
        self.scale_factors = {a: _sunspec_factor(m, a, self.values) for a in m.scale_registers}
        self.registers = m.encode(self.values, self.scale_factors)

    def sim_device(self) -> SimDevice:
        """Everything the map reads is served (gaps within a request as zeros); all else is an
        illegal address, as on a real meter."""
        blocks = [
            SimData(b.start, count=b.count, values=0, datatype=DataType.REGISTERS)
            for b in self.register_map.blocks
        ]
        return SimDevice(self.unit, simdata=blocks)


class _Bus(SimCore):
    """pymodbus' SimCore with what a real bus does: silence for unknown units, the live values,
    and (optionally) the line time."""

    def __init__(self, sim: BusSimulator) -> None:
        super().__init__([m.sim_device() for m in sim.meters.values()])
        self.sim = sim

    async def async_getValues(  # noqa: N802 - pymodbus' name
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        meter = self.sim.meters.get(device_id)
        if meter is None or device_id in self.sim.silent:
            raise NoSuchIdException(f"no meter {device_id}")  # with ignore_missing_devices
        if meter.live:
            meter.refresh(typical_values(meter.register_map, time.monotonic() - self.sim.t0))
        runtime = self.devices[device_id]
        start, _, regs, _ = next(iter(runtime.block.values()))
        for addr, word in meter.registers.items():
            regs[addr - start] = word
        meter.reads += 1
        if self.sim.baudrate:
            await asyncio.sleep(self.sim.answer_delay(count))
        return await super().async_getValues(device_id, func_code, address, count)


class BusSimulator:
    """Meters on one simulated line. `await start_tcp(...)` or `await start_rtu(...)`, then
    `set_values(unit, {...})`, `silent.add(unit)` (a meter that died), `await stop()`."""

    def __init__(
        self,
        meters: list[SimMeter],
        *,
        baudrate: int = 0,
        bits_per_char: int = 10,
        turnaround: float = 0.0,
    ) -> None:
        self.meters = {m.unit: m for m in meters}
        self.silent: set[int] = set()
        self.baudrate = baudrate  # 0: no line-time emulation
        self.bits_per_char = bits_per_char
        self.turnaround = turnaround
        self.t0 = time.monotonic()
        self.server: ModbusSerialServer | ModbusTcpServer | None = None

    def answer_delay(self, registers: int) -> float:
        """Request (8 bytes) + answer (5 + 2n) on the wire, the 3.5-character silence that ends
        the request, and the meter's own turnaround."""
        char = self.bits_per_char / self.baudrate
        return (8 + 5 + 2 * registers + 3.5) * char + self.turnaround

    def set_values(self, unit: int, values: Mapping[str, float]) -> None:
        meter = self.meters[unit]
        meter.live = False
        meter.refresh({**meter.values, **values})

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 5020) -> None:
        self.server = ModbusTcpServer(
            self.meters[next(iter(self.meters))].sim_device(),
            address=(host, port),
            ignore_missing_devices=True,
        )
        await self._serve()

    async def start_rtu(self, port: str, baudrate: int = 9600) -> None:
        self.server = ModbusSerialServer(
            self.meters[next(iter(self.meters))].sim_device(),
            port=port,
            baudrate=baudrate,
            ignore_missing_devices=True,
        )
        await self._serve()

    async def _serve(self) -> None:
        assert self.server is not None
        self.server.context = _Bus(self)
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None


def _parse_meters(specs: list[str]) -> list[SimMeter]:
    meters = []
    for spec in specs:
        units, _, ref = spec.partition(":")
        first, _, last = units.partition("-")
        m = resolve_map(ref)
        meters += [SimMeter(u, m) for u in range(int(first), int(last or first) + 1)]
    return meters


async def _run(args: argparse.Namespace) -> None:
    sim = BusSimulator(
        _parse_meters(args.meter),
        baudrate=args.baud if args.emulate_line else 0,
        turnaround=args.turnaround,
    )
    if args.rtu:
        await sim.start_rtu(args.rtu, args.baud)
    else:
        host, _, port = args.tcp.rpartition(":")
        await sim.start_tcp(host or "127.0.0.1", int(port))
    log.info("simulating %d meter(s)", len(sim.meters))
    print("ready", flush=True)
    stop = stop_on_signals()
    await stop.wait()
    await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--rtu", help="serial port (e.g. one end of a socat pty pair)")
    where.add_argument("--tcp", help="host:port to listen on (loopback only)")
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument("--emulate-line", action="store_true", help="delay answers by line time")
    parser.add_argument("--turnaround", type=float, default=0.0, help="meter reaction time, s")
    parser.add_argument(
        "--meter", action="append", required=True, help="UNIT[-UNIT]:MAP (name or path)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
