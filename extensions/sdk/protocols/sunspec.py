"""SunSpec over Modbus: find the 'SunS' marker, walk the model chain, read models.

A SunSpec device keeps 'SunS' (0x5375 0x6E53) in two holding registers at 40000 (or 0, or
50000), then one model after the other: its ID, its length L, L registers, up to an end
marker with ID 0xFFFF. The first model is the common model (1).

    link = LinkPool().get(LinkConfig(host="192.0.2.10"))
    models = await discover(link, unit=1)         # [ModelLocation(id=1, start=40002, ...), ...]
    inverter = next(m for m in models if m.id in (101, 102, 103, 111, 112, 113))
    values = await read_model(link, 1, inverter)  # {"W": 1234.5, "PhVphA": 230.1, ...}

Discovery reads one header per model (two registers): a wider read could run past the end of
what the device serves and be refused. It always ends: each model moves on at least two
registers, and a chain longer than `max_models` or past register 65535 is an error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

from .modbus_link import ModbusLink, ModbusLinkError
from .modbus_maps import MODBUS_MAX_REGISTERS
from .sunspec_models import SunSpecError, decode_model

__all__ = [
    "BASE_ADDRESSES",
    "END_MODEL_ID",
    "MAX_MODELS",
    "SUNS",
    "ModelLocation",
    "ReadRegisters",
    "SunSpecError",
    "discover",
    "find_base",
    "link_reader",
    "read_model",
    "read_registers",
    "walk_models",
]

SUNS = (0x5375, 0x6E53)  # "SunS"
BASE_ADDRESSES = (40000, 0, 50000)  # where the SunSpec specification lets a device start
END_MODEL_ID = 0xFFFF
MAX_MODELS = 100  # real devices list 2 to ~30; more means the chain is not SunSpec
_LAST = 0xFFFF

# (start, count) -> `count` registers; ModbusLinkError when the device refuses or is silent.
ReadRegisters = Callable[[int, int], Awaitable[list[int]]]


class ModelLocation(NamedTuple):
    """One model on the device: its ID, the address of its ID register, its length L (the
    registers after ID and L)."""

    id: int
    start: int
    length: int

    @property
    def end(self) -> int:
        """The address after its last register (the next model's ID register)."""
        return self.start + 2 + self.length


def link_reader(link: ModbusLink, unit: int, function: int = 3) -> ReadRegisters:
    """Reads of one unit's holding registers (function 3, as SunSpec uses) on a link."""

    async def read(start: int, count: int) -> list[int]:
        return await link.read(unit, function, start, count)

    return read


async def find_base(read: ReadRegisters, bases: Sequence[int] = BASE_ADDRESSES) -> int:
    """The first of `bases` where the device keeps 'SunS'. SunSpecError if none; the link's
    error if the device answered none of the reads (dead device or line)."""
    found: list[str] = []
    silent: ModbusLinkError | None = None
    answered = False
    for base in bases:
        try:
            words = await read(base, 2)
        except ModbusLinkError as err:
            if err.code is None:
                silent = err
                found.append(f"{base}: no answer")
            else:
                answered = True
                found.append(f"{base}: exception {err.code}")
            continue
        answered = True
        if tuple(words) == SUNS:
            return base
        found.append(f"{base}: 0x{words[0]:04X} 0x{words[1]:04X}")
    if silent is not None and not answered:
        raise silent  # nothing answered: say so, not "no SunSpec here"
    raise SunSpecError(f"no 'SunS' marker at {', '.join(map(str, bases))} ({'; '.join(found)})")


async def walk_models(
    read: ReadRegisters, base: int, *, max_models: int = MAX_MODELS
) -> list[ModelLocation]:
    """The model chain after the 'SunS' marker at `base`, up to the end marker (not listed)."""
    models: list[ModelLocation] = []
    address = base + 2
    while True:
        after = f"after model {models[-1].id} at {models[-1].start}" if models else "after 'SunS'"
        if address + 1 > _LAST:
            raise SunSpecError(f"no end marker before register 65535 ({after})")
        try:
            model_id, length = await read(address, 2)
        except ModbusLinkError as err:
            if err.code is None:
                raise
            raise SunSpecError(f"model chain broken at {address} ({after}): {err}") from err
        if model_id == END_MODEL_ID and models:
            return models
        if len(models) >= max_models:
            raise SunSpecError(f"more than {max_models} models without the end marker ({after})")
        if not models and model_id != 1:
            what = "the end marker" if model_id == END_MODEL_ID else f"model {model_id}"
            raise SunSpecError(f"first model at {address} is {what}, not the common model 1")
        model = ModelLocation(model_id, address, length)
        if model.end - 1 > _LAST:
            raise SunSpecError(f"model {model_id} at {address} with L = {length} passes 65535")
        models.append(model)
        address = model.end


async def discover(
    link: ModbusLink,
    unit: int,
    *,
    bases: Sequence[int] = BASE_ADDRESSES,
    max_models: int = MAX_MODELS,
) -> list[ModelLocation]:
    """The models of a SunSpec device (unit id) on a link: [(id, start, length), ...]."""
    read = link_reader(link, unit)
    try:
        return await walk_models(read, await find_base(read, bases), max_models=max_models)
    except SunSpecError as err:
        raise SunSpecError(f"unit {unit} on {link.where}: {err}") from err


async def read_registers(read: ReadRegisters, start: int, count: int) -> list[int]:
    """`count` registers from `start`, in as few reads as the Modbus limit allows."""
    words: list[int] = []
    while len(words) < count:
        n = min(MODBUS_MAX_REGISTERS, count - len(words))
        words += await read(start + len(words), n)
    return words


async def read_model(link: ModbusLink, unit: int, model: ModelLocation) -> dict[str, Any]:
    """One model's points by name (see `sunspec_models.decode_model`)."""
    registers = await read_registers(link_reader(link, unit), model.start, model.length + 2)
    if registers[0] != model.id:
        raise SunSpecError(
            f"unit {unit} on {link.where}: model {model.id} expected at {model.start}, "
            f"found {registers[0]} (device reconfigured? discover again)"
        )
    return decode_model(registers)
