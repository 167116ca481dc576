"""IEC 62056-21 readout client: one conversation with one meter on a serial line (modes A, B,
C; mode D listens for what the meter pushes).

Our own small client: the PyPI `iec62056-21` package reopens the port after the baud switch and
loses what the meter already sent (TECH-NOTES.md "Serial"). The line is the SDK's `SerialLine`:
one port stays open for the whole conversation; after the ACK has left (tcdrain) the baud rate
changes on the open port, so nothing buffered is lost.

The I/O is blocking pyserial run in a worker thread (`asyncio.to_thread`): a readout is one
strictly sequential conversation whose timing (reaction times, flush before the baud switch)
is easiest to get right in straight-line blocking code, it needs no extra dependency
(pyserial-asyncio), and a cancelled poll stops the thread by aborting the line's read.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from extensions.sdk.protocols.serial_line import (
    Aborted,
    IncompleteInput,
    LineError,
    LinePortError,
    SerialLine,
)

from .iec62056_21 import (
    ACK,
    BAUD_MODE_B,
    BAUD_MODE_C,
    CHAR_TIMEOUT,
    CRLF,
    ETX,
    MODE_D_BAUD,
    REACTION_MAX,
    REACTION_MIN,
    STX,
    BccError,
    DataSet,
    FramingError,
    Identification,
    IecError,
    NoAnswer,
    PortError,
    parse_data_message,
    parse_identification,
    parse_push_telegram,
    sign_on,
)

__all__ = ["FRAME", "IecClient", "Readout", "iec_line"]

log = logging.getLogger(__name__)

FRAME = "7E1"  # the standard's character format: 7 data bits, even parity, 1 stop bit


def iec_line(port: str, *, char_timeout: float = CHAR_TIMEOUT) -> SerialLine:
    """The shared 7E1 line of `port` (every meter on one RS-485 bus uses the same object)."""
    return SerialLine.shared(port, frame=FRAME, char_timeout=char_timeout)


_AS_IEC: dict[type[LineError], type[IecError]] = {
    LinePortError: PortError,
    Aborted: NoAnswer,  # the poll was cancelled: no answer for it
    IncompleteInput: FramingError,
}


@contextmanager
def _as_iec_errors() -> Iterator[None]:
    """The line's errors as the readout errors of IEC 62056-21 (message and bytes kept)."""
    try:
        yield
    except LineError as err:
        kind = next((iec for line, iec in _AS_IEC.items() if isinstance(err, line)), IecError)
        raise kind(str(err) + _garbage_hint(err.received), err.received) from err


def _garbage_hint(received: bytes) -> str:
    """IEC 62056-21 is 7-bit ASCII: bytes with the high bit set are what a UART makes of
    characters sent at another rate or frame than it is set to."""
    if len(received) >= 8 and sum(b >= 0x80 for b in received) * 4 > len(received):
        return " (non-ASCII bytes: a wrong baud rate? check mode and initial_baud)"
    return ""


@dataclass(frozen=True)
class Readout:
    """One data readout: the identification, the data sets, the raw message, timings."""

    identification: Identification
    datasets: list[DataSet]
    raw: bytes
    baud: int  # baud rate of the data message
    started: float  # time.time() at the sign-on (or at the push, mode D)
    duration: float  # seconds from sign-on to the BCC


class IecClient:
    """Reads one meter (selected by `address` on a shared line).

    mode "C": sign-on, identification, ACK 0 Z 0 (data readout) and switch to Z's baud rate;
    "B": switch to the baud rate of Z (letters A-F) right after the identification, no ACK;
    "A": no baud switch; "D": the meter pushes, use `listen()`.
    `max_baud` caps the rate proposed in mode C (a long RS-485 line, an optical head).
    """

    def __init__(
        self,
        port: str | SerialLine,
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
        require_crc: bool | None = None,
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
        self.require_crc = require_crc  # DSMR: None = when the telegram is DSMR 4 or later
        self.line = (
            port
            if isinstance(port, SerialLine)
            else SerialLine(port, frame=FRAME, char_timeout=char_timeout)
        )

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
        with self.line.lock, _as_iec_errors():
            return self._read(token)

    def _read(self, token: threading.Event | None) -> Readout:
        line = self.line
        started, t0 = time.time(), time.monotonic()
        deadline = t0 + self.read_timeout
        line.start(self.initial_baud, token)
        if line.aborted:
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
        and return it. Nothing is sent.

        The telegram runs from `/` to the `!` line; STX, ETX/BCC and the blank line after the
        identification are optional, lines may end in LF alone (`parse_push_telegram`).
        What came before the call is dropped: a meter pushes every second or two and is read
        every `interval`, so a kept buffer would hand out ever older telegrams as current.
        Garbage and telegrams with a wrong checksum are skipped: the reader resynchronises on
        the next `/` until a telegram parses or the wait is over (then the last error, or
        NoAnswer if nothing came)."""
        with self.line.lock, _as_iec_errors():
            wait = self.read_timeout if timeout is None else timeout
            started, t0 = time.time(), time.monotonic()
            line = self.line
            line.start(self.initial_baud, token)  # drops older input: the next telegram only
            until = t0 + wait
            last: FramingError | BccError | None = None
            while True:
                try:
                    got = self._push(until)
                except (FramingError, BccError) as err:
                    if line.aborted or time.monotonic() >= until:
                        raise
                    log.debug("%s: skipping %s", self, err)
                    last = err
                    continue
                if got is None:
                    if last is not None:
                        raise last
                    raise NoAnswer(f"no telegram on {line.port} within {wait:g} s")
                telegram, (ident, datasets) = got
                return Readout(
                    ident, datasets, telegram, self.initial_baud, started, time.monotonic() - t0
                )

    def _push(self, until: float) -> tuple[bytes, tuple[Identification, list[DataSet]]] | None:
        """One telegram from the next `/`, parsed; None if no `/` came before `until`."""
        try:
            return self._push_once(until)
        except IncompleteInput as err:  # garbage, a cut telegram: keep listening
            raise FramingError(str(err), err.received) from err

    def _push_once(self, until: float) -> tuple[bytes, tuple[Identification, list[DataSet]]] | None:
        line = self.line
        head = line.read_until(
            b"/", first_timeout=max(0.0, until - time.monotonic()), deadline=until, limit=4096
        )
        if head is None or line.aborted:
            return None
        line.buffer[:0] = b"/"  # resynchronised: drop what preceded the "/"
        deadline = time.monotonic() + self.read_timeout
        telegram = line.read_until(b"!", first_timeout=0, deadline=deadline, limit=self.max_bytes)
        assert telegram is not None  # the "/" is in the buffer
        # The "!" line ends in CR LF, after a DSMR meter's four CRC digits.
        telegram += (
            line.read_until(b"\n", first_timeout=REACTION_MAX, deadline=deadline, limit=6) or b""
        )
        if STX in telegram:  # framed: ETX and BCC follow the "!" line
            try:
                tail = line.read_until(
                    ETX,
                    first_timeout=REACTION_MAX if self.require_bcc else 0.05,
                    deadline=deadline,
                    limit=1,
                    extra=1,
                )
            except IncompleteInput:
                tail = None
            telegram += tail or b""
        return telegram, parse_push_telegram(
            telegram, require_bcc=self.require_bcc, require_crc=self.require_crc
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
            except IncompleteInput:
                tail = None
            if tail:
                frame += tail
        stripped = frame.lstrip(b"\r\n")
        if not stripped.startswith(STX):
            raise FramingError(f"expected STX, got {stripped[:40]!r}", frame)
        return stripped
