"""The Energy Router's serial frame: `0xFE, N, ctrl, flag, payload`, N = 2 + len(payload), no
checksum, floats IEEE-754 single little-endian (docs/ENERGY-ROUTER.md). Encoding, and an
incremental decoder for a byte stream that never raises."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "BEGIN",
    "MAX_FRAME",
    "Frame",
    "FrameDecoder",
    "encode",
    "float_frame",
    "floats_of",
    "pack_floats",
    "shortest",
]

BEGIN = 0xFE
FLT_MAX = struct.unpack("<f", bytes.fromhex("ffff7f7f"))[0]
# The controllers' input buffer: a longer frame is dropped, so the reader drops it too.
MAX_FRAME = 64
_MAX_N = MAX_FRAME - 2


@dataclass(frozen=True)
class Frame:
    ctrl: int
    flag: int
    payload: bytes = b""

    def __post_init__(self) -> None:
        if not (0 <= self.ctrl <= 255 and 0 <= self.flag <= 255):
            raise ValueError(f"ctrl and flag are bytes, not {self.ctrl}, {self.flag}")
        if len(self.payload) + 2 > _MAX_N:
            raise ValueError(f"payload of {len(self.payload)} bytes: a frame is <= {MAX_FRAME}")

    @property
    def byte(self) -> int | None:
        """The one-byte payload (a mode, a confirmation, an id, an error code), else None."""
        return self.payload[0] if len(self.payload) == 1 else None


def encode(frame: Frame) -> bytes:
    return bytes((BEGIN, 2 + len(frame.payload), frame.ctrl, frame.flag)) + frame.payload


def pack_floats(*values: float) -> bytes:
    # A float32 cannot hold every double: out of range becomes +-inf, which the caller clamps
    # before (a limit), so only rounding remains.
    return struct.pack(f"<{len(values)}f", *values)


def float_frame(ctrl: int, flag: int, value: float, within: float | None = None) -> Frame:
    """`value` as a float32 payload; with `within`, never beyond +-`within`: rounding to 24 bits
    may go past a limit (3000.1 is 3000.10009765625), then one step toward zero is taken."""
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    packed = pack_floats(value)
    if within is not None and abs(struct.unpack("<f", packed)[0]) > within:
        # IEEE-754 is sign and magnitude: the magnitude's bits less one is one step to zero.
        packed = struct.pack("<I", struct.unpack("<I", packed)[0] - 1)
    return Frame(ctrl, flag, packed)


def floats_of(payload: bytes, count: int) -> tuple[float, ...] | None:
    """The first `count` floats of `payload`; None if it is too short."""
    if len(payload) < 4 * count:
        return None
    return struct.unpack_from(f"<{count}f", payload)


def shortest(value: float) -> float:
    """The float32 `value` as the shortest decimal that is the same float32: the controller
    sent 51.03854, not the 51.038543701171875 its 24 bits widen to as a double."""
    if not math.isfinite(value) or abs(value) > FLT_MAX:
        return value  # not a float32's value: nothing to shorten
    bits = struct.pack("<f", value)
    for digits in range(1, 9):
        candidate = float(f"{value:.{digits}g}")
        # Rounded up past the largest float32 (3.403e38 from 3.4025e38), a candidate is no
        # float32 at all.
        if abs(candidate) <= FLT_MAX and struct.pack("<f", candidate) == bits:
            return candidate
    return float(f"{value:.9g}")  # 9 significant digits always give the float32 back


class FrameDecoder:
    """Bytes in, frames out. Bytes before a 0xFE are skipped. A candidate announcing N < 2 or
    a frame over MAX_FRAME bytes, or one `accept` refuses (a shape no controller sends), loses
    only its 0xFE: the scan goes on from the next 0xFE, so a 0xFE in line noise does not
    swallow the real frame that follows it."""

    def __init__(self, accept: Callable[[Frame], bool] | None = None) -> None:
        self._accept = accept
        self._buf = bytearray()
        self.skipped = 0  # bytes thrown away: garbage, bad lengths, oversize frames

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while True:
            start = self._buf.find(BEGIN)
            if start < 0:
                self.skipped += len(self._buf)
                self._buf.clear()
                return frames
            if start:
                self.skipped += start
                del self._buf[:start]
            if len(self._buf) < 2:
                return frames
            n = self._buf[1]
            if n < 2 or n > _MAX_N:
                self.skipped += 1
                del self._buf[:1]
                continue
            if len(self._buf) < 2 + n:
                return frames
            frame = Frame(self._buf[2], self._buf[3], bytes(self._buf[4 : 2 + n]))
            if self._accept is not None and not self._accept(frame):
                self.skipped += 1
                del self._buf[:1]
                continue
            del self._buf[: 2 + n]
            frames.append(frame)

    @property
    def pending(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf)
