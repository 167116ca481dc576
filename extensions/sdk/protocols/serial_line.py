"""A serial line for request/response protocols that find their frames by a terminator (IEC
62056-21, ASCII and binary meter or router protocols): one port, opened once and shared by every
device on it (an RS-485 bus).

Blocking pyserial, meant to run in a worker thread (`asyncio.to_thread`): a conversation is a
strict sequence whose timing (reaction times, flush before a baud switch) is easiest to get
right in straight-line code. What the line guarantees:

- the port stays open across a baud switch: `set_baud` changes the rate on the open port
  (tcsetattr), so input the device already sent is never lost (reopening loses it);
- input that arrives between two reads of a conversation stays in `buffer`, never dropped;
- `write` returns only when the last stop bit has left (tcdrain), so a baud switch right after
  it cannot cut the tail of a request;
- `read_until` waits for a first byte at most `first_timeout`, then at most `char_timeout`
  between bytes, at most until `deadline` in all, and at most `limit` bytes: garbage, a wrong
  baud rate or a device that stops halfway ends with `IncompleteInput` naming what came;
- `abort(token)` makes a blocked read in another thread return at once (a cancelled poll),
  and a conversation whose token is already set never starts.
"""

from __future__ import annotations

import os
import threading
import time
import tty
from collections.abc import Callable
from typing import Any

import serial

__all__ = [
    "Aborted",
    "IncompleteInput",
    "LineError",
    "LinePortError",
    "SerialLine",
    "simulated_port",
]

READ_SLICE = 0.05  # pyserial read timeout: how often a blocked read looks at abort/deadlines
_BYTESIZES = {5: serial.FIVEBITS, 6: serial.SIXBITS, 7: serial.SEVENBITS, 8: serial.EIGHTBITS}
_STOPBITS = {1: serial.STOPBITS_ONE, 2: serial.STOPBITS_TWO}


class LineError(Exception):
    """A failed exchange on the line; `received` holds the bytes that came in, if any."""

    def __init__(self, message: str, received: bytes = b"") -> None:
        super().__init__(message)
        self.received = received


class LinePortError(LineError):
    """The serial port could not be opened, configured, read or written (missing device,
    permission, USB adapter unplugged). The port is closed; the next conversation reopens it."""


class Aborted(LineError):
    """The conversation was aborted (its poll was cancelled)."""


class IncompleteInput(LineError):
    """Bytes came, but not up to the terminator: input stopped, the deadline passed, or the
    size limit was reached (garbage, wrong baud rate, truncated message)."""


