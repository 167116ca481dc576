"""EVChCon commands: a charging limit for one charge point becomes a setpoint request on
`ev<N>/I_max_set` (A) or `ev<N>/P_max_set` (W); every answer the owner gives (and EXPIRED,
SUPERSEDED) is published on the reply topic with the command's id, as the core reports it on
the requester stream. A command that is not valid, or that the core refuses (no right: the
policy's PERMISSION_DENIED), gets an error reply; nothing else happens.

A command id is remembered for as long as its limit is valid (`valid_for`, the last
`REMEMBER` ids at most): the same id again (a replay, a QoS 1 re-delivery) is answered with the
latest reply for it, from memory, and requests nothing.

    {"id": "c-17", "cp": "ev1", "I_max": 16, "valid_for": 900}
    {"id": "c-18", "cp": "ev1", "P_max": 7400}

docs/LESSAG.md, "EVChCon".
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from smx.sdk import CallFailed, SetpointState

from .settings import EvConfig

__all__ = ["EvCommands"]

log = logging.getLogger(__name__)

Request = Callable[[str, float, float], Awaitable[SetpointState]]
Reply = Callable[[bytes], object]
MAX_BYTES = 1024
DEFAULT_VALID_FOR = 900.0
LIMITS = {"I_max": ("I_max_set", 1000.0), "P_max": ("P_max_set", 1_000_000.0)}
REMEMBER = 1000  # setpoint id -> command id; command ids run recently


@dataclass
class _Ran:
    """A command id that was requested: until when it is remembered, and its latest reply."""

    until: float  # monotonic
    reply: bytes | None = None


class CommandError(ValueError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class EvCommands:
    def __init__(
        self,
        cfg: EvConfig,
        request: Request,
        reply: Reply,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.request = request
        self.reply = reply
        self.clock = clock
        self.commands: OrderedDict[str, str] = OrderedDict()  # setpoint id -> command id
        self.ran: OrderedDict[str, _Ran] = OrderedDict()  # command id -> its memory
        self.repeats = 0  # commands answered from memory
        self._early: dict[str, SetpointState] = {}

    def parse(self, payload: bytes) -> tuple[str | None, str, float, float]:
        """(command id, setpoint name, value, valid_for); CommandError names the field."""
        if len(payload) > MAX_BYTES:
            raise CommandError("$", f"message of {len(payload)} bytes is over {MAX_BYTES}")
        try:
            msg = json.loads(payload)
        except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
            raise CommandError("$", f"not JSON: {_why(err)}") from None
        if not isinstance(msg, dict):
            raise CommandError("$", "must be a JSON object")
        for key in msg:
            if key not in ("id", "cp", "I_max", "P_max", "valid_for"):
                raise CommandError(key, "unknown field")
        if "id" not in msg:
            raise CommandError("id", "missing: a string of 1 to 64 characters is required")
        cmd_id = msg["id"]
        if not isinstance(cmd_id, str) or not 0 < len(cmd_id) <= 64:
            raise CommandError("id", "required, a string of 1 to 64 characters")
        if "cp" not in msg:
            raise CommandError("cp", "missing: the charge point to limit is required")
        cp = msg["cp"]
        if cp not in self.cfg.charge_points:
            known = ", ".join(self.cfg.charge_points) or "none"
            raise CommandError(
                "cp", f"{cp!r} is not in ev.charge_points ({known}): this agent may not command it"
            )
        given = [k for k in LIMITS if k in msg]
        if len(given) != 1:
            raise CommandError("I_max", "exactly one of I_max (A) or P_max (W) is required")
        key = given[0]
        point, top = LIMITS[key]
        value = msg[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise CommandError(key, f"must be a number, got {value!r}")
        if not 0 <= value <= top:
            raise CommandError(key, f"{value} is out of range (0 to {top:g})")
        valid_for = msg.get("valid_for", DEFAULT_VALID_FOR)
        if isinstance(valid_for, bool) or not isinstance(valid_for, int | float):
            raise CommandError("valid_for", f"must be a number of seconds, got {valid_for!r}")
        if not 1 <= valid_for <= self.cfg.max_valid_for:
            raise CommandError(
                "valid_for", f"{valid_for} s is out of range (1 to {self.cfg.max_valid_for:g})"
            )
        return cmd_id, f"{cp}/{point}", float(value), float(valid_for)

    async def handle(self, payload: bytes) -> None:
        cmd_id: Any = None
        try:
            cmd_id, name, value, valid_for = self.parse(payload)
        except CommandError as err:
            try:  # the id, to name the reply (a string; within the size, parsed once more)
                cmd_id = json.loads(payload).get("id") if len(payload) <= MAX_BYTES else None
            except Exception:
                cmd_id = None
            if not isinstance(cmd_id, str):
                cmd_id = None
            self._send({"id": cmd_id, "status": "ERROR", "field": err.field, "error": str(err)})
            return
        if self._repeat(cmd_id):
            return
        try:
            sp = await self.request(name, value, valid_for)
        except (CallFailed, TimeoutError) as err:
            self._send(
                {
                    "id": cmd_id,
                    "status": "ERROR",
                    "setpoint": name,
                    "error": _refusal(err),
                }
            )
            return
        self.commands[sp.id] = cmd_id
        while len(self.commands) > REMEMBER:
            self.commands.popitem(last=False)
        self.ran[cmd_id] = _Ran(self.clock() + valid_for)
        while len(self.ran) > REMEMBER:
            self.ran.popitem(last=False)
        self.outcome(self._early.pop(sp.id, sp))

    def _repeat(self, cmd_id: str) -> bool:
        """A command id run within its validity: answered from memory (its latest reply)."""
        now = self.clock()
        while self.ran:  # forget the expired ones (oldest first; a longer one may follow)
            first = next(iter(self.ran.values()))
            if first.until > now:
                break
            self.ran.popitem(last=False)
        ran = self.ran.get(cmd_id)
        if ran is None or ran.until <= now:
            return False
        self.repeats += 1
        log.info("EVChCon command %r seen again: answered from memory, not requested", cmd_id)
        if ran.reply is not None:
            self.reply(ran.reply)
        return True

    def outcome(self, sp: SetpointState) -> None:
        """Every status change of a commanded setpoint, as a reply (PENDING too: the request
        id is known from then on)."""
        cmd_id = self.commands.get(sp.id)
        if cmd_id is None:
            if sp.name.startswith("ev") and len(self._early) < 64:
                self._early[sp.id] = sp  # its request has not returned yet
            return
        reply: dict[str, Any] = {
            "id": cmd_id,
            "status": sp.status,
            "setpoint": sp.name,
            "setpoint_id": sp.id,
            "value": sp.value,
        }
        if sp.applied_value is not None:
            reply["applied"] = sp.applied_value
        if sp.reason:
            reply["reason"] = sp.reason
        sent = self._send(reply)
        ran = self.ran.get(cmd_id)
        if ran is not None:
            ran.reply = sent

    def _send(self, reply: dict[str, Any]) -> bytes:
        payload = json.dumps(reply, separators=(",", ":")).encode()
        self.reply(payload)
        return payload


def _why(err: BaseException) -> str:
    return "nested too deeply" if isinstance(err, RecursionError) else str(err)


def _refusal(err: BaseException) -> str:
    if isinstance(err, CallFailed):
        return f"{err.code().name}: {err.details()}"
    return "the core did not answer in time"
