"""IEC 62056-21 (ex IEC 61107) data exchange, the protocol half: the messages (sign-on,
identification, acknowledgement, data message with BCC), their parsing, the baud-rate
characters and reaction times of modes A, B, C and D, and the errors of a readout.

The conversation with a meter over a serial line is `iec_client.IecClient`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "ACK",
    "BAUD_MODE_B",
    "BAUD_MODE_C",
    "CHAR_TIMEOUT",
    "CRLF",
    "ETX",
    "MODE_D_BAUD",
    "REACTION_MAX",
    "REACTION_MIN",
    "STX",
    "BccError",
    "DataSet",
    "DataValue",
    "FramingError",
    "IecError",
    "Identification",
    "NoAnswer",
    "PortError",
    "bcc",
    "crc16",
    "data_message",
    "parse_data_block",
    "parse_data_message",
    "parse_identification",
    "parse_push_telegram",
    "sign_on",
]

STX, ETX, ACK, NAK, SOH = b"\x02", b"\x03", b"\x06", b"\x15", b"\x01"
CRLF = b"\r\n"

# Baud rate characters (IEC 62056-21 6.3.14 item 13).
BAUD_MODE_C = {
    "0": 300,
    "1": 600,
    "2": 1200,
    "3": 2400,
    "4": 4800,
    "5": 9600,
    "6": 19200,
}
BAUD_MODE_B = {"A": 600, "B": 1200, "C": 2400, "D": 4800, "E": 9600, "F": 19200}
MODE_D_BAUD = 2400

REACTION_MIN = 0.2  # t_r: 200 ms <= reaction time <= 1500 ms, both directions
REACTION_MAX = 1.5
CHAR_TIMEOUT = 1.5  # t_a: at most 1500 ms between two characters of a message

_ADDRESS = re.compile(r"[0-9A-Za-z ]{0,32}")
# Identification: manufacturer, baud character, optional `\W` enhanced-capability character,
# then the identification proper: the standard allows 16 characters; real meters send more.
_IDENT = re.compile(
    rb"/([A-Za-z]{2}[A-Za-z0-9])([0-9A-Za-z])(?:\\([\x21-\x7e]))?([\x20-\x7e]{0,40})"
)
# The end line of a DSMR P1 telegram (the Dutch/Belgian/Luxembourg variant of mode D):
# `!` and the CRC-16 of everything from `/` to `!` as four hex digits (empty in DSMR 2/3).
_CRC_END = re.compile(rb"!([0-9A-Fa-f]{4})?")
# One data set: address, then one or more (value*unit) groups.
# Matched anchored at each position (never searched: a search rescans a line without any
# "(" from every start, quadratic in its length) on lines of at most MAX_LINE characters.
_DATASET = re.compile(r"([^()/!\r\n]*)((?:\([^()\r\n]*\))+)")
MAX_LINE = 2048  # the longest real data line seen is ~330 characters (a DSMR history list)
_GROUP = re.compile(r"\(([^()\r\n]*)\)")


class IecError(Exception):
    """Any failed IEC 62056-21 exchange; `received` holds the bytes that came in, if any."""

    def __init__(self, message: str, received: bytes = b"") -> None:
        super().__init__(message)
        self.received = received


class NoAnswer(IecError):
    """The meter did not answer (in time): wrong address, no meter, dead line, timeout."""


class FramingError(IecError):
    """Bytes came, but not a valid identification or data message (garbage, wrong baud,
    truncated telegram). The message says what was expected; `received` what came."""


class BccError(IecError):
    """A complete data message whose block check character is wrong."""


class PortError(IecError):
    """The serial port could not be opened or configured (missing device, permission)."""


# -- pure protocol functions ---------------------------------------------------------------------


def bcc(data: bytes) -> int:
    """Block check character: XOR of every byte (the caller passes STX+1 .. ETX inclusive)."""
    value = 0
    for byte in data:
        value ^= byte
    return value


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC16_TABLE = _crc16_table()  # a byte at a time: 8x fewer steps for a 1 KB telegram


def crc16(data: bytes) -> int:
    """CRC-16/ARC (polynomial 0xA001 reflected, initial value 0): the checksum DSMR P1 meters
    append after the `!` of a telegram, computed from the `/` to the `!` inclusive."""
    crc = 0
    table = _CRC16_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def sign_on(address: str = "") -> bytes:
    """The request message `/?<address>!CR LF`; the address selects one meter on a shared bus."""
    if not _ADDRESS.fullmatch(address):
        raise ValueError(
            f"meter address {address!r}: at most 32 characters of 0-9, A-Z, a-z and space"
        )
    return b"/?" + address.encode("ascii") + b"!" + CRLF


def data_message(block: bytes) -> bytes:
    """A data message around `block` (which ends with `!CR LF`): STX block ETX BCC."""
    body = block + ETX
    return STX + body + bytes([bcc(body)])


@dataclass(frozen=True)
class Identification:
    """`/MMMZ<ident>`: manufacturer (3 letters, a lower-case third one means 20 ms reaction
    time is allowed), baud character Z, optional enhanced-capability character after `\\`."""

    manufacturer: str
    baud_char: str
    ident: str
    enhanced: str = ""

    @property
    def line(self) -> bytes:
        extra = f"\\{self.enhanced}" if self.enhanced else ""
        return f"/{self.manufacturer}{self.baud_char}{extra}{self.ident}".encode("ascii") + CRLF


def parse_identification(line: bytes) -> Identification:
    """Parse an identification message (with or without its CR LF)."""
    text = line[:-2] if line.endswith(CRLF) else line
    m = _IDENT.fullmatch(text)
    if m is None:
        raise FramingError(f"not an identification message: {line[:80]!r}", line)
    return Identification(
        manufacturer=m.group(1).decode("ascii"),
        baud_char=m.group(2).decode("ascii"),
        ident=m.group(4).decode("ascii"),
        enhanced=(m.group(3) or b"").decode("ascii"),
    )


@dataclass(frozen=True)
class DataValue:
    """One `(value*unit)` group; unit is "" when the meter gives none."""

    value: str
    unit: str = ""


@dataclass(frozen=True)
class DataSet:
    """One data set: its address as sent (`1-0:1.8.0*255`, `1.8.0`, `C.1`) and its groups."""

    address: str
    values: tuple[DataValue, ...]

    @property
    def value(self) -> DataValue:
        return self.values[0]


def parse_data_block(block: bytes | str) -> list[DataSet]:
    """Data lines (without STX; the final `!` line optional) -> data sets, in order.

    A line may hold several data sets. Raises FramingError on anything that is not data sets.
    """
    if isinstance(block, bytes):
        try:
            text = block.decode("ascii")
        except UnicodeDecodeError as err:
            raise FramingError(f"non-ASCII byte in data block at {err.start}", block) from err
    else:
        text = block
    sets: list[DataSet] = []
    lines = text.split("\r\n")
    for number, line in enumerate(lines, 1):
        if line == "!":
            if any(rest for rest in lines[number:]):
                raise FramingError(f"data after the end mark '!' (line {number})", _raw(block))
            break
        if not line:
            continue
        if len(line) > MAX_LINE:
            raise FramingError(
                f"line {number} has {len(line)} characters (at most {MAX_LINE})", _raw(block)
            )
        pos = 0
        while pos < len(line):
            m = _DATASET.match(line, pos)
            if m is None:
                break
            pos = m.end()
            groups = tuple(_value(g) for g in _GROUP.findall(m.group(2)))
            sets.append(DataSet(m.group(1), groups))
        if pos != len(line):
            raise FramingError(f"line {number} is not a data set: {line[:80]!r}", _raw(block))
    return sets


def _value(group: str) -> DataValue:
    value, star, unit = group.partition("*")
    return DataValue(value, unit if star else "")


def _raw(block: bytes | str) -> bytes:
    return block if isinstance(block, bytes) else block.encode("ascii", "replace")


def parse_data_message(frame: bytes, *, require_bcc: bool = True) -> list[DataSet]:
    """A complete data message `STX data-block ! CR LF ETX BCC` -> its data sets.

    With `require_bcc=False` a message ending at `! CR LF` (no ETX/BCC, as some mode A meters
    and optical heads deliver it) is accepted too.
    """
    start = frame.find(STX)
    if start < 0 or frame[:start].strip(b"\r\n"):
        raise FramingError(f"expected STX, got {frame[:40]!r}", frame)
    end = frame.find(ETX, start + 1)
    if end < 0:
        if require_bcc or not frame.endswith(b"!\r\n"):
            raise FramingError(f"no ETX in {len(frame)} bytes: {frame[-40:]!r}", frame)
        body = frame[start + 1 :]
    else:
        if end + 1 >= len(frame):
            raise FramingError("message ends at ETX without its BCC", frame)
        if end + 2 != len(frame):
            raise FramingError(f"{len(frame) - end - 2} bytes after the BCC", frame)
        expected = bcc(frame[start + 1 : end + 1])
        if frame[end + 1] != expected:
            raise BccError(
                f"BCC mismatch: computed 0x{expected:02x}, received 0x{frame[end + 1]:02x} "
                f"({len(frame)} bytes)",
                frame,
            )
        body = frame[start + 1 : end]
    if not body.endswith(b"!\r\n"):
        raise FramingError(f"data block does not end with '!' CR LF: {body[-20:]!r}", frame)
    return parse_data_block(body)


def parse_push_telegram(
    raw: bytes, *, require_bcc: bool = False, require_crc: bool | None = None
) -> tuple[Identification, list[DataSet]]:
    """A mode D telegram as push meters (EMH eHZ and the like) really send it -> its
    identification and data sets.

    `/ident`, an optional blank line, optional STX, data lines, the `!` line, and after it
    ETX BCC only if the telegram began with STX. Lines end in CR LF or LF alone. Bytes before
    the telegram are skipped: it starts at the first `/` from which a whole telegram parses.
    A framed telegram with ETX has its BCC checked (BccError); with `require_bcc` a telegram
    that has STX but no ETX/BCC is rejected, an unframed one never is. A DSMR P1 telegram ends
    with `!` and a CRC-16 (`!6EEE`), which is checked (BccError). A telegram without one is
    refused when `require_crc`, or (None) when it says it is DSMR 4 or later (`1-3:0.2.8`
    >= 40), which always sends one: 8N1 lines have no parity, so the CRC is the only check.
    Raises only FramingError or BccError.
    """
    first: IecError | None = None
    at = raw.find(b"/")
    for _ in range(64):  # bounded: a long run of garbage slashes is not worth more tries
        if at < 0:
            break
        try:
            return _push_telegram(raw[at:], require_bcc, require_crc)
        except BccError:
            raise
        except FramingError as err:
            first = first or err
        at = raw.find(b"/", at + 1)
    raise first or FramingError(f"no '/' identification in {raw[:40]!r}", raw)


def _push_telegram(
    raw: bytes, require_bcc: bool, require_crc: bool | None
) -> tuple[Identification, list[DataSet]]:
    nl = raw.find(b"\n")
    if nl < 0:
        raise FramingError(f"identification without its line end: {raw[:40]!r}", raw)
    ident = parse_identification(raw[:nl].removesuffix(b"\r"))
    rest = raw[nl + 1 :].lstrip(b"\r\n")  # the blank line, if any
    if rest.startswith(STX):
        end = rest.find(ETX)
        if end >= 0:
            if end + 1 >= len(rest):
                raise FramingError("telegram ends at ETX without its BCC", raw)
            if end + 2 != len(rest):
                raise FramingError(f"{len(rest) - end - 2} bytes after the BCC", raw)
            expected = bcc(rest[1 : end + 1])
            if rest[end + 1] != expected:
                raise BccError(
                    f"BCC mismatch: computed 0x{expected:02x}, received 0x{rest[end + 1]:02x} "
                    f"({len(raw)} bytes)",
                    raw,
                )
            body = rest[1:end]
        elif require_bcc:
            raise FramingError(f"telegram with STX but no ETX/BCC: {raw[-40:]!r}", raw)
        else:
            body = rest[1:]
    else:
        body = rest
    lines = body.replace(b"\r\n", b"\n").removesuffix(b"\n")
    data, _, last = lines.rpartition(b"\n")
    mark = _CRC_END.fullmatch(last)
    if mark is None:
        raise FramingError(f"telegram does not end with the '!' line: {raw[-40:]!r}", raw)
    if mark.group(1) is not None:
        bang = raw.rfind(b"!")
        expected = crc16(raw[: bang + 1])
        if int(mark.group(1), 16) != expected:
            raise BccError(
                f"CRC mismatch: computed {expected:04X}, received {mark.group(1).decode()} "
                f"({len(raw)} bytes)",
                raw,
            )
    sets = parse_data_block(data.replace(b"\n", b"\r\n") + b"\r\n!\r\n")
    if mark.group(1) is None and not rest.startswith(STX):  # (a framed one has its BCC)
        version = _dsmr_version(sets)
        if require_crc or (require_crc is None and version >= 40):
            said = f"DSMR {version / 10:g} " if version else ""
            raise FramingError(f"{said}telegram without its CRC after the '!' (bytes lost?)", raw)
    return ident, sets


def _dsmr_version(sets: list[DataSet]) -> int:
    """The DSMR version a telegram declares (`1-3:0.2.8(50)` is 5.0), 0 if none."""
    for ds in sets:
        if ds.address == "1-3:0.2.8" and ds.value.value.isdigit():
            return int(ds.value.value)
    return 0
