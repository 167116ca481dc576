"""IEC 62056-21 (ex IEC 61107) data readout client: modes A, B, C (sign-on, identification,
acknowledgement with baud switch, data message with BCC) and mode D (the meter pushes).

Our own small client: the PyPI `iec62056-21` package reopens the port after the baud switch and
loses what the meter already sent (TECH-NOTES.md "Serial"). Here one `serial.Serial` stays open
for the whole conversation; after the ACK we `flush()` (tcdrain: the ACK has left the UART) and
only then change `baudrate` on the open port, so nothing buffered is lost.

The I/O is blocking pyserial run in a worker thread (`asyncio.to_thread`): a readout is one
strictly sequential conversation whose timing (reaction times, flush before the baud switch)
is easiest to get right in straight-line blocking code, it needs no extra dependency
(pyserial-asyncio), and a cancelled poll stops the thread through `Serial.cancel_read()`.

Framing is 7E1 (7 data bits, even parity, 1 stop bit), 300 baud initial by default.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import serial

__all__ = [
    "ACK",
    "BAUD_MODE_B",
    "BAUD_MODE_C",
    "ETX",
    "STX",
    "BccError",
    "DataSet",
    "DataValue",
    "FramingError",
    "IecClient",
    "IecError",
    "IecLine",
    "Identification",
    "NoAnswer",
    "PortError",
    "Readout",
    "bcc",
    "data_message",
    "parse_data_block",
    "parse_data_message",
    "parse_identification",
    "sign_on",
]

log = logging.getLogger(__name__)

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
_SLICE = 0.05  # pyserial read timeout: how often a blocked read looks at abort/deadlines

_ADDRESS = re.compile(r"[0-9A-Za-z ]{0,32}")
_IDENT = re.compile(
    rb"/([A-Za-z]{2}[A-Za-z0-9])([0-9A-Za-z])(?:\\([0-9A-Za-z]))?([\x20-\x7e]{0,16})"
)
# One data set: address, then one or more (value*unit) groups.
_DATASET = re.compile(r"([^()/!\r\n]*)((?:\([^()\r\n]*\))+)")
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
        pos = 0
        for m in _DATASET.finditer(line):
            if m.start() != pos:
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


@dataclass(frozen=True)
class Readout:
    """One data readout: the identification, the data sets, the raw message, timings."""

    identification: Identification
    datasets: list[DataSet]
    raw: bytes
    baud: int  # baud rate of the data message
    started: float  # time.time() at the sign-on (or at the push, mode D)
    duration: float  # seconds from sign-on to the BCC


# -- the serial line -----------------------------------------------------------------------------


class IecLine:
    """One serial port, opened once and shared by every meter on it (an RS-485 bus): input that
    arrives between two reads of a conversation stays in `buffer`, never dropped."""

    _shared: dict[str, IecLine] = {}
    _shared_lock = threading.Lock()

    def __init__(
        self,
        port: str,
        *,
        char_timeout: float = CHAR_TIMEOUT,
        serial_factory: Callable[..., Any] = serial.Serial,
    ) -> None:
        self.port = port
        self.char_timeout = char_timeout
        self._factory = serial_factory
        self._serial: Any = None
        self.buffer = bytearray()
        self.lock = threading.Lock()  # one conversation at a time
        self._abort = threading.Event()

    @classmethod
    def shared(cls, port: str, *, char_timeout: float = CHAR_TIMEOUT) -> IecLine:
        """The line object of `port`, created on first use (meters on one bus share it)."""
        with cls._shared_lock:
            line = cls._shared.get(port)
            if line is None:
                line = cls._shared[port] = cls(port, char_timeout=char_timeout)
            return line

    # The port is opened lazily and reopened only after an OS-level error (USB unplugged).
    def open(self, baud: int) -> Any:
        if self._serial is None:
            try:
                self._serial = self._factory(
                    self.port,
                    baudrate=baud,
                    bytesize=serial.SEVENBITS,
                    parity=serial.PARITY_EVEN,
                    stopbits=serial.STOPBITS_ONE,
                    timeout=_SLICE,
                )
            except (serial.SerialException, OSError, ValueError) as err:
                raise PortError(f"cannot open serial port {self.port}: {err}") from err
        elif self._serial.baudrate != baud:
            self.set_baud(baud)
        return self._serial

    def set_baud(self, baud: int) -> None:
        try:
            self._serial.baudrate = baud  # tcsetattr on the open fd: input queue kept
        except (serial.SerialException, OSError, ValueError) as err:
            self.close()
            raise PortError(f"cannot set {baud} baud on {self.port}: {err}") from err

    def close(self) -> None:
        if self._serial is not None:
            try:
                self._serial.close()
            except (serial.SerialException, OSError):
                pass
            self._serial = None
        self.buffer.clear()

    def abort(self, token: threading.Event | None = None) -> None:
        """Make a blocked read in another thread return now (the poll was cancelled). With a
        token, only the conversation that token belongs to stops, now or as soon as it gets the
        line: a cancelled poll still waiting for the lock must not run later in the background."""
        if token is not None:
            token.set()
            if self._abort is not token:
                return
        self._abort.set()
        if self._serial is not None:
            try:
                self._serial.cancel_read()
            except (serial.SerialException, OSError, AttributeError):
                pass

    def start(self, baud: int, token: threading.Event | None = None) -> None:
        """Begin a conversation: open at `baud`, drop what is left of an earlier one. `token`
        is this conversation's abort flag (already set: it stops at the first read)."""
        self._abort = token if token is not None else threading.Event()
        port = self.open(baud)
        try:
            port.reset_input_buffer()
        except (serial.SerialException, OSError) as err:
            self.close()
            raise PortError(f"serial port {self.port} failed: {err}") from err
        self.buffer.clear()

    def write(self, data: bytes) -> None:
        try:
            self._serial.write(data)
            self._serial.flush()  # tcdrain: returns when the last stop bit has left
        except (serial.SerialException, OSError) as err:
            self.close()
            raise PortError(f"write to {self.port} failed: {err}") from err

    def _fill(self, wait: float, deadline: float) -> bool:
        """Read what arrives within `wait` s into `buffer`; False if nothing came."""
        port = self._serial
        until = min(time.monotonic() + wait, deadline)
        try:
            while True:
                if self._abort.is_set():
                    raise NoAnswer("read aborted (poll cancelled)", bytes(self.buffer))
                chunk = port.read(1)  # returns at the first byte, or after one _SLICE
                if chunk:
                    break
                if time.monotonic() >= until:
                    return False
            waiting = port.in_waiting
            if waiting:
                chunk += port.read(waiting)
        except (serial.SerialException, OSError) as err:
            self.close()
            raise PortError(f"read from {self.port} failed: {err}") from err
        self.buffer += chunk
        return True

    def read_until(
        self,
        marker: bytes,
        *,
        first_timeout: float,
        deadline: float,
        limit: int,
        extra: int = 0,
    ) -> bytes | None:
        """Bytes up to and including `marker` (+ `extra` bytes after it), taken from `buffer`.
        None if nothing at all came within `first_timeout`; FramingError if the input stopped
        for `char_timeout` (or hit the deadline, or ran past `limit`) before the marker; the
        message names what was received."""
        while True:
            at = self.buffer.find(marker)
            if at >= 0 and len(self.buffer) >= at + len(marker) + extra:
                end = at + len(marker) + extra
                out = bytes(self.buffer[:end])
                del self.buffer[:end]
                return out
            if len(self.buffer) > limit:
                got = bytes(self.buffer)
                self.buffer.clear()
                raise FramingError(f"no {marker!r} within {limit} bytes: {got[:60]!r}...", got)
            started = bool(self.buffer)
            if not self._fill(self.char_timeout if started else first_timeout, deadline):
                if not started:
                    return None
                got = bytes(self.buffer)
                self.buffer.clear()
                why = "overall timeout" if time.monotonic() >= deadline else "input stopped"
                raise FramingError(
                    f"{why} after {len(got)} bytes waiting for {marker!r}: {got[-60:]!r}", got
                )


