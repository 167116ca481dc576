"""The link to one controller over its serial port, as one SDK pushed device: a session opens
the port (the SDK's SerialLine: pyserial, 8N1 at the configured baud), sends the ID request
until the controller answers, then reads its frames, sends a keep-alive every `keepalive` s,
and ends when nothing arrived for `link_timeout` s (the SDK then marks its points BAD, backs
off and starts a new session: a new handshake). Commands wait for the controller's
confirmation.

The port's descriptor is read by the event loop (`add_reader`): no thread per controller, and a
pty whose other side closed (a simulator stopped) reads as an error at once."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from extensions.sdk import PushedDevice
from extensions.sdk.protocols.serial_line import LineError, SerialLine

from . import messages as m
from .frames import Frame, FrameDecoder, encode
from .messages import Controller

__all__ = ["ControllerLink", "LinkDown", "LinkTiming"]

log = logging.getLogger(__name__)

ID_TRIES = 3
Late = Callable[[bool], Coroutine[Any, Any, None]]


class LinkDown(Exception):
    """The controller cannot be told anything now (no session, or before its handshake)."""


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
        self.handshakes = 0
        self.up = False  # handshake done, session running
        self._line: SerialLine | None = None
        self._serial: Any = None  # the open pyserial port
        self._frames: asyncio.Queue[Frame | BaseException] = asyncio.Queue()
        self._decoder = FrameDecoder(accept=lambda f: m.accepts(controller, f))
        self._pending: dict[int, asyncio.Future[bool]] = {}
        self._late: dict[int, Late] = {}
        self._reporting: set[asyncio.Task[None]] = set()
        # Commands the controller confirmed, by flag: sent again after a new handshake (the
        # controller went safe when it lost the link).
        self.in_force: dict[int, Frame] = {}

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
        self._decoder = FrameDecoder(accept=lambda f: m.accepts(self.controller, f))
        self._line = SerialLine(self.port)
        try:
            self._serial = self._line.open(self.timing.baudrate)
        except LineError as err:  # says what to do, e.g. os_groups for a permission
            raise ConnectionError(str(err)) from err
        # pyserial's descriptor is non-blocking on POSIX: the loop reads it when it is ready;
        # a write (a few bytes) that cannot go out in 1 s fails the session.
        self._serial.write_timeout = 1.0
        asyncio.get_running_loop().add_reader(self._serial.fileno(), self._readable)

    def _close_session(self) -> None:
        self.up = False
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(LinkDown(f"{self.controller.name} link lost"))
                fut.exception()  # retrieved here: nobody may be waiting any more
        self._pending.clear()
        self._late.clear()
        if self._serial is not None:
            ser, self._serial = self._serial, None
            try:
                asyncio.get_running_loop().remove_reader(ser.fileno())
            except (RuntimeError, ValueError, OSError):
                pass
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
        try:
            self._serial.write(encode(frame))
        except OSError as err:  # pyserial's SerialException is one
            raise ConnectionError(f"write to {self.port} failed: {err}") from err

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
                if frame.flag == m.ID and frame.byte == self.controller.id:
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

    async def _serve(self) -> None:
        t = self.timing
        self.up = True
        self.publish({self.online_point: True})
        for command in list(self.in_force.values()):
            self._write(command)  # confirmed as before: its confirmation needs no waiter
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
        fut = self._pending.pop(flag, None)
        if fut is not None and not fut.done():
            fut.set_result(ok)
            return
        late = self._late.pop(flag, None)
        if late is not None:
            task = asyncio.get_running_loop().create_task(late(ok))
            self._reporting.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._reported)

    def _reported(self, task: asyncio.Task[None]) -> None:
        self._reporting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s: reporting a late confirmation failed: %s", self.name, task.exception())

    # -- commands ---------------------------------------------------------------------------

    async def command(self, frame: Frame, late: Late | None = None) -> bool | None:
        """Send `frame` and wait for its confirmation: True (done), False (refused), None (none
        within `confirm_timeout`; `late(ok)` is called if it comes while the session lasts).
        LinkDown if the controller is not reachable now: nothing was sent."""
        if not self.up:
            raise LinkDown(f"{self.controller.name} controller not connected")
        flag = frame.flag
        # An earlier command of this flag still waiting gets no confirmation (None): the
        # controller's next one answers this one.
        self._late.pop(flag, None)
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending[flag] = fut
        try:
            self._write(frame)
        except ConnectionError as err:
            self._pending.pop(flag, None)
            raise LinkDown(str(err)) from err
        try:
            async with asyncio.timeout(self.timing.confirm_timeout):
                ok = await fut
        except LinkDown:  # sent, then the session ended: it may have been taken
            return None
        except TimeoutError:
            if self._pending.get(flag) is fut:
                del self._pending[flag]
                if late is not None:
                    self._late[flag] = self._remembering(frame, late)
            return None
        if ok:
            self.in_force[flag] = frame
        return ok

    def _remembering(self, frame: Frame, late: Late) -> Late:
        async def confirmed(ok: bool) -> None:
            if ok:
                self.in_force[frame.flag] = frame
            await late(ok)

        return confirmed


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
