"""The simulator's Modbus TCP SunSpec side, on pymodbus' server: unit 1 is the GEN24 (models 1,
103, 120, 124, 160), unit 200 its Smart Meter (models 1, 203), as Fronius lays them out
(common model L = 65). Registers are encoded with pysunspec2's own encoder from the plant's
state at every read. Writes are accepted only on model 124's control registers (StorCtl_Mod,
the rates and their timers, ChaGriSet) and drive the plant; anything else is an illegal
address. Every write is recorded in `writes` for the tests.
"""

from __future__ import annotations

from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore
from sunspec2.device import Model

from extensions.sdk.protocols.sunspec_models import fixed_points

from .sim_plant import Plant

__all__ = ["BASE", "INVERTER_UNIT", "METER_UNIT", "SunSpecServer", "models_of"]

BASE = 40000
INVERTER_UNIT, METER_UNIT = 1, 200
RATE_SF = -2  # InOutWRte_SF: rates in 0.01 %
_124 = {name: p.offset for name, p in fixed_points(124).items()}
WRITABLE = {
    _124[n]
    for n in (
        "StorCtl_Mod",
        "OutWRte",
        "InWRte",
        "InOutWRte_WinTms",
        "InOutWRte_RvrtTms",
        "InOutWRte_RmpTms",
        "ChaGriSet",
    )
}
_CHA_ST = {"OFF": 1, "EMPTY": 2, "DISCHARGING": 3, "CHARGING": 4, "FULL": 5, "HOLDING": 6}


def _r(value: float, sf: int) -> int:
    return round(value / 10.0**sf)


def _word(percent: float) -> int:
    return _r(percent, RATE_SF)


def models_of(plant: Plant, unit: int, control: dict[str, int]) -> list[dict[str, Any]]:
    """The models of a unit, as pysunspec2 data ({"ID", "L", point: raw value})."""
    t = plant.now_t()
    u = [230.0 + 1.5 * k for k in range(3)]
    if unit == METER_UNIT:
        grid = plant.grid()
        phases = [grid * share for share in (0.4, 0.35, 0.25)]
        return [
            {"ID": 1, "L": 65, "Mn": "Fronius", "Md": "Smart Meter TS 65A-3", "SN": "sim-0200"},
            {
                "ID": 203,
                "L": 105,
                "A": _r(sum(abs(p) / v for p, v in zip(phases, u, strict=True)), -2),
                **{f"Aph{c}": _r(abs(p) / v, -2) for c, p, v in zip("ABC", phases, u, strict=True)},
                "A_SF": -2,
                **{f"PhVph{c}": _r(v, -1) for c, v in zip("ABC", u, strict=True)},
                "PhV": _r(sum(u) / 3, -1),
                "V_SF": -1,
                "Hz": 5000,
                "Hz_SF": -2,
                "W": _r(grid, 0),
                **{f"Wph{c}": _r(p, 0) for c, p in zip("ABC", phases, strict=True)},
                "W_SF": 0,
                "VA": _r(abs(grid), 0),
                "VA_SF": 0,
                "VAR": 0,
                "VAR_SF": 0,
                "PF": 1000 if grid >= 0 else -1000,
                "PF_SF": -1,
                "TotWhImp": _r(plant.import_wh, 0),
                "TotWhExp": _r(plant.export_wh, 0),
                "TotWh_SF": 0,
            },
        ]
    ac = plant.ac()
    pv = plant.pv(t)
    strings = (pv * 0.6, pv * 0.4)
    return [
        {
            "ID": 1,
            "L": 65,
            "Mn": "Fronius",
            "Md": "Primo GEN24 5.0 Plus",
            "SN": "sim-0001",
            "Vr": "1.0-sim",
        },
        {
            "ID": 103,
            "L": 50,
            **{f"Aph{c}": _r(abs(ac) / 3 / v, -2) for c, v in zip("ABC", u, strict=True)},
            "A": _r(abs(ac) / 3 * sum(1 / v for v in u), -2),
            "A_SF": -2,
            **{f"PhVph{c}": _r(v, -1) for c, v in zip("ABC", u, strict=True)},
            "V_SF": -1,
            "W": _r(ac, 0),
            "W_SF": 0,
            "Hz": 5000,
            "Hz_SF": -2,
            "VA": _r(abs(ac), 0),
            "VA_SF": 0,
            "VAr": 0,
            "VAr_SF": 0,
            "PF": 100,
            "PF_SF": 0,
            "WH": _r(plant.inverter_wh, 0),
            "WH_SF": 0,
            "DCW": _r(pv, 0),
            "DCW_SF": 0,
            "St": 4,
        },
        {
            "ID": 120,
            "L": 26,
            "DERTyp": 82,
            "WRtg": 5000,
            "WRtg_SF": 0,
            "VARtg": 5000,
            "VARtg_SF": 0,
            "ARtg": 2200,
            "ARtg_SF": -2,
            "WHRtg": _r(plant.capacity_wh, 0),
            "WHRtg_SF": 0,
            "MaxChaRte": _r(plant.w_cha_max, 0),
            "MaxChaRte_SF": 0,
            "MaxDisChaRte": _r(plant.w_cha_max, 0),
            "MaxDisChaRte_SF": 0,
        },
        {
            "ID": 124,
            "L": 24,
            "WChaMax": _r(plant.w_cha_max, 0),
            "WChaMax_SF": 0,
            "WChaGra": 100,
            "WDisChaGra": 100,
            "WChaDisChaGra_SF": 0,
            "MinRsvPct": _r(plant.reserve, -2),
            "MinRsvPct_SF": -2,
            "ChaState": _r(plant.soc, -2),
            "ChaState_SF": -2,
            "InBatV": 4000,
            "InBatV_SF": -1,
            "ChaSt": _CHA_ST[plant.state()],
            **control,
            "InOutWRte_SF": RATE_SF,
        },
        {
            "ID": 160,
            "L": 88,
            "DCA_SF": -2,
            "DCV_SF": -1,
            "DCW_SF": 0,
            "DCWH_SF": 0,
            "N": 4,
            "module": [
                {"ID": 1, "IDStr": "String 1", "DCW": _r(strings[0], 0), "DCV": 4200},
                {"ID": 2, "IDStr": "String 2", "DCW": _r(strings[1], 0), "DCV": 3200},
                {"ID": 3, "IDStr": "StCha 3", "DCW": _r(max(0.0, plant.battery), 0)},
                {"ID": 4, "IDStr": "StDisCha 4", "DCW": _r(max(0.0, -plant.battery), 0)},
            ],
        },
    ]


