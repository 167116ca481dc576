"""Register images for the protocol tests: a recorded dump read from its text form, images made
with pysunspec2's own encoder, and a real pymodbus server that serves an image (registers it
does not hold are refused with an illegal-address exception, as on a real device)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore
from sunspec2.device import Model

from extensions.sdk.protocols.modbus_link import ModbusLinkError
from extensions.sdk.testing import free_port

__all__ = [
    "FIXTURES",
    "ImageServer",
    "image_reader",
    "load_dump",
    "model_headers",
    "sunspec_image",
]

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "sunspec"
_BLOCK = re.compile(r"## BLOCK .*start=(\d+)")
_HEADER = re.compile(r"# Model (\d+) \[Header @ hr:(\d+)\]")


def load_dump(path: Path) -> dict[int, int]:
    """A `*.regs.txt` dump -> registers by address."""
    image: dict[int, int] = {}
    address = 0
    for line in path.read_text().splitlines():
        if m := _BLOCK.match(line):
            address = int(m.group(1))
        elif line.strip() and not line.startswith("#"):
            for word in line.split():
                image[address] = int(word, 16)
                address += 1
    return image


def model_headers(path: Path) -> list[tuple[int, int]]:
    """(model id, header address) as the dump's author annotated them."""
    return [(int(i), int(a)) for i, a in _HEADER.findall(path.read_text())]


def sunspec_image(models: list[Mapping[str, Any]], base: int = 40000) -> dict[int, int]:
    """'SunS', then each model ({"ID":, "L":, point: value}) as pysunspec2 encodes it (points
    left out are its "not implemented" markers), then the end marker."""
    words = [0x5375, 0x6E53]
    for values in models:
        data = Model(model_id=values["ID"], model_len=values["L"], data=dict(values)).get_mb()
        words += [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    words += [0xFFFF, 0]
    return {base + i: w for i, w in enumerate(words)}


def image_reader(image: Mapping[int, int], reads: list[tuple[int, int]] | None = None):
    """An in-memory `ReadRegisters` over an image (a refused read: exception 2, like pymodbus)."""

    async def read(start: int, count: int) -> list[int]:
        if reads is not None:
            reads.append((start, count))
        try:
            return [image[a] for a in range(start, start + count)]
        except KeyError:
            raise ModbusLinkError(f"exception 2 reading {start}+{count}", 2) from None

    return read


class _Silent(SimCore):
    """As on a real bus or gateway: a unit id nobody serves gets no answer at all (pymodbus'
    simulator would answer with exception 4)."""

    async def async_getValues(  # noqa: N802 - pymodbus' name
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        if device_id not in self.devices:
            raise NoSuchIdException(f"no unit {device_id}")
        return await super().async_getValues(device_id, func_code, address, count)


class ImageServer:
    """A pymodbus TCP server on 127.0.0.1 serving `image` as unit `unit` (holding and input
    registers alike); other units are silent."""

    def __init__(self, image: Mapping[int, int], unit: int = 1) -> None:
        self.image = dict(image)
        self.unit = unit
        self.port = free_port()
        self.server: ModbusTcpServer | None = None

    def _blocks(self) -> list[SimData]:
        blocks: list[SimData] = []
        run: list[int] = []
        start = prev = -2
        for address in sorted(self.image):
            if address != prev + 1 and run:
                blocks.append(SimData(start, values=run, datatype=DataType.REGISTERS))
                run = []
            if not run:
                start = address
            run.append(self.image[address])
            prev = address
        if run:
            blocks.append(SimData(start, values=run, datatype=DataType.REGISTERS))
        return blocks

    async def __aenter__(self) -> ImageServer:
        device = SimDevice(self.unit, simdata=self._blocks())
        self.server = ModbusTcpServer(
            device, address=("127.0.0.1", self.port), ignore_missing_devices=True
        )
        self.server.context = _Silent([device])
        await self.server.serve_forever(background=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            await self.server.shutdown()
