"""IEC 62056-21 meter simulator on a pseudo-terminal: replays a recorded readout with live
values, at real line timing, with fault injection.

The reader opens `sim.port` (the pty's slave side) like a serial port. The simulator keeps the
line timing of a real meter: every byte it sends takes 10 bit times at its current baud rate,
and a request is acted on only after its own line time plus the reaction time t_r. It honours
the mode C baud switch, and it emulates a baud mismatch: the pty carries the reader's termios
settings, so a byte sent at a rate the reader's port is not set to arrives as garbage (what a
UART would make of it). Faults (set `sim.fault` at any time): "bcc" wrong BCC, "truncate" the
data message stops halfway, "garbage" noise instead of the identification, "silent" no answer,
"wrong_baud" the data message at another rate than agreed. Mode D pushes telegrams framed
as the standard says, or (`push_framing`) as real push meters send them: no STX/ETX/BCC,
with or without the blank line, LF-only; `sim.push_garbage` is sent before each telegram.
With `replay`, a meter sends its recording's own bytes unchanged instead of live values.

    python -m extensions.smm.iec_simulator --replay \
        --fixture tests/extensions/smm/fixtures/iskra_mt174/readout.txt
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import random
import re
import select
import signal
import termios
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from extensions.sdk.protocols.serial_line import simulated_port

from .iec62056_21 import (
    BAUD_MODE_B,
    BAUD_MODE_C,
    CRLF,
    ETX,
    MODE_D_BAUD,
    STX,
    Identification,
    bcc,
    crc16,
    parse_identification,
)
from .obis import parse_obis

__all__ = ["FAULTS", "PUSH_FRAMINGS", "IecSimulator", "SimMeter", "main"]

log = logging.getLogger(__name__)

FAULTS = ("bcc", "truncate", "garbage", "silent", "wrong_baud")
PUSH_FRAMINGS = ("framed", "unframed", "no_blank", "lf", "dsmr")
_REQUEST = re.compile(rb"/\?([0-9A-Za-z ]{0,32})!\r\n")
_ACK = re.compile(rb"\x06([0-9])([0-9A-Za-z])([0-9])\r\n")
_LINE = re.compile(r"([^()]*)\(([^()*]*)(\*[^()]*)?\)(.*)")
_SPEEDS = {
    getattr(termios, f"B{b}"): b
    for b in (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
}


def _like(original: str, value: float) -> str:
    """`value` formatted like `original` (width, decimals, explicit sign)."""
    sign = original[:1] if original[:1] in "+-" else ""
    digits = original[len(sign) :]
    decimals = len(digits.partition(".")[2])
    text = f"{abs(value):0{len(digits)}.{decimals}f}"
    if sign or value < 0:
        text = ("-" if value < 0 else "+") + text
    return text


class SimMeter:
    """One simulated meter: the identification and data lines of a recorded readout, replayed
    with live P/U/I (random walk) and import energy growing with P."""

    def __init__(
        self,
        fixture: bytes | str | Path,
        *,
        address: str = "",
        drift: bool = True,
        energy_speedup: float = 1.0,
        seed: int = 0,
        clock_tz: dt.tzinfo = dt.UTC,
        replay: bool = False,
    ) -> None:
        raw = fixture if isinstance(fixture, bytes) else Path(fixture).read_bytes()
        self.address = address
        self.drift = drift
        self.energy_speedup = energy_speedup
        self.clock_tz = clock_tz
        self._rng = random.Random(seed)
        lines = [ln.removesuffix(b"\r") for ln in raw.split(b"\n")]
        idents = [ln for ln in lines if ln.startswith(b"/") and not ln.startswith(b"/?")]
        if not idents and replay:
            raise ValueError(f"fixture {str(fixture)[:60]}: no identification line to replay")
        # A recording without one (data lines only) gets a made-up identification.
        self.identification = parse_identification(idents[0] if idents else b"/SIM5RECORDING")
        # Replay: the meter's own bytes exactly as recorded, whatever they are (a DSMR CRC, a
        # gateway's trailing junk, a missing ETX): the identification line, then the data
        # message from STX (mode A/B/C), or the whole telegram from its "/" (mode D).
        self.replay = replay
        ident_line = idents[0] if idents else b""
        at = raw.find(ident_line) if ident_line else 0
        self.recorded_identification = ident_line + CRLF
        self.recorded_telegram = raw[at:]
        stx = raw.find(STX, at)
        self.recorded_message = raw[stx:] if stx >= 0 else b""
        self.lines: list[str] = []
        self.base: dict[str, float] = {}
        if replay:
            return
        self.lines = _data_lines(raw, ident_line)
        if not self.lines:
            raise ValueError(f"fixture {str(fixture)[:60]}: no data lines")
        for line in self.lines:
            m = _LINE.fullmatch(line)
            code = parse_obis(m.group(1)) if m else None
            if m and code and code.current:
                try:
                    self.base.setdefault(code.key, float(m.group(2)))
                except ValueError:
                    pass
        self.p_factor = 1.0
        self.energy_kwh = 0.0  # added to the import registers since start
        self._last = time.monotonic()
        self.last_sent: dict[str, str] = {}  # C.D.E -> value text of the last telegram

    def block(self, now: float | None = None) -> bytes:
        """The data block of a readout taken now: data lines then `! CR LF`."""
        mono = time.monotonic()
        p_kw = self.base.get("1.7.0", 0.0) * self.p_factor
        self.energy_kwh += p_kw * (mono - self._last) / 3600 * self.energy_speedup
        self._last = mono
        if self.drift:
            self.p_factor = min(1.5, max(0.5, self.p_factor * (1 + self._rng.gauss(0, 0.03))))
        clock = dt.datetime.fromtimestamp(time.time() if now is None else now, self.clock_tz)
        out = []
        self.last_sent = {}
        for line in self.lines:
            m = _LINE.fullmatch(line)
            code = parse_obis(m.group(1)) if m else None
            if m is None or code is None or not code.current:
                out.append(line)
                continue
            value = self._live(code.key, m.group(2), clock)
            self.last_sent.setdefault(code.key, value)
            out.append(f"{m.group(1)}({value}{m.group(3) or ''}){m.group(4)}")
        return ("\r\n".join(out) + "\r\n!\r\n").encode("ascii")

    def _live(self, key: str, text: str, clock: dt.datetime) -> str:
        base = self.base.get(key)
        if key == "0.9.1":
            return clock.strftime("%H%M%S")
        if key == "0.9.2":
            return text[: max(0, len(text) - 6)] + clock.strftime("%y%m%d")
        if base is None or not self.drift:
            return text
        if key == "1.7.0":
            return _like(text, base * self.p_factor)
        if key in ("1.8.0", "1.8.1"):  # total and the active tariff (T1)
            return _like(text, base + self.energy_kwh)
        if key in ("31.7.0", "51.7.0", "71.7.0", "11.7.0"):
            return _like(text, base * self.p_factor)
        if key in ("32.7.0", "52.7.0", "72.7.0", "12.7.0"):
            return _like(text, base * (1 + self._rng.gauss(0, 0.004)))
        return text


def _data_lines(raw: bytes, ident_line: bytes) -> list[str]:
    """The data lines of a recording as it comes: after STX if it has one, else after the
    identification line (if any); CR LF or LF; up to the "!" line (with or without a CRC),
    an ETX, or the end of the file."""
    start = raw.find(STX)
    if start >= 0:
        data = raw[start + 1 :]
    elif ident_line:
        data = raw[raw.find(ident_line) + len(ident_line) :]
    else:
        data = raw
    lines = []
    for line in data.replace(CRLF, b"\n").split(b"\n"):
        if line.startswith((b"!", ETX)):
            break
        if line.strip() and not line.startswith(b"/?"):
            lines.append(line.decode("ascii"))
    return lines


class IecSimulator:
    """Meters on one simulated line (a pty). `meters` by address; a sign-on without an address
    is answered by the meter with address "" or by the only meter."""

    def __init__(
        self,
        meters: SimMeter | Iterable[SimMeter],
        *,
        mode: str = "C",
        initial_baud: int = 300,
        reaction_time: float = 0.2,
        echo: bool = False,
        push_interval: float = 1.0,
        push_framing: str = "framed",
        fault: str | None = None,
        seed: int = 1,
    ) -> None:
        meters = [meters] if isinstance(meters, SimMeter) else list(meters)
        self.meters = {m.address: m for m in meters}
        self.mode = mode.upper()
        self.initial_baud = (
            MODE_D_BAUD if self.mode == "D" and initial_baud == 300 else initial_baud
        )
        self.reaction_time = reaction_time
        self.echo = echo
        self.push_interval = push_interval
        if push_framing not in PUSH_FRAMINGS:
            raise ValueError(f"push_framing must be one of {PUSH_FRAMINGS}, not {push_framing!r}")
        self.push_framing = push_framing
        self.push_garbage = b""  # sent before each pushed telegram (line noise)
        self.fault = fault
        self.readouts = 0
        self.last_duration = 0.0  # seconds from request received to last byte sent
        self.last_bytes = 0  # bytes sent in the last readout (identification + data)
        self._rng = random.Random(seed)
        self._master, self._slave, self.port = simulated_port()
        self._wake_r, self._wake_w = os.pipe()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._buf = bytearray()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> IecSimulator:
        self._thread = threading.Thread(target=self._run, name="iec-sim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(5)
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> IecSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- line ------------------------------------------------------------------------------------

    def _reader_baud(self) -> int:
        try:
            return _SPEEDS.get(termios.tcgetattr(self._master)[5], 0)
        except termios.error:
            return 0

    def _send(self, data: bytes, baud: int) -> None:
        """Write at line speed: byte i is delivered when its stop bit would have ended."""
        t0 = time.monotonic()
        per_byte = 10.0 / baud
        step = max(1, int(baud / 10 * 0.003))  # ~3 ms of bytes per write
        for i in range(0, len(data), step):
            if self._stop.is_set():
                return
            chunk = data[i : i + step]
            due = t0 + (i + len(chunk)) * per_byte
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            rx = self._reader_baud()
            if rx and rx != baud:  # the reader's UART samples at another rate: garbage
                n = max(1, round(len(chunk) * rx / baud))
                chunk = bytes(self._rng.randrange(0x80, 0x100) for _ in range(n))
            try:
                os.write(self._master, chunk)
            except BlockingIOError:  # nobody reads the line: a meter's bytes are just lost
                pass

    def _receive(self, timeout: float) -> bool:
        r, _, _ = select.select([self._master, self._wake_r], [], [], timeout)
        if self._wake_r in r:
            return False
        if self._master in r:
            try:
                self._buf += os.read(self._master, 4096)
            except OSError:  # no reader has the slave open (EIO): nothing came
                time.sleep(0.01)
        return True

    def _wait_for(self, pattern: re.Pattern[bytes], timeout: float) -> re.Match[bytes] | None:
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            m = pattern.search(bytes(self._buf))  # a match on a bytearray follows its edits
            if m:
                del self._buf[: m.end()]
                return m
            left = deadline - time.monotonic()
            if left <= 0 or not self._receive(min(left, 0.05)):
                return None
        return None

    # -- meter behaviour -------------------------------------------------------------------------

    def _run(self) -> None:
        next_push = time.monotonic() + self.push_interval
        while not self._stop.is_set():
            if self.mode == "D":
                if time.monotonic() >= next_push:
                    next_push += self.push_interval
                    self._push()
                self._receive(min(0.05, max(0.0, next_push - time.monotonic())))
                self._buf.clear()
                continue
            m = self._wait_for(_REQUEST, 0.2)
            if m is None:
                if len(self._buf) > 4096:
                    self._buf.clear()
                continue
            try:
                self._answer(m.group(0), m.group(1).decode("ascii"))
            except OSError as err:  # the reader went away mid-answer
                log.debug("simulator write failed: %s", err)

    def _meter(self, address: str) -> SimMeter | None:
        if address in self.meters:
            return self.meters[address]
        if address == "" and len(self.meters) == 1:
            return next(iter(self.meters.values()))
        return None  # another meter's address: stay silent, as on a real bus

    def _answer(self, request: bytes, address: str) -> None:
        meter = self._meter(address)
        fault = self.fault
        if meter is None or fault == "silent":
            return
        if meter.replay and not meter.recorded_message:
            return  # a push recording has no answer to give
        t0 = time.monotonic()
        baud = self.initial_baud
        time.sleep(len(request) * 10 / baud)  # the request's last bytes are still on the line
        if self.echo:  # an optical head hears its own transmission
            os.write(self._master, request)
        time.sleep(self.reaction_time)
        if fault == "garbage":
            noise = bytes(self._rng.choice(b"ABCDEFGH#$%&+-.0123456789") for _ in range(24))
            self._send(noise, baud)
            return
        ident = meter.identification
        z = ident.baud_char
        if self.mode == "B" and z in BAUD_MODE_C:  # same rate, mode B letter
            rate = BAUD_MODE_C[z]
            z = next((c for c, b in BAUD_MODE_B.items() if b == rate), "E")
        ident_bytes = Identification(ident.manufacturer, z, ident.ident, ident.enhanced).line
        if meter.replay:
            ident_bytes = meter.recorded_identification
        self._send(ident_bytes, baud)
        sent = len(ident_bytes)
        if self.mode == "C" and z in BAUD_MODE_C:
            ack = self._wait_for(_ACK, 1.5 + 0.2)
            if ack is None:
                return  # no option select: back to waiting for a sign-on
            if ack.group(3) != b"0":
                return  # programming mode etc.: not simulated
            asked = ack.group(2).decode("ascii")
            if asked not in BAUD_MODE_C or BAUD_MODE_C[asked] > BAUD_MODE_C[z]:
                return
            time.sleep(len(ack.group(0)) * 10 / baud + self.reaction_time)
            baud = BAUD_MODE_C[asked]
        elif self.mode == "B" and z in BAUD_MODE_B:
            baud = BAUD_MODE_B[z]
            time.sleep(self.reaction_time)
        else:
            time.sleep(self.reaction_time)
        if meter.replay:
            frame = _corrupt(meter.recorded_message) if fault == "bcc" else meter.recorded_message
        else:
            body = meter.block() + ETX
            check = bcc(body)
            if fault == "bcc":
                check ^= 0x5A
            frame = STX + body + bytes([check])
        if fault == "truncate":
            frame = frame[: len(frame) // 2]
        if fault == "wrong_baud":
            baud = baud // 2 if baud > 300 else baud * 2
        self._send(frame, baud)
        self.readouts += 1
        self.last_bytes = sent + len(frame)
        self.last_duration = time.monotonic() - t0

    def _push(self) -> None:
        for meter in self.meters.values():
            self._send(self.push_garbage + self.telegram(meter), self.initial_baud)
            self.readouts += 1

    def telegram(self, meter: SimMeter) -> bytes:
        """One pushed telegram of `meter` in this simulator's `push_framing`:
        "framed" `/ident CR LF STX data ! CR LF ETX BCC` (the standard's mode D);
        "unframed" `/ident CR LF CR LF data ! CR LF`, no STX/ETX/BCC (EMH eHZ and the like);
        "no_blank" the same without the blank line; "lf" unframed with LF-only line ends;
        "dsmr" unframed with the CRC-16 of DSMR 4/5 after the "!"."""
        if meter.replay:
            return (
                _corrupt(meter.recorded_telegram)
                if self.fault == "bcc"
                else meter.recorded_telegram
            )
        block = meter.block()
        if self.push_framing == "framed":
            body = block + ETX
            return meter.identification.line + STX + body + bytes([bcc(body)])
        telegram = meter.identification.line
        if self.push_framing != "no_blank":
            telegram += CRLF
        telegram += block
        if self.push_framing == "dsmr":
            telegram = telegram[:-2]  # "!" then its CRC, then CR LF
            return telegram + f"{crc16(telegram):04X}".encode() + CRLF
        return telegram.replace(CRLF, b"\n") if self.push_framing == "lf" else telegram


def _corrupt(recorded: bytes) -> bytes:
    """The "bcc" fault on a replayed recording: its first digit inside a value changed, so its
    BCC or CRC no longer matches (an unframed telegram has none: it reads as sent)."""
    at = recorded.find(b"(")
    while at >= 0 and not recorded[at + 1 : at + 2].isdigit():
        at = recorded.find(b"(", at + 1)
    if at < 0:
        return recorded
    digit = recorded[at + 1]
    return recorded[: at + 1] + bytes([48 + (digit - 47) % 10]) + recorded[at + 2 :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="An IEC 62056-21 meter on a pseudo-terminal: prints the port to open (as "
        "the serial port of an smm meter), then serves until Ctrl-C or SIGTERM. Modes A-C "
        "answer a sign-on; mode D pushes every --push-interval seconds (DSMR: --initial-baud "
        "115200). With --replay the recording is sent byte for byte, else with live values."
    )
    parser.add_argument("--fixture", required=True, type=Path, action="append")
    parser.add_argument("--address", action="append", help="meter address, one per fixture")
    parser.add_argument("--mode", default="C", choices=list("ABCD"))
    parser.add_argument("--initial-baud", type=int, default=300)
    parser.add_argument("--reaction-time", type=float, default=0.2)
    parser.add_argument("--push-interval", type=float, default=1.0)
    parser.add_argument("--push-framing", default="framed", choices=PUSH_FRAMINGS)
    parser.add_argument("--echo", action="store_true")
    parser.add_argument(
        "--replay", action="store_true", help="send the recorded bytes unchanged (no live values)"
    )
    parser.add_argument("--fault", choices=FAULTS)
    args = parser.parse_args(argv)
    addresses = args.address or [""] * len(args.fixture)
    if len(addresses) != len(args.fixture):
        parser.error("give one --address per --fixture")
    try:
        meters = [
            SimMeter(f, address=a, replay=args.replay)
            for f, a in zip(args.fixture, addresses, strict=True)
        ]
    except (OSError, ValueError) as err:
        hint = "" if args.replay else " (a push or DSMR recording? try --replay --mode D)"
        parser.error(f"{err}{hint}")
    sim = IecSimulator(
        meters,
        mode=args.mode,
        initial_baud=args.initial_baud,
        reaction_time=args.reaction_time,
        echo=args.echo,
        push_interval=args.push_interval,
        push_framing=args.push_framing,
        fault=args.fault,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with sim:
        print(sim.port, flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
