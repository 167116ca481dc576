"""OCPP-J frames, read on the side: the proxy forwards the bytes it received and parses a copy
to observe and to check it. Nothing here builds a frame that is forwarded.

    [2, "<id>", "<Action>", {payload}]                       CALL
    [3, "<id>", {payload}]                                   CALLRESULT
    [4, "<id>", "<errorCode>", "<description>", {details}]   CALLERROR

`parse` checks the envelope (OCPP-J 1.6 §4, 2.0.1 part 4 §4); `check_payload` checks a payload
against the `ocpp` library's JSON schemas. Both raise `FrameError` with the OCPP error code a
CALLERROR for it would carry.
"""

from __future__ import annotations

import decimal
import json
from dataclasses import dataclass
from typing import Any

from jsonschema.exceptions import ValidationError as SchemaError
from ocpp.messages import get_validator

__all__ = [
    "CALL",
    "CALLERROR",
    "CALLRESULT",
    "Frame",
    "FrameError",
    "call_error",
    "call_result",
    "check_payload",
    "parse",
]

CALL, CALLRESULT, CALLERROR = 2, 3, 4
MAX_ID = 36  # characters of a message id (both versions)


class FrameError(ValueError):
    """Not a valid frame: `code` is the CALLERROR code, `id` the message id ("-1" if unread)."""

    def __init__(self, code: str, description: str, id: str = "-1") -> None:
        super().__init__(description)
        self.code, self.description, self.id = code, description, id


@dataclass(frozen=True)
class Frame:
    kind: int  # CALL, CALLRESULT or CALLERROR
    id: str
    action: str = ""  # CALL only
    payload: Any = None  # CALL and CALLRESULT: the payload; CALLERROR: its details
    error_code: str = ""  # CALLERROR only
    description: str = ""


def _formation(version: str) -> str:
    # 1.6 names it FormationViolation, 2.0.1 FormatViolation.
    return "FormationViolation" if version == "1.6" else "FormatViolation"


def parse(raw: str | bytes, version: str = "1.6") -> Frame:
    """The frame in `raw`, envelope checked (payload schemas: `check_payload`)."""
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError) as err:  # JSON, UTF-8, nesting
        raise FrameError(_formation(version), f"not JSON: {err}") from None
    if not isinstance(msg, list) or not msg:
        raise FrameError(_formation(version), "not a JSON array")
    kind = msg[0]
    if kind not in (CALL, CALLRESULT, CALLERROR) or isinstance(kind, bool):
        raise FrameError(
            "ProtocolError" if version == "1.6" else "MessageTypeNotSupported",
            f"unknown message type {kind!r}",
        )
    if len(msg) < 2 or not isinstance(msg[1], str):
        raise FrameError("ProtocolError", "no message id string")
    id = msg[1]
    if not id or len(id) > MAX_ID:
        raise FrameError("ProtocolError", f"message id of {len(id)} characters", "-1")
    expected = {CALL: 4, CALLRESULT: 3, CALLERROR: 5}[kind]
    if len(msg) != expected:
        raise FrameError("ProtocolError", f"{len(msg)} elements, expected {expected}", id)
    if kind == CALL:
        if not isinstance(msg[2], str) or not msg[2]:
            raise FrameError("ProtocolError", "no action name", id)
        if not isinstance(msg[3], dict):
            raise FrameError(_formation(version), "payload is not an object", id)
        return Frame(CALL, id, action=msg[2], payload=msg[3])
    if kind == CALLRESULT:
        if not isinstance(msg[2], dict):
            raise FrameError(_formation(version), "payload is not an object", id)
        return Frame(CALLRESULT, id, payload=msg[2])
    if not isinstance(msg[2], str) or not isinstance(msg[3], str) or not isinstance(msg[4], dict):
        raise FrameError("ProtocolError", "CALLERROR fields of the wrong type", id)
    return Frame(CALLERROR, id, payload=msg[4], error_code=msg[2], description=msg[3])


# OCPP 1.6 has a few decimals with multipleOf 0.1 that binary floats fail: the `ocpp` library
# reads these payloads with Decimal, and so do we.
_DECIMAL_16 = {(CALL, "SetChargingProfile"), (CALL, "RemoteStartTransaction"),
               (CALLRESULT, "GetCompositeSchedule")}  # fmt: skip


def check_payload(frame: Frame, action: str, version: str) -> None:
    """`frame`'s payload against the schema of `action` (a CALLRESULT's action is its call's).
    A CALLERROR has no schema. Unknown actions are refused as NotSupported/NotImplemented."""
    if frame.kind == CALLERROR:
        return
    if not action.isascii() or not action.isalnum():  # it names a schema file: letters only
        code = "NotImplemented" if version == "1.6" else "NotSupported"
        raise FrameError(code, f"{action[:40]!r} is not an OCPP action name", frame.id)
    decimal_floats = version == "1.6" and (frame.kind, action) in _DECIMAL_16
    try:
        validator = get_validator(
            frame.kind, action, version, parse_float=decimal.Decimal if decimal_floats else float
        )
    except (OSError, ValueError):
        code = "NotImplemented" if version == "1.6" else "NotSupported"
        raise FrameError(code, f"{action!r} is not an OCPP {version} action", frame.id) from None
    payload = frame.payload
    if decimal_floats:
        payload = json.loads(json.dumps(payload), parse_float=decimal.Decimal)
    try:
        validator.validate(payload)
    except SchemaError as err:
        code = {
            "type": "TypeConstraintViolation",
            "required": "ProtocolError",
            "maxLength": "TypeConstraintViolation",
            "enum": "PropertyConstraintViolation",
        }.get(str(err.validator), _formation(version))
        where = "/".join(str(p) for p in err.absolute_path) or "payload"
        raise FrameError(code, f"{action}: {where}: {err.message}", frame.id) from None


def call_result(id: str, payload: dict[str, Any]) -> str:
    """A CALLRESULT the proxy answers itself, compact as chargers expect it."""
    return json.dumps([CALLRESULT, id, payload], separators=(",", ":"))


def call_error(id: str, code: str, description: str) -> str:
    return json.dumps([CALLERROR, id, code, description[:255], {}], separators=(",", ":"))
