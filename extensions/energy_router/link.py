"""The link to one controller over its serial port, as one SDK pushed device: a session opens
the port (the SDK's SerialLine: pyserial, 8N1 at the configured baud), sends the ID request
until the controller answers, then reads its frames, sends a keep-alive every `keepalive` s,
and ends when nothing arrived for `link_timeout` s (the SDK then marks its points BAD, backs
off and starts a new session: a new handshake). Commands wait for the controller's
confirmation.

The port's descriptor is read and written by the event loop (`add_reader`, `add_writer`): no
thread per controller, a port that takes no output blocks nothing, and a pty whose other side
closed (a simulator stopped) reads as an error at once."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from extensions.sdk import PushedDevice
from extensions.sdk.protocols.serial_line import LineError, SerialLine

from . import messages as m
from .frames import MAX_FRAME, Frame, FrameDecoder, encode
from .messages import Controller

__all__ = ["ControllerLink", "LinkDown", "LinkTiming"]

log = logging.getLogger(__name__)

ID_TRIES = 3
OUT_LIMIT = 4 * MAX_FRAME  # bytes waiting for the port: beyond that its output is stuck
Late = Callable[[bool], Coroutine[Any, Any, None]]


class LinkDown(Exception):
    """The controller cannot be told anything now (no session, or before its handshake)."""


@dataclass(eq=False)
class _Sent:
    """A command sent and not yet answered. A confirmation carries no id, only the flag: the
    controller answers in order, so it answers the oldest unanswered command of its flag."""

    frame: Frame
    # Sent while an older command of its flag was unanswered: should that one's answer have
    # been lost, the answer taken for this one may be another's.
    behind: bool
    answered: Callable[[_Sent, bool, bool], None]  # (self, ok, sure it is its own answer)
    late: Late | None = None  # reports an answer that came after confirm_timeout
    waiter: asyncio.Future[bool | None] | None = None  # of `command`, while it waits
    expired: bool = False  # its setpoint expired: its answer puts nothing in force


@dataclass(frozen=True)
class LinkTiming:
    baudrate: int = 9600
    keepalive: float = 1.0
    link_timeout: float = 3.0
    startup_pause: float = 5.0
    answer_timeout: float = 2.0
    confirm_timeout: float = 2.0


class ControllerLink(PushedDevice):
    def __init__(
        self,
        name: str,
        controller: Controller,
        port: str,
        timing: LinkTiming,
        readings: Callable[[Frame], Mapping[str, Any]],
        online_point: str,
        initial_soc: Callable[[], Awaitable[float]] | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        self.name = name
        self.controller = controller
        self.port = port
        self.timing = timing
        self.readings_of = readings
        self.online_point = online_point
        self.initial_soc = initial_soc
        self.max_backoff = max_backoff
        self.reconnect_delay = min(1.0, max_backoff)
        self._usual_delay: float | None = None  # reconnect_delay while the ports look swapped
        self.handshakes = 0
        self.up = False  # handshake done, session running
        self._line: SerialLine | None = None
        self._serial: Any = None  # the open pyserial port
        self._out = bytearray()  # written, not yet taken by the port
        self._writing = False  # the loop watches the port for room for `_out`
        self._frames: asyncio.Queue[Frame | BaseException] = asyncio.Queue()
        self._decoder = FrameDecoder(accept=self._accepts)
        self._sent: dict[int, deque[_Sent]] = {}  # by flag, oldest first
        self._reporting: set[asyncio.Task[None]] = set()
        # Commands the controller confirmed, by flag: sent again after a new handshake (the
        # controller went safe when it lost the link).
        self.in_force: dict[int, Frame] = {}
        # Fallbacks of expired setpoints, by the setpoint's flag, until the controller confirms
        # one or a newer command of its flag supersedes it: sent first after each handshake,
        # so an expiry during an outage (or the start-up fallback, before the battery's
        # handshake) still reaches the controller (the keep-alives keep it from going safe).
        self.pending_fallback: dict[int, Frame] = {}

    # -- session ----------------------------------------------------------------------------

    async def run(self) -> None:
        self._open()
        try:
            await self._handshake()
            await self._serve()
        finally:
            self._close_session()

    def failure_readings(self, err: BaseException | str) -> Mapping[str, Any]:
        return {self.online_point: False}

    async def close(self) -> None:
        self._close_session()

    def _open(self) -> None:
        self._frames = asyncio.Queue()
        self._decoder = FrameDecoder(accept=self._accepts)
        self._line = SerialLine(self.port)
        try:
            self._serial = self._line.open(self.timing.baudrate)
        except LineError as err:  # says what to do, e.g. os_groups for a permission
            raise ConnectionError(str(err)) from err
        # pyserial's descriptor is non-blocking on POSIX: the loop reads it when it is ready,
        # and writes go to it with os.write, never pyserial's blocking write (a stuck output
        # would stall every other link and the extension with it).
        self._out.clear()
        asyncio.get_running_loop().add_reader(self._serial.fileno(), self._readable)

    def _accepts(self, frame: Frame) -> bool:
        # The other controller's ID answer too: it says the ports are swapped.
        return m.accepts(self.controller, frame) or m.id_answerer(frame) is not None

    def _close_session(self) -> None:
        self.up = False
        sent, self._sent = self._sent, {}
        for queue in sent.values():
            for command in queue:
                if command.waiter is not None and not command.waiter.done():
                    command.waiter.set_result(None)  # sent, no answer: it may run it
        if self._serial is not None:
            ser, self._serial = self._serial, None
            try:
                asyncio.get_running_loop().remove_reader(ser.fileno())
                asyncio.get_running_loop().remove_writer(ser.fileno())
            except (RuntimeError, ValueError, OSError):
                pass
        self._out.clear()
        self._writing = False
        if self._line is not None:
            self._line.close()
            self._line = None

    def _readable(self) -> None:
        ser = self._serial
        if ser is None:
            return
        try:
            data = os.read(ser.fileno(), 4096)
        except BlockingIOError:
            return
        except OSError as err:  # EIO: the other side of a pty closed, a USB adapter unplugged
            self._stop_reading(ConnectionError(f"read from {self.port} failed: {err}"))
            return
        if not data:
            self._stop_reading(ConnectionError(f"{self.port} closed"))
            return
        for frame in self._decoder.feed(data):
            self._frames.put_nowait(frame)

    def _stop_reading(self, err: BaseException) -> None:
        if self._serial is not None:
            asyncio.get_running_loop().remove_reader(self._serial.fileno())
        self._frames.put_nowait(err)

    def _write(self, frame: Frame) -> None:
        if self._serial is None:
            raise LinkDown(f"{self.controller.name} link is down")
        self._out += encode(frame)
        if len(self._out) > OUT_LIMIT:
            err = ConnectionError(f"{len(self._out)} bytes not taken by {self.port}: output stuck")
            self._stop_reading(err)  # ends the session
            raise err
        if not self._writing:
            self._flush()

    def _flush(self) -> None:
        ser = self._serial
        if ser is None:
            return
        try:
            sent = os.write(ser.fileno(), self._out)
        except BlockingIOError:
            sent = 0
        except OSError as err:
            self._stop_reading(ConnectionError(f"write to {self.port} failed: {err}"))
            return
        del self._out[:sent]
        loop = asyncio.get_running_loop()
        if self._out and not self._writing:
            loop.add_writer(ser.fileno(), self._flush)
        elif not self._out and self._writing:
            loop.remove_writer(ser.fileno())
        self._writing = bool(self._out)

    async def _next(self, timeout: float) -> Frame | None:
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                item = await self._frames.get()
        except TimeoutError:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    async def _handshake(self) -> None:
        soc = await self.initial_soc() if self.initial_soc is not None else 0.0
        request = m.id_request(self.controller, soc)
        for _ in range(ID_TRIES):
            self._write(request)
            deadline = time.monotonic() + self.timing.answer_timeout
            while (frame := await self._next(deadline - time.monotonic())) is not None:
                answerer = m.id_answerer(frame)
                if answerer is not None and answerer is not self.controller:
                    self._swapped(answerer)
                if answerer is self.controller:
                    if self._usual_delay is not None:
                        self.reconnect_delay, self._usual_delay = self._usual_delay, None
                    self.handshakes += 1
                    log.info(
                        "%s: controller %d answered on %s",
                        self.name,
                        self.controller.id,
                        self.port,
                    )
                    return
        raise TimeoutError(
            f"no answer to {ID_TRIES} ID requests on {self.port} "
            f"({self.timing.answer_timeout:g} s each)"
        )

    def _swapped(self, answerer: Controller) -> NoReturn:
        # Nothing will change until the configuration does: retry seldom (each ID request
        # gives the battery controller a SoC).
        if self._usual_delay is None:
            self._usual_delay = self.reconnect_delay
        self.reconnect_delay = self.max_backoff
        raise ConnectionError(
            f"the {answerer.name} controller (id {answerer.id}) answered on "
            f"{self.controller.name}_port ({self.port}): ports swapped?"
        )

    async def _serve(self) -> None:
        t = self.timing
        self.up = True
        self.publish({self.online_point: True})
        for key, fallback in list(self.pending_fallback.items()):
            self._send(fallback, self._fallback_answered(key, fallback))
        for command in list(self.in_force.values()):
            if command in self.pending_fallback.values():
                continue  # just sent (a PV limit's fallback is the PV mode in force)
            self._send(command, self._replayed)  # confirmed as before: none waits for it
        now = time.monotonic()
        # The controller pauses after its answer at power-on: its silence then is no loss.
        heard, next_ka = now + t.startup_pause, now
        while True:
            now = time.monotonic()
            if now >= next_ka:
                self._write(m.keep_alive(self.controller.command))
                next_ka = now + t.keepalive
            if now - heard > t.link_timeout:
                raise ConnectionError(f"nothing received for {t.link_timeout:g} s: link lost")
            frame = await self._next(min(next_ka, heard + t.link_timeout) - now + 0.001)
            if frame is None:
                continue
            heard = max(heard, time.monotonic())
            self._dispatch(frame)

    def _dispatch(self, frame: Frame) -> None:
        c = self.controller
        if frame.ctrl == c.data and frame.flag in (m.ID, m.KEEP_ALIVE):
            return  # its keep-alive asks for traffic: ours goes every `keepalive` s anyway
        if frame.ctrl == c.data and frame.byte is not None and (frame.flag - 1) in _CONFIRMED:
            self._confirmed(frame.flag - 1, frame.byte == 1)
            return
        readings = self.readings_of(frame)
        if frame.ctrl == c.error:
            log.warning("%s: error frame, flag %d code %s", self.name, frame.flag, frame.byte)
        if readings:
            self.publish(readings)
        elif frame.flag == m.EXTRA:
            log.debug("%s: extra values %s", self.name, frame.payload.hex())

    def _confirmed(self, flag: int, ok: bool) -> None:
        queue = self._sent.get(flag)
        if not queue:
            # debug: a line flooding stray frames must not flood the log
            log.debug("%s: confirmation of flag %d, no command waits for it", self.name, flag)
            return
        command = queue.popleft()
        # Its own answer only if nothing could shift the pairing: it was not sent behind an
        # unanswered command, and nothing sent after it waits (had its answer been lost, this
        # one would be the newer one's).
        command.answered(command, ok, not command.behind and not queue)

    def _replayed(self, command: _Sent, ok: bool, sure: bool) -> None:
        if not (ok and sure) and self.in_force.get(command.frame.flag) is command.frame:
            del self.in_force[command.frame.flag]

    def _late_report(self, late: Late, ok: bool) -> None:
        task = asyncio.get_running_loop().create_task(late(ok))
        self._reporting.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._reported)

    def _reported(self, task: asyncio.Task[None]) -> None:
        self._reporting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s: reporting a late confirmation failed: %s", self.name, task.exception())

    # -- commands ---------------------------------------------------------------------------

    def _send(self, frame: Frame, answered: Callable[[_Sent, bool, bool], None]) -> _Sent:
        queue = self._sent.setdefault(frame.flag, deque())
        command = _Sent(frame, bool(queue), answered)
        try:
            self._write(frame)
        except ConnectionError as err:
            raise LinkDown(str(err)) from err
        queue.append(command)
        return command

    def forget(self, flag: int) -> None:
        """The setpoint of `flag` expired: not sent again after a new handshake, and an answer
        still due for it (a late confirmation) no longer puts it back in force."""
        self.in_force.pop(flag, None)
        for command in self._sent.get(flag, ()):
            command.expired = True
            command.late = None

    def fall_back(self, key: int, frame: Frame) -> None:
        """Setpoint `key` expired: `frame` replaces it, now if the controller is reachable, and
        after each new handshake until the controller confirms it."""
        self.forget(key)
        self.pending_fallback[key] = frame
        if self.up:
            try:
                self._send(frame, self._fallback_answered(key, frame))
            except LinkDown as err:
                log.info("%s: fallback sent after the next handshake: %s", self.name, err)

    def _fallback_answered(self, key: int, frame: Frame) -> Callable[[_Sent, bool, bool], None]:
        def answered(command: _Sent, ok: bool, sure: bool) -> None:
            if self.pending_fallback.get(key) is not frame:
                return  # superseded meanwhile
            if ok and sure:
                del self.pending_fallback[key]
            else:
                log.warning(
                    "%s: fallback %s not confirmed: sent again after the next handshake",
                    self.name,
                    encode(frame).hex(" "),
                )

        return answered

    async def command(self, frame: Frame, late: Late | None = None) -> bool | None:
        """Send `frame` and wait for its confirmation: True (done), False (refused), None (none
        within `confirm_timeout`, or one that may be another command's; `late(ok)` is called if
        its own comes later while the session lasts). LinkDown if the controller is not
        reachable now: nothing was sent."""
        if not self.up:
            raise LinkDown(f"{self.controller.name} controller not connected")
        fut: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()

        def answered(command: _Sent, ok: bool, sure: bool) -> None:
            flag = command.frame.flag
            if command.expired:
                pass  # its setpoint ended: what is in force is no longer its business
            elif not sure:  # the controller runs this one, an older one or neither: unknown
                self.in_force.pop(flag, None)
            elif ok:
                self.in_force[flag] = command.frame
            if not fut.done():
                fut.set_result(ok if sure else None)
            elif sure and command.late is not None:
                self._late_report(command.late, ok)

        command = self._send(frame, answered)
        command.waiter = fut
        # Sent: it supersedes a fallback of its flag still pending.
        for key, fallback in list(self.pending_fallback.items()):
            if frame.flag in (key, fallback.flag):
                del self.pending_fallback[key]
        # An older command of this flag still unanswered is superseded: no late report.
        for older in self._sent[frame.flag]:
            if older is not command:
                older.late = None
        try:
            async with asyncio.timeout(self.timing.confirm_timeout):
                return await fut
        except TimeoutError:
            command.late = late
            return None


# Commands whose confirmation is flag + 1 (the grid-state request is answered by its state)
_CONFIRMED = {
    m.INV_MODE,
    m.INV_P,
    m.INV_Q,
    m.BLACK_START,
    m.BAT_MODE,
    m.BAT_P,
    m.PV_MODE,
    m.PV_P,
    m.LOADS,
}
