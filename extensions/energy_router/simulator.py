"""The Energy Router's two controllers on pseudo-terminals, for tests and the demo. Each behaves
as docs/ENERGY-ROUTER.md describes the firmware: it waits for an ID request, answers, pauses
(`startup_pause`), then every `tick` sends its measurements, takes commands and confirms them
(flag + 1, byte 1), sends keep-alives when the computer is silent and, after 3 silent rounds,
declares the link lost and goes safe (no power). The battery's SoC follows its power.

Faults for tests, settable at any time: `silent` (sends nothing, reads nothing), `refuse`
(flags confirmed with 0), `ignore` (flags never confirmed), `delay` (flag -> seconds before its
confirmation), `garbage` (bytes sent before the next frame), `error(flag, code)` (an error
frame).

    python -m extensions.energy_router.simulator --inverter-link er-inverter.pty \
        --battery-link er-battery.pty

Under `smx run` (a `[simulators.NAME]` table) its config gives `inverter_link`, `battery_link`
(symlinks to the pseudo-terminals, relative to the working directory: the site directory),
`tick`, `startup_pause`, `capacity_wh`, `pv_w` (the SoC comes with each ID request).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import threading
import time
from pathlib import Path

from extensions.sdk.protocols.serial_line import simulated_port
from smx.process_env import load_config

from . import messages as m
from .frames import Frame, FrameDecoder, encode, floats_of, pack_floats
from .messages import BATTERY, INVERTER, Controller

__all__ = ["BatteryPvSim", "ControllerSim", "EnergyRouterSim", "InverterSim", "main"]

# Silent ticks before the first keep-alive, ticks between keep-alive rounds, rounds before
# the link is lost (docs/ENERGY-ROUTER.md, "Keep-alive").
KA_AFTER, KA_GAP, KA_ROUNDS = 5, 2, 3


class ControllerSim:
    """One controller behind one pty; `port` is the path the link opens."""

    def __init__(self, controller: Controller, *, tick: float, startup_pause: float) -> None:
        self.controller = controller
        self.tick = tick
        self.startup_pause = startup_pause
        self.silent = False
        self.refuse: set[int] = set()
        self.ignore: set[int] = set()
        self.delay: dict[int, float] = {}  # flag -> s before its confirmation is sent
        self.garbage = b""
        self.received: list[Frame] = []  # every command taken, in order
        self.handshakes = 0
        self.links_lost = 0
        self.sent_keep_alives = 0
        self.started = False  # answered an ID request since power-on
        self._lock = threading.Lock()
        self._master, self._slave, self.port = simulated_port()
        # Under `smx run` as root the extension runs as a user of its own: let it open the
        # pty (a real serial port is given through os_groups, e.g. dialout).
        os.chmod(self.port, 0o666)
        self._links: list[Path] = []
        self._decoder = FrameDecoder(accept=lambda f: m.takes(self.controller, f))
        self._pause_until = 0.0
        self._held = b""  # bytes that came during the pause
        self._heard = False  # a byte came since the last tick
        self._silent_ticks = 0
        self._ka_rounds = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def link(self, path: Path) -> None:
        """A symlink at `path` to the pty (replaced atomically), removed at stop."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(self.port, tmp)
        os.replace(tmp, path)
        self._links.append(path)

    def start(self) -> ControllerSim:
        self._thread = threading.Thread(target=self._run, name=self.controller.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Power off: the pty closes, so a reader of its port gets an error."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for path in self._links:
            with contextlib.suppress(OSError):
                if os.readlink(path) == self.port:
                    path.unlink()
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def error(self, flag: int, code: int) -> None:
        self.send(Frame(self.controller.error, flag, bytes((code,))))

    # -- line -------------------------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        if self.silent:
            return
        data = encode(frame)
        if self.garbage:
            data, self.garbage = self.garbage + data, b""
        with contextlib.suppress(BlockingIOError, OSError):  # nobody reads: the bytes are lost
            os.write(self._master, data)

    def _receive(self, timeout: float) -> None:
        try:
            ready, _, _ = select.select([self._master], [], [], timeout)
        except (OSError, ValueError):
            time.sleep(timeout)
            return
        if not ready or self.silent:
            if ready:  # a silent controller's UART still drains its input
                with contextlib.suppress(OSError):
                    os.read(self._master, 4096)
            return
        try:
            data = os.read(self._master, 4096)
        except OSError:  # no one has the port open
            time.sleep(min(timeout, 0.01))
            return
        if not data:
            return
        if time.monotonic() < self._pause_until:
            self._held += data  # the firmware sleeps: what arrives waits in its UART buffer
            return
        self._take(data)

    def _take(self, data: bytes) -> None:
        self._heard = True
        for frame in self._decoder.feed(data):
            if frame.flag == m.ID:
                self._identify(frame)
            elif self.started:
                self._command(frame)

    def _identify(self, frame: Frame) -> None:
        first = not self.started
        self.started = True
        self.handshakes += 1
        self.on_id(frame.payload)
        self.send(m.id_answer(self.controller))
        self._silent_ticks = self._ka_rounds = 0
        if first:  # only at power-on does the firmware pause after answering
            self._pause_until = time.monotonic() + self.startup_pause

    def _command(self, frame: Frame) -> None:
        with self._lock:
            self.received.append(frame)
        if frame.flag == m.KEEP_ALIVE:
            return
        ok = frame.flag not in self.refuse and self.apply(frame)
        if frame.flag in self.ignore:
            return
        answer = self.answer(frame, ok)
        delay = self.delay.get(frame.flag)
        if delay:
            timer = threading.Timer(delay, self.send, (answer,))
            timer.daemon = True
            timer.start()
        else:
            self.send(answer)

    def _run(self) -> None:
        next_tick = time.monotonic() + self.tick
        while not self._stop.is_set():
            self._receive(max(0.0, min(next_tick - time.monotonic(), 0.05)))
            now = time.monotonic()
            if self._held and now >= self._pause_until:
                held, self._held = self._held, b""
                self._take(held)
            if now < next_tick:
                continue
            next_tick = max(next_tick + self.tick, now)  # a late tick is not made up twice
            if not self.started or now < self._pause_until or self.silent:
                continue
            self.step(self.tick)
            self._keep_alive()
            for frame in self.measurements():
                self.send(frame)

    def _keep_alive(self) -> None:
        if self._heard:
            self._heard = False
            self._silent_ticks = self._ka_rounds = 0
            return
        self._silent_ticks += 1
        if self._silent_ticks < KA_AFTER or (self._silent_ticks - KA_AFTER) % (KA_GAP + 1):
            return
        if self._ka_rounds < KA_ROUNDS:
            self._ka_rounds += 1
            self.sent_keep_alives += 1
            self.send(m.keep_alive(self.controller.data))
            return
        self.links_lost += 1
        self._silent_ticks = self._ka_rounds = 0
        self.go_safe()

    # -- behaviour (subclasses) ------------------------------------------------------------

    def on_id(self, payload: bytes) -> None:
        pass

    def apply(self, frame: Frame) -> bool:
        """Run a command; False if this controller does not know it."""
        return False

    def answer(self, frame: Frame, ok: bool) -> Frame:
        return m.confirmation(self.controller, frame.flag, ok)

    def step(self, dt: float) -> None:
        pass

    def measurements(self) -> list[Frame]:
        return []

    def go_safe(self) -> None:
        pass


class InverterSim(ControllerSim):
    """The AC/DC inverter. Its own sign: P and Q > 0 exported to the grid."""

    def __init__(self, *, tick: float = 0.25, startup_pause: float = 5.0) -> None:
        super().__init__(INVERTER, tick=tick, startup_pause=startup_pause)
        self.mode = 1  # 0 off, 1 standby (grid-connected), 2 island
        self.p = 0.0
        self.q = 0.0
        self.uac = 230.0
        self.vdc = 400.0

    @property
    def grid_connected(self) -> bool:
        return self.mode == 1

    def apply(self, frame: Frame) -> bool:
        if frame.flag == m.INV_MODE and frame.byte in (0, 1, 2):
            self.mode = frame.byte
            if self.mode == 0:
                self.p = self.q = 0.0
            return True
        value = floats_of(frame.payload, 1)
        if frame.flag in (m.INV_P, m.INV_Q) and value is not None:
            if frame.flag == m.INV_P:
                self.p = value[0]
            else:
                self.q = value[0]
            return True
        return frame.flag in (m.BLACK_START, m.INV_GRID_STATE)

    def answer(self, frame: Frame, ok: bool) -> Frame:
        if frame.flag == m.INV_GRID_STATE:  # answered by the state, not a confirmation
            return Frame(INVERTER.data, m.INV_GRID_STATE, bytes((int(self.grid_connected),)))
        return super().answer(frame, ok)

    def measurements(self) -> list[Frame]:
        on = self.mode != 0
        values = pack_floats(self.p if on else 0.0, self.q if on else 0.0, self.uac)
        grid = bytes((1 if self.grid_connected else 0,))
        return [
            Frame(INVERTER.data, m.INV_MEASUREMENTS, values + grid),
            Frame(INVERTER.data, m.INV_VDC, pack_floats(self.vdc)),
        ]

    def go_safe(self) -> None:
        self.p = self.q = 0.0
        self.mode = 0


class BatteryPvSim(ControllerSim):
    """The DC/DC battery and PV controller. Its own signs: Pbat > 0 discharging, Ppv > 0
    producing."""

    def __init__(
        self,
        *,
        tick: float = 0.25,
        startup_pause: float = 5.0,
        capacity_wh: float = 10_000.0,
        pv_w: float = 2000.0,
        soc_min: float = 5.0,
        soc_max: float = 95.0,
    ) -> None:
        super().__init__(BATTERY, tick=tick, startup_pause=startup_pause)
        self.soc = 0.0  # the firmware keeps none: it takes the one of the ID request
        self.p_bat = 0.0
        self.capacity_wh = capacity_wh
        self.soc_min, self.soc_max = soc_min, soc_max
        self.pv_available = pv_w
        self.pv_mode = 1  # 0 off, 1 MPPT, 2 limited (reduced-power point tracking)
        self.pv_limit = 0.0
        self.battery_mode = 1  # 0 off, 1 standby
        self.loads = True

    def on_id(self, payload: bytes) -> None:
        soc = floats_of(payload, 1)
        if soc is not None and 0.0 <= soc[0] <= 100.0:
            self.soc = soc[0]

    @property
    def u_bat(self) -> float:
        return 44.0 + 0.1 * self.soc

    @property
    def p_pv(self) -> float:
        if self.pv_mode == 0:
            return 0.0
        if self.pv_mode == 2:
            return min(self.pv_available, max(0.0, self.pv_limit))
        return self.pv_available

    def apply(self, frame: Frame) -> bool:
        value = floats_of(frame.payload, 1)
        if frame.flag == m.BAT_P and value is not None:
            self.p_bat = value[0]
            self.battery_mode = 1
            return True
        if frame.flag == m.PV_P and value is not None:
            self.pv_mode, self.pv_limit = 2, value[0]
            return True
        if frame.flag == m.BAT_MODE and frame.byte in (0, 1):
            self.battery_mode = frame.byte
            if frame.byte == 0:
                self.p_bat = 0.0
            return True
        if frame.flag == m.PV_MODE and frame.byte in (0, 1):
            self.pv_mode = frame.byte
            return True
        if frame.flag == m.LOADS and frame.byte in (0, 1):
            self.loads = frame.byte == 1
            return True
        return frame.flag == m.BLACK_START

    def step(self, dt: float) -> None:
        self.soc -= self.p_bat * dt / 3600.0 / self.capacity_wh * 100.0
        self.soc = min(100.0, max(0.0, self.soc))
        # The firmware's SoC guard: the battery stops and says so (error 2).
        if (self.p_bat > 0 and self.soc <= self.soc_min) or (
            self.p_bat < 0 and self.soc >= self.soc_max
        ):
            self.p_bat = 0.0
            self.error(m.BAT_ERROR, 2)

    def measurements(self) -> list[Frame]:
        upv = 300.0 if self.p_pv > 0 else 360.0
        return [
            Frame(BATTERY.data, m.BAT_P, pack_floats(self.soc, self.p_bat, self.u_bat)),
            Frame(BATTERY.data, m.PV_P, pack_floats(self.p_pv, upv)),
        ]

    def go_safe(self) -> None:
        self.p_bat = 0.0
        self.pv_mode = 0


class EnergyRouterSim:
    """Both controllers, each on its own pty."""

    def __init__(
        self,
        *,
        tick: float = 0.25,
        startup_pause: float = 5.0,
        capacity_wh: float = 10_000.0,
        pv_w: float = 2000.0,
    ) -> None:
        self.inverter = InverterSim(tick=tick, startup_pause=startup_pause)
        self.battery = BatteryPvSim(
            tick=tick, startup_pause=startup_pause, capacity_wh=capacity_wh, pv_w=pv_w
        )

    def start(self) -> EnergyRouterSim:
        self.inverter.start()
        self.battery.start()
        return self

    def stop(self) -> None:
        self.inverter.stop()
        self.battery.stop()

    def __enter__(self) -> EnergyRouterSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    config = load_config(os.environ)
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--inverter-link", default=config.get("inverter_link", "er-inverter.pty"))
    parser.add_argument("--battery-link", default=config.get("battery_link", "er-battery.pty"))
    parser.add_argument("--tick", type=float, default=config.get("tick", 0.25))
    parser.add_argument("--startup-pause", type=float, default=config.get("startup_pause", 5.0))
    parser.add_argument("--capacity-wh", type=float, default=config.get("capacity_wh", 10000.0))
    parser.add_argument("--pv-w", type=float, default=config.get("pv_w", 2000.0))
    args = parser.parse_args(argv)
    sim = EnergyRouterSim(
        tick=args.tick,
        startup_pause=args.startup_pause,
        capacity_wh=args.capacity_wh,
        pv_w=args.pv_w,
    )
    sim.inverter.link(Path(args.inverter_link))
    sim.battery.link(Path(args.battery_link))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with sim:
        print(
            f"ready: inverter {args.inverter_link} -> {sim.inverter.port}, "
            f"battery {args.battery_link} -> {sim.battery.port}",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
