"""What a device hands over: a reading with its quality and the device's own timestamp."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from smx.values import Scalar

__all__ = ["Reading"]


@dataclass(frozen=True)
class Reading:
    """A value with its quality and the device's own timestamp, when the device has them."""

    value: Scalar
    quality: str = "GOOD"  # GOOD, DERIVED, UNCERTAIN or BAD (smx.quality)
    source_time: float | dt.datetime | None = None  # unix seconds or aware datetime
