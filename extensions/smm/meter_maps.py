"""The register maps smm ships (`maps/*.toml`) and the rule for their point names: every point
is a name of the meter vocabulary (semantics.py), and a single-phase meter has no per-phase
points. The map format itself is the SDK's (extensions/sdk/protocols/modbus_maps.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from extensions.sdk.protocols import modbus_maps
from extensions.sdk.protocols.modbus_maps import RegisterMap

from .semantics import unit_of

__all__ = ["MAPS_DIR", "check_point", "resolve_map", "shipped_maps"]

MAPS_DIR = Path(__file__).resolve().parent / "maps"
_PER_PHASE = re.compile(r"(U|I|P|Q|S|PF)[123]")


def check_point(name: str, meter: Mapping[str, Any]) -> None:
    """ValueError unless `name` may be a point of a meter map with this [meter] table."""
    try:
        unit_of(name)
    except ValueError as err:
        raise ValueError(f"{name!r} is not a point of the vocabulary") from err
    if meter.get("phases") == 1 and _PER_PHASE.fullmatch(name):
        raise ValueError("per-phase point on a single-phase meter (phases = 1)")


def shipped_maps() -> dict[str, Path]:
    """The maps that ship with smm, by name (file stem)."""
    return modbus_maps.shipped_maps([MAPS_DIR])


def resolve_map(ref: str, base_dir: Path | None = None) -> RegisterMap:
    """A shipped map by name (`eastron_sdm630`) or a meter map file by path (relative paths
    from `base_dir`, e.g. the site config's directory)."""
    return modbus_maps.resolve_map(ref, base_dir, [MAPS_DIR], check_point=check_point)