# -- the client ----------------------------------------------------------------------------------


class IecClient:
    """Reads one meter (selected by `address` on a shared line).

    mode "C": sign-on, identification, ACK 0 Z 0 (data readout) and switch to Z's baud rate;
    "B": switch to the baud rate of Z (letters A-F) right after the identification, no ACK;
    "A": no baud switch; "D": the meter pushes, use `listen()`.
    `max_baud` caps the rate proposed in mode C (a long RS-485 line, an optical head).
    """

    def __init__(
        self,
        port: str | IecLine,
        *,
        address: str = "",
        mode: str = "C",
        initial_baud: int = 300,
        max_baud: int | None = None,
        reaction_time: float = REACTION_MIN,
        answer_timeout: float = REACTION_MAX,
        char_timeout: float = CHAR_TIMEOUT,
        read_timeout: float = 60.0,
        max_bytes: int = 256 * 1024,
        require_bcc: bool = True,
    ) -> None:
        mode = mode.upper()
        if mode not in ("A", "B", "C", "D"):
            raise ValueError(f"IEC 62056-21 mode must be A, B, C or D, not {mode!r}")
        self.request = sign_on(address)
        self.address = address
        self.mode = mode
        self.initial_baud = MODE_D_BAUD if mode == "D" and initial_baud == 300 else initial_baud
        self.max_baud = max_baud
        self.reaction_time = reaction_time
        self.answer_timeout = answer_timeout
        self.read_timeout = read_timeout
        self.max_bytes = max_bytes
        self.require_bcc = require_bcc
        self.line = port if isinstance(port, IecLine) else IecLine(port, char_timeout=char_timeout)

    def __repr__(self) -> str:
        return f"IecClient({self.line.port!r}, address={self.address!r}, mode={self.mode})"

    # -- asyncio front ---------------------------------------------------------------------------

    async def aread(self) -> Readout:
        """`read()` in a worker thread; cancelling the await stops the thread's I/O."""
        return await self._in_thread(lambda token: self.read(token))

    async def alisten(self, timeout: float | None = None) -> Readout:
        return await self._in_thread(lambda token: self.listen(timeout, token))

    async def _in_thread(self, fn: Callable[[threading.Event], Readout]) -> Readout:
        token = threading.Event()  # this call's own abort flag
        try:
            return await asyncio.to_thread(fn, token)
        except asyncio.CancelledError:
            self.line.abort(token)
            raise

    def close(self) -> None:
        self.line.close()

    # -- blocking conversation -------------------------------------------------------------------

    def read(self, token: threading.Event | None = None) -> Readout:
        """One data readout (modes A, B, C). Raises NoAnswer, FramingError, BccError, PortError."""
        if self.mode == "D":
            return self.listen(token=token)
        with self.line.lock:
            return self._read(token)

    def _read(self, token: threading.Event | None) -> Readout:
        line = self.line
        started, t0 = time.time(), time.monotonic()
        deadline = t0 + self.read_timeout
        line.start(self.initial_baud, token)
        if line._abort.is_set():
            raise NoAnswer("read cancelled before it started")
        line.write(self.request)
        ident_line = self._identification(deadline)
        ident = parse_identification(ident_line)
        got_ident = time.monotonic()
        baud = self.initial_baud
        z = ident.baud_char
        if self.mode == "C" and z in BAUD_MODE_C:
            z = self._capped(z)
            ack = ACK + b"0" + z.encode("ascii") + b"0" + CRLF
            # The meter may not listen before t_r has passed since its last byte.
            pause = self.reaction_time - (time.monotonic() - got_ident)
            if pause > 0:
                time.sleep(pause)
            line.write(ack)  # write + flush: the ACK has left before the switch
            baud = BAUD_MODE_C[z]
            if baud != self.initial_baud:
                line.set_baud(baud)
            log.debug("%s: ACK %r, now %d baud", self, ack, baud)
        elif self.mode in ("B", "C") and z in BAUD_MODE_B:
            baud = BAUD_MODE_B[z]
            line.set_baud(baud)
        frame = self._data_message(deadline, answer=REACTION_MAX + self.reaction_time)
        datasets = parse_data_message(frame, require_bcc=self.require_bcc)
        return Readout(ident, datasets, frame, baud, started, time.monotonic() - t0)

    def listen(self, timeout: float | None = None, token: threading.Event | None = None) -> Readout:
        """Mode D: wait (at most `timeout`, default read_timeout) for the next pushed telegram
        (identification then data message) and return it. Nothing is sent."""
        with self.line.lock:
            wait = self.read_timeout if timeout is None else timeout
            started, t0 = time.time(), time.monotonic()
            line = self.line
            line.open(self.initial_baud)
            line._abort = token if token is not None else threading.Event()
            deadline = t0 + wait + self.read_timeout
            # Resynchronise on the start of an identification message (drop what precedes).
            head = line.read_until(b"/", first_timeout=wait, deadline=t0 + wait, limit=4096)
            if head is None:
                raise NoAnswer(f"no telegram on {line.port} within {wait:g} s")
            line.buffer[:0] = b"/"
            ident_line = line.read_until(CRLF, first_timeout=0, deadline=deadline, limit=128)
            assert ident_line is not None  # the "/" is in the buffer
            ident = parse_identification(ident_line)
            frame = self._data_message(deadline, answer=REACTION_MAX)
            datasets = parse_data_message(frame, require_bcc=self.require_bcc)
            return Readout(
                ident, datasets, frame, self.initial_baud, started, time.monotonic() - t0
            )

    def _capped(self, z: str) -> str:
        if self.max_baud is None or BAUD_MODE_C[z] <= self.max_baud:
            return z
        allowed = [c for c, b in BAUD_MODE_C.items() if b <= self.max_baud and c <= z]
        return max(allowed) if allowed else "0"

    def _identification(self, deadline: float) -> bytes:
        line = self.line
        for _ in range(2):
            got = line.read_until(
                CRLF,
                first_timeout=self.answer_timeout + self.reaction_time,
                deadline=deadline,
                limit=128,
            )
            if got is None:
                raise NoAnswer(
                    f"no identification from meter {self.address!r} on {line.port} within "
                    f"{self.answer_timeout + self.reaction_time:g} s "
                    f"at {self.initial_baud} baud"
                )
            if got.lstrip(b"\r\n") != self.request:  # an optical head echoes our request
                return got.lstrip(b"\r\n")
        raise FramingError("only our own request echoed back, no identification", self.request)

    def _data_message(self, deadline: float, *, answer: float) -> bytes:
        line = self.line
        # Skip an echo of our ACK and blank lines before STX.
        marker = ETX if self.require_bcc else b"!\r\n"
        frame = line.read_until(
            marker,
            first_timeout=answer,
            deadline=deadline,
            limit=self.max_bytes,
            extra=1 if self.require_bcc else 0,
        )
        if frame is None:
            raise NoAnswer(f"no data message from meter {self.address!r} on {line.port}")
        if frame.startswith(ACK):
            cut = frame.find(CRLF)
            frame = frame[cut + 2 :] if 0 <= cut < 8 else frame
        if not self.require_bcc:
            # A BCC may still follow: take it if it comes within a character time or two.
            try:
                tail = line.read_until(ETX, first_timeout=0.05, deadline=deadline, limit=1, extra=1)
            except FramingError:
                tail = None
            if tail:
                frame += tail
        stripped = frame.lstrip(b"\r\n")
        if not stripped.startswith(STX):
            raise FramingError(f"expected STX, got {stripped[:40]!r}", frame)
        return stripped
