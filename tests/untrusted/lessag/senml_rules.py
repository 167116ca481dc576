"""RFC 8428's rules for a SenML JSON pack, as a checker: the representation (section 4 and 5),
names (4.5.1), one value field per record (4.5.3... "exactly one value field" unless a sum),
units from the SenML registries (12.1, RFC 8798), times. Returns the problems found."""

from __future__ import annotations

import json
import re
from typing import Any

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-:./_]*")
# RFC 8428 section 12.1 (those SMX publishes, among others) and RFC 8798's secondary units.
UNITS = {
    "m", "kg", "g", "s", "A", "K", "cd", "mol", "Hz", "rad", "sr", "N", "Pa", "J", "W", "C",
    "V", "F", "Ohm", "S", "Wb", "T", "H", "Cel", "lm", "lx", "Bq", "Gy", "Sv", "kat", "/",
    "%RH", "%EL", "EL", "1/s", "VA", "VAs", "var", "vars", "Wh", "kWh", "varh", "kvarh",
}  # fmt: skip
BASE = {"bn", "bt", "bu", "bv", "bs", "bver"}
REGULAR = {"n", "u", "v", "vs", "vb", "vd", "s", "t", "ut"}
VALUES = {"v", "vs", "vb", "vd"}


def problems(payload: bytes) -> list[str]:
    found: list[str] = []
    try:
        pack = json.loads(payload)
    except ValueError as err:
        return [f"not JSON: {err}"]
    if not isinstance(pack, list) or not pack:
        return ["a pack is a non-empty JSON array"]
    bn = ""
    for i, rec in enumerate(pack):
        where = f"record {i}"
        if not isinstance(rec, dict):
            found.append(f"{where}: not an object")
            continue
        for key in rec:
            if key not in BASE | REGULAR and not key.isidentifier():
                found.append(f"{where}: odd field {key!r}")
            if key.endswith("_"):
                found.append(f"{where}: must-understand field {key!r}")
        bn = rec.get("bn", bn)
        name = bn + str(rec.get("n", ""))
        if not NAME.fullmatch(name):
            found.append(f"{where}: name {name!r} breaks 4.5.1")
        values = [k for k in VALUES if k in rec]
        if len(values) != 1 and "s" not in rec:
            found.append(f"{where}: {len(values)} value fields")
        if "v" in rec and (isinstance(rec["v"], bool) or not isinstance(rec["v"], int | float)):
            found.append(f"{where}: v is not a number")
        if "vs" in rec and not isinstance(rec["vs"], str):
            found.append(f"{where}: vs is not a string")
        if "vb" in rec and not isinstance(rec["vb"], bool):
            found.append(f"{where}: vb is not a boolean")
        if "u" in rec and rec["u"] not in UNITS:
            found.append(f"{where}: unit {rec['u']!r} is not registered")
        t: Any = rec.get("t", 0)
        if isinstance(t, bool) or not isinstance(t, int | float):
            found.append(f"{where}: t is not a number")
        elif t != 0 and t < 2**28:
            found.append(f"{where}: t={t} would be relative (< 2**28), not a time")
    return found
