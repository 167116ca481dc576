"""Setpoints of the Energy Router: each one clamped to its configured limit, converted from the
load reference to the controller's own sign, sent as its command frame, and reported by the
controller's confirmation: 1 applied, 0 rejected, none in time UNCONFIRMED (the controller may
run it; a confirmation that comes later is reported then). On expiry each falls back to what
the controller does on its own (docs/ENERGY-ROUTER.md, "Setpoints")."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from extensions.sdk import (
    Applied,
    Clamped,
    Extension,
    PointSpec,
    Rejected,
    SetpointRequest,
    Unconfirmed,
)

from .frames import Frame, float_frame
from .link import ControllerLink, LinkDown

__all__ = ["PowerSetpoint", "ModeSetpoint", "register"]

log = logging.getLogger(__name__)

Result = Applied | Clamped | Rejected | Unconfirmed


@dataclass(frozen=True)
class PowerSetpoint:
    point: str  # e.g. "P_ESS_set"
    link: ControllerLink
    flag: int
    lo: float  # limits in the load reference
    hi: float
    to_device: Callable[[float], float]  # load reference -> the controller's own sign
    # What is sent when the setpoint expires, chosen then; None: 0 W (or var) of its command.
    fallback: Callable[[], Frame] | None = None
    # Why a value above `hi` is refused rather than clamped ("" clamps): a wrong sign means
    # the requester misread the reference, and clamping 500 W to 0 would switch the PV off.
    above_hi: str = ""

    def expiry_frame(self) -> Frame:
        if self.fallback is not None:
            return self.fallback()
        return Frame(self.link.controller.command, self.flag, bytes(4))  # +0.0, float32

    def frame(self, value: float) -> Frame:
        """`value`, within lo..hi, as its command frame: the float32 stays within the limit."""
        limit = self.hi if value > 0 else -self.lo
        return float_frame(
            self.link.controller.command, self.flag, self.to_device(value), within=limit
        )


@dataclass(frozen=True)
class ModeSetpoint:
    point: str  # e.g. "inverter_mode_set"
    link: ControllerLink
    flag: int
    modes: dict[int, str]

    def frame(self, value: int) -> Frame:
        return Frame(self.link.controller.command, self.flag, bytes((value,)))


async def _send(
    ext: Extension, req: SetpointRequest, link: ControllerLink, frame: Frame, done: Result
) -> Result:
    name = link.controller.name

    async def late(ok: bool) -> None:
        result = done if ok else Rejected(f"the {name} controller refused it (late answer)")
        await ext.setpoints.report_outcome(req, result)

    try:
        ok = await link.command(frame, late)
    except LinkDown as err:
        return Rejected(f"not sent: {err}")
    if ok is None:
        return Unconfirmed(
            f"sent to the {name} controller, no confirmation within "
            f"{link.timing.confirm_timeout:g} s: it may run it"
        )
    return done if ok else Rejected(f"the {name} controller refused it")


def register(
    ext: Extension, device: str, power: list[PowerSetpoint], modes: list[ModeSetpoint]
) -> None:
    """The handlers of every setpoint, on `ext`."""
    for sp in power:
        _register_power(ext, device, sp)
    for mode in modes:
        _register_mode(ext, device, mode)


def _handler_timeout(link: ControllerLink) -> float:
    # The SDK's deadline for a handler: the confirmation's, and room to report it.
    return link.timing.confirm_timeout + 2.0


def _register_power(ext: Extension, device: str, sp: PowerSetpoint) -> None:

    async def fall_back(req: SetpointRequest) -> None:
        sp.link.fall_back(sp.flag, sp.expiry_frame())
        if not sp.link.up:
            log.info(
                "%s/%s: fallback sent after the %s controller's handshake",
                device,
                sp.point,
                sp.link.controller.name,
            )

    @ext.on_setpoint(f"{device}/{sp.point}", on_expire=fall_back, timeout=_handler_timeout(sp.link))
    async def apply(req: SetpointRequest) -> Result:
        value = float(req.value)
        if not math.isfinite(value):
            return Rejected(f"{value!r} is not a finite number")
        if value > sp.hi and sp.above_hi:
            return Rejected(sp.above_hi)
        sent = min(max(value, sp.lo), sp.hi)
        done: Result = (
            Applied(value)
            if sent == value
            else Clamped(sent, f"limit {sp.lo:g}..{sp.hi:g} (site.toml config)")
        )
        return await _send(ext, req, sp.link, sp.frame(sent), done)


def _register_mode(ext: Extension, device: str, mode: ModeSetpoint) -> None:
    ext.declare(
        PointSpec(
            f"{device}/{mode.point}",
            kind="int",
            description=", ".join(f"{k} {v}" for k, v in mode.modes.items()),
        )
    )

    async def forget(req: SetpointRequest) -> None:
        # The mode stays as it is, but is no longer sent again after a new handshake.
        mode.link.forget(mode.flag)

    @ext.on_setpoint(
        f"{device}/{mode.point}",
        on_expire=forget,
        timeout=_handler_timeout(mode.link),
    )
    async def apply(req: SetpointRequest) -> Result:
        value = req.value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value not in mode.modes:
            return Rejected(f"{value!r} is not a mode ({', '.join(map(str, mode.modes))})")
        return await _send(ext, req, mode.link, mode.frame(value), Applied(value))