class SerialLine:
    """One serial port with a fixed character frame ("8N1": data bits, parity N/E/O/M/S, stop
    bits) and a baud rate chosen per conversation. `lock` serialises the conversations of the
    devices on it."""

    _shared: dict[str, SerialLine] = {}
    _shared_lock = threading.Lock()

    def __init__(
        self,
        port: str,
        *,
        frame: str = "8N1",
        char_timeout: float = 1.5,
        serial_factory: Callable[..., Any] = serial.Serial,
    ) -> None:
        bits, parity, stop = frame[:1], frame[1:2], frame[2:]
        if not (bits.isdigit() and int(bits) in _BYTESIZES and parity and parity in "NEOMS"):
            raise ValueError(f"{port}: {frame!r} is not a serial frame like '8N1' or '7E1'")
        if not (stop.isdigit() and int(stop) in _STOPBITS):
            raise ValueError(f"{port}: {frame!r} is not a serial frame like '8N1' or '7E1'")
        self.port = port
        self.frame = frame
        self._settings = {
            "bytesize": _BYTESIZES[int(bits)],
            "parity": parity,
            "stopbits": _STOPBITS[int(stop)],
        }
        self.char_timeout = char_timeout
        self._factory = serial_factory
        self._serial: Any = None
        self.buffer = bytearray()
        self.lock = threading.Lock()  # one conversation at a time
        self._abort = threading.Event()

    @classmethod
    def shared(cls, port: str, *, frame: str = "8N1", char_timeout: float = 1.5) -> SerialLine:
        """The line object of `port`, created on first use (devices on one bus share it). All
        users of a port must agree on its character frame."""
        with cls._shared_lock:
            line = cls._shared.get(port)
            if line is None:
                line = cls._shared[port] = cls(port, frame=frame, char_timeout=char_timeout)
            elif line.frame != frame:
                raise ValueError(
                    f"{port}: devices on one line must share its frame ({line.frame}, not {frame})"
                )
            return line

    @property
    def baudrate(self) -> int | None:
        """The rate the open port is set to (None while closed)."""
        return None if self._serial is None else int(self._serial.baudrate)

    @property
    def aborted(self) -> bool:
        return self._abort.is_set()

    # The port is opened lazily and reopened only after an OS-level error (USB unplugged).
    def open(self, baud: int) -> Any:
        if self._serial is None:
            try:
                self._serial = self._factory(
                    self.port, baudrate=baud, timeout=READ_SLICE, **self._settings
                )
            except (serial.SerialException, OSError, ValueError) as err:
                hint = ""
                if "Permission denied" in str(err) or "Errno 13" in str(err):
                    # Under `smx run` as root each process has a user of its own.
                    hint = (
                        " (this process's user may not open it: give it the device's group"
                        ' with os_groups = ["dialout"] in site.toml, docs/DEPLOY.md)'
                    )
                raise LinePortError(f"cannot open serial port {self.port}: {err}{hint}") from err
        elif self._serial.baudrate != baud:
            self.set_baud(baud)
        return self._serial

    def set_baud(self, baud: int) -> None:
        try:
            self._serial.baudrate = baud  # tcsetattr on the open fd: input queue kept
        except (serial.SerialException, OSError, ValueError) as err:
            self.close()
            raise LinePortError(f"cannot set {baud} baud on {self.port}: {err}") from err

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

    def start(
        self, baud: int, token: threading.Event | None = None, *, drop_input: bool = True
    ) -> None:
        """Begin a conversation: open at `baud` and (unless `drop_input` is false: a device
        that pushes) drop what is left of an earlier one. `token` is this conversation's abort
        flag (already set: it stops at the first read)."""
        self._abort = token if token is not None else threading.Event()
        port = self.open(baud)
        if not drop_input:
            return
        try:
            port.reset_input_buffer()
        except (serial.SerialException, OSError) as err:
            self.close()
            raise LinePortError(f"serial port {self.port} failed: {err}") from err
        self.buffer.clear()

    def write(self, data: bytes) -> None:
        try:
            self._serial.write(data)
            self._serial.flush()  # tcdrain: returns when the last stop bit has left
        except (serial.SerialException, OSError) as err:
            self.close()
            raise LinePortError(f"write to {self.port} failed: {err}") from err

    def _fill(self, wait: float, deadline: float) -> bool:
        """Read what arrives within `wait` s into `buffer`; False if nothing came."""
        port = self._serial
        until = min(time.monotonic() + wait, deadline)
        try:
            while True:
                if self._abort.is_set():
                    raise Aborted("read aborted (poll cancelled)", bytes(self.buffer))
                chunk = port.read(1)  # returns at the first byte, or after one READ_SLICE
                if chunk:
                    break
                if time.monotonic() >= until:
                    return False
            waiting = port.in_waiting
            if waiting:
                chunk += port.read(waiting)
        except (serial.SerialException, OSError) as err:
            self.close()
            raise LinePortError(f"read from {self.port} failed: {err}") from err
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
        """Bytes up to and including `marker` (+ `extra` bytes after it, e.g. a checksum),
        taken from `buffer`. None if nothing at all came within `first_timeout`;
        IncompleteInput if the input stopped for `char_timeout` (or hit `deadline`, a
        time.monotonic() value, or ran past `limit`) before the marker."""
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
                raise IncompleteInput(f"no {marker!r} within {limit} bytes: {got[:60]!r}...", got)
            started = bool(self.buffer)
            if not self._fill(self.char_timeout if started else first_timeout, deadline):
                if not started:
                    return None
                got = bytes(self.buffer)
                self.buffer.clear()
                why = "overall timeout" if time.monotonic() >= deadline else "input stopped"
                raise IncompleteInput(
                    f"{why} after {len(got)} bytes waiting for {marker!r}: {got[-60:]!r}", got
                )


def simulated_port() -> tuple[int, int, str]:
    """A pseudo-terminal for a device simulator: (its master, its slave, the port's path a
    reader opens). Raw on both sides: no echo or line editing before the reader configures
    it. The master is non-blocking: a device sends whether or not anyone listens, and a full
    line must not block it (a blocked write also made the next reader's open fail)."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)