def _image(models: list[dict[str, Any]]) -> dict[int, int]:
    words = [0x5375, 0x6E53]
    for values in models:
        data = Model(model_id=values["ID"], model_len=values["L"], data=values).get_mb()
        words += [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    words += [0xFFFF, 0]
    return {BASE + i: w for i, w in enumerate(words)}


class _Context(SimCore):
    def __init__(self, server: SunSpecServer) -> None:
        blocks = [SimData(BASE, count=1, values=0, datatype=DataType.REGISTERS)]
        super().__init__([SimDevice(u, simdata=blocks) for u in (INVERTER_UNIT, METER_UNIT)])
        self.server = server

    async def async_getValues(  # noqa: N802 - pymodbus' name
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        if device_id not in (INVERTER_UNIT, METER_UNIT) or self.server.silent:
            raise NoSuchIdException(f"no unit {device_id}")  # no answer, as on a real bus
        image = self.server.image(device_id)
        try:
            return [image[a] for a in range(address, address + count)]
        except KeyError:
            return ExcCodes.ILLEGAL_ADDRESS

    async def async_setValues(  # noqa: N802 - pymodbus' name
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        if device_id != INVERTER_UNIT:
            return ExcCodes.ILLEGAL_ADDRESS
        return self.server.write(address, [int(v) for v in values])


class SunSpecServer:
    def __init__(self, plant: Plant, host: str = "127.0.0.1", port: int = 502) -> None:
        self.plant, self.host, self.port = plant, host, port
        self.writes: list[tuple[int, list[int]]] = []  # (address, words) as received
        self.silent = False
        self.refuse_writes = False  # answers writes with exception 2
        self.ignore_writes = False  # acknowledges writes and keeps nothing
        self.control = {
            "StorCtl_Mod": 0,
            "OutWRte": _word(100),
            "InWRte": _word(100),
            "InOutWRte_WinTms": 0,
            "InOutWRte_RvrtTms": 0,
            "InOutWRte_RmpTms": 0,
            "ChaGriSet": 1,
        }
        self.start_124 = self._start_of(124)
        self._server: ModbusTcpServer | None = None

    def _start_of(self, model_id: int) -> int:
        address = BASE + 2
        for values in models_of(self.plant, INVERTER_UNIT, self.control):
            if values["ID"] == model_id:
                return address
            address += 2 + values["L"]
        raise LookupError(model_id)

    def image(self, unit: int) -> dict[int, int]:
        self.plant.step()
        if self.plant.mod == 0 and self.control["StorCtl_Mod"]:  # reverted by its timer
            self.control |= {
                "StorCtl_Mod": 0,
                "OutWRte": _word(100),
                "InWRte": _word(100),
                "InOutWRte_RvrtTms": 0,
            }
        return _image(models_of(self.plant, unit, self.control))

    def write(self, address: int, words: list[int]) -> ExcCodes | None:
        self.writes.append((address, words))
        offsets = [a - self.start_124 for a in range(address, address + len(words))]
        if self.refuse_writes or any(o not in WRITABLE for o in offsets):
            return ExcCodes.ILLEGAL_ADDRESS
        if self.ignore_writes:
            return None
        names = {p.offset: name for name, p in fixed_points(124).items()}
        for offset, word in zip(offsets, words, strict=True):
            signed = names[offset] in ("OutWRte", "InWRte") and word & 0x8000
            self.control[names[offset]] = word - 0x10000 if signed else word
        c = self.control
        self.plant.control(
            c["StorCtl_Mod"],
            c["InWRte"] * 10.0**RATE_SF,
            c["OutWRte"] * 10.0**RATE_SF,
            c["InOutWRte_RvrtTms"],
        )
        return None

    async def start(self) -> SunSpecServer:
        blocks = [SimData(BASE, count=1, values=0, datatype=DataType.REGISTERS)]
        self._server = ModbusTcpServer(
            SimDevice(INVERTER_UNIT, simdata=blocks),
            address=(self.host, self.port),
            ignore_missing_devices=True,
        )
        self._server.context = _Context(self)
        await self._server.serve_forever(background=True)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None
