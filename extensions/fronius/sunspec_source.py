"""The inverter (and its Smart Meter) over Modbus TCP SunSpec, through the SDK's shared code
(extensions/sdk/protocols/sunspec.py): the model chain is discovered once, then each poll reads
the models that carry points. A device that moved its models (after a firmware update) is
discovered again on the next poll.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from extensions.sdk.protocols.modbus_link import ModbusLink, ModbusLinkError
from extensions.sdk.protocols.sunspec import ModelLocation, SunSpecError, discover, read_model
from extensions.sdk.protocols.sunspec_models import fixed_points, model_definition

from . import sunspec_points
from .values import Values, merge

__all__ = ["SunSpecSource", "check_length"]

log = logging.getLogger(__name__)

# The models whose points we read (the common model 1 is left alone: Fronius' has L = 65).
READ = (*sunspec_points.INVERTER_MODELS, 120, 124, 160, *sunspec_points.METER_MODELS)


def check_length(model: ModelLocation) -> None:
    """A model we read must have the length of its definition (plus whole repeating groups):
    a chain with a wrong L still walks, but reads the wrong registers. SunSpecError if not."""
    fixed = sum(p.size for p in fixed_points(model.id).values()) - 2
    groups = model_definition(model.id)["group"].get("groups", [])
    step = sum(int(p.get("size", 1)) for g in groups for p in g.get("points", []))
    extra = model.length - fixed
    if extra == 0 or (step and extra > 0 and extra % step == 0):
        return
    shape = f"{fixed} + n x {step}" if step else str(fixed)
    raise SunSpecError(
        f"model {model.id} at {model.start} has L = {model.length}, its definition {shape}: "
        "the model chain is broken or not SunSpec"
    )


class SunSpecSource:
    def __init__(self, link: ModbusLink, unit: int, meter_unit: int = 0) -> None:
        self.link, self.unit, self.meter_unit = link, unit, meter_unit
        self.models: dict[int, ModelLocation] | None = None  # the inverter's, by id
        self.meter_model: ModelLocation | None = None
        self.meter_checked = False
        self.nameplate: dict[str, Any] = {}  # model 120, read once
        # Polls and battery control take turns on the link: one request at a time.
        self.lock = asyncio.Lock()

    async def ensure_models(self) -> dict[int, ModelLocation]:
        """The inverter's models by id, discovered on first use (hold `lock`)."""
        if self.models is None:
            self.models = await self._discover()
        return self.models

    async def _discover(self) -> dict[int, ModelLocation]:
        models = {m.id: m for m in await discover(self.link, self.unit)}
        try:
            for model in models.values():
                if model.id in READ:
                    check_length(model)
        except SunSpecError as err:
            raise SunSpecError(f"unit {self.unit} on {self.link.where}: {err}") from None
        if not any(i in models for i in sunspec_points.INVERTER_MODELS):
            raise SunSpecError(
                f"unit {self.unit} on {self.link.where} lists models {sorted(models)}: "
                "no inverter model (101-103, 111-113)"
            )
        log.info("unit %d on %s: SunSpec models %s", self.unit, self.link.where, sorted(models))
        if 120 in models:
            self.nameplate = await read_model(self.link, self.unit, models[120])
        return models

    async def _find_meter(self) -> None:
        self.meter_checked = True
        if not self.meter_unit:
            return
        try:
            found = await discover(self.link, self.meter_unit)
        except (SunSpecError, ModbusLinkError) as err:
            log.info("no SunSpec meter at unit %d: %s", self.meter_unit, err)
            return
        self.meter_model = next((m for m in found if m.id in sunspec_points.METER_MODELS), None)
        if self.meter_model is not None:
            check_length(self.meter_model)

    async def read(self) -> tuple[Values, Values]:
        """(inverter values, meter values). ModbusLinkError or SunSpecError when the inverter
        cannot be read; a meter that fails is logged and left out."""
        async with self.lock:
            return await self._read()

    async def _read(self) -> tuple[Values, Values]:
        models = await self.ensure_models()
        try:
            inverter = await self._read_inverter(models)
        except SunSpecError:
            self.models = None  # moved: discover again next time
            raise
        meter: Values = {}
        if not self.meter_checked:
            await self._find_meter()
        if self.meter_model is not None:
            try:
                meter = sunspec_points.meter(
                    await read_model(self.link, self.meter_unit, self.meter_model)
                )
            except (SunSpecError, ModbusLinkError) as err:
                log.warning("Smart Meter (unit %d): %s", self.meter_unit, err)
                self.meter_model, self.meter_checked = None, False
        return inverter, meter

    async def _read_inverter(self, models: dict[int, ModelLocation]) -> Values:
        parts: list[Values] = []
        model_id = next(i for i in sunspec_points.INVERTER_MODELS if i in models)
        parts.append(sunspec_points.inverter(await self.read_model(model_id)))
        if 160 in models:
            parts.append(sunspec_points.mppt(await self.read_model(160)))
        if 124 in models:
            parts.append(sunspec_points.storage(await self.read_model(124)))
        return merge(*parts)

    def close(self) -> None:
        self.link.close()

    async def read_model(self, model_id: int) -> dict[str, Any]:
        assert self.models is not None
        return await read_model(self.link, self.unit, self.models[model_id])
