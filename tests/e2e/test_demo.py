"""`smx demo` (the README's main command) runs a whole site under the supervisor: values change,
lessag publishes to a real Mosquitto and its ESS control's setpoints are applied by the battery
extension, and Ctrl-C (SIGINT) stops every process, leaving nothing behind.

In a terminal (a real pseudo-terminal here, resized while the demo runs, as a user would) the
view fits the screen: the processes' health and the setpoint flow are always on it, the points
below are trimmed to the height with a note saying how many are left out, and the frame left on
the screen after Ctrl-C is the site as it was at that moment. Without a terminal the demo
prints lines, and a summary of the site as it was when stopped."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import psutil
import pytest

from extensions.smm.meter_maps import resolve_map

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = (
    "core",
    "battery",
    "smm",
    "fronius",
    "ocpp",
    "er",
    "gui",
    "lessag",
    "battery-sim",
    "meter-sim",
    "fronius-sim",
    "ocpp-sim",
    "er-sim",
    "mqtt-broker",
    "gesscon-sim",
)
# A whole demo site per test, on a loaded 2-core machine: more than the suite's 120 s default.
pytestmark = pytest.mark.timeout(240)
# lessag's ESS control requests battery/P_set every 5 s (the battery's limits are +-5000 W).
APPLIED = re.compile(r"setpoint battery/P_set = -?[\d.]+ W from lessag at [\d:]+: APPLIED")
SETPOINT = re.compile(
    r"setpoint battery/P_set = (-?\d+\.\d\d) W from lessag at ([\d:]+): "
    r"(PENDING|APPLIED|CLAMPED|EXPIRED|SUPERSEDED)"
)
# The agent's state on its row: its MQTT link to the demo's Mosquitto, its queue.
AGENT_STATE = re.compile(r"MQTT connected, \d+ queued")


def _leftovers(children: set[int]) -> list[int]:
    time.sleep(0.5)
    return [
        p
        for p in children
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]


def test_demo_shows_live_values_and_stops_cleanly_on_ctrl_c():
    proc = subprocess.Popen(
        [sys.executable, "-m", "trusted.cli.main", "demo", "--plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        start_new_session=True,
    )
    lines: list[str] = []
    # 15 processes start on 2 cores (a loaded CI machine took over 40 s to the first setpoint).
    deadline = time.monotonic() + 90
    children: set[int] = set()
    applied = soc_lines = 0
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        children |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        applied += bool(APPLIED.search(line))
        soc_lines += "battery/SoC" in line
        if applied and soc_lines >= 3:  # a setpoint applied, and a few seconds of live values
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    lines += out.splitlines()
    text = "\n".join(lines)
    assert proc.returncode == 0, text[-2000:]
    home = Path(re.search(r"running in (\S+?):", text).group(1))
    # Every part ran as its own process: core, extensions, the agent, simulators, the broker.
    assert re.search(
        r"core \(core\).*battery \(extension\).*lessag \(agent\).*"
        r"battery-sim \(simulator\).*mqtt-broker \(simulator\).*gesscon-sim \(simulator\)",
        text,
    ), text[:800]
    socs = re.findall(r"battery/SoC\s+([\d.]+) %", text)
    assert len(socs) >= 3
    assert APPLIED.search(text)
    assert re.search(r"lessag/mqtt\s+connected", text), text[-3000:]
    # After Ctrl-C: the site as it was then, the setpoint lessag had requested included.
    final = text[text.index("the site as it was then:") :]
    assert SETPOINT.search(final), final
    assert "none requested yet" not in final
    for name in PROCESSES:
        assert re.search(rf"process {name} \(\w+\): running", final), final
    assert re.search(r"process lessag \(agent\): running, .*" + AGENT_STATE.pattern, final)
    assert "demo stopped; nothing left running" in text
    assert "changed to 0600" not in text  # the demo writes its site file private itself
    assert len(children) >= 4
    assert not _leftovers(children)
    assert not home.exists()


# --- in a terminal

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# How rich's live display goes back to the top of its previous frame to draw the next.
REDRAW = re.compile(r"\r\x1b\[2K(?:\x1b\[1A\x1b\[2K)*")
TITLE = "SMX demo site demo-site"


class Terminal:
    """`smx demo` in a pseudo-terminal of a given size; what it wrote, kept as it comes."""

    def __init__(self, rows: int, cols: int, *args: str) -> None:
        master, slave = pty.openpty()
        self.master = master
        self.resize(rows, cols)
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trusted.cli.main", "demo", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=dict(env, PYTHONPATH=str(ROOT), TERM="xterm-256color"),
            start_new_session=True,
        )
        os.close(slave)
        self.raw = b""
        self.children: set[int] = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: the demo has closed the terminal
                    return
                if not data:
                    return
                self.raw += data
            elif self.proc.poll() is not None:
                return

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def text(self) -> str:
        return self.raw.decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, ANSI.sub("", self.text())):
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{self.text()[-3000:]}"
            assert self.proc.poll() is None, self.text()[-3000:]
            try:
                self.children |= {
                    c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)
                }
            except psutil.Error:
                pass
            time.sleep(0.2)

    def frames(self) -> list[list[str]]:
        """Each complete frame the live view drew, as the lines on the screen (without
        colours); the frame being drawn is left out until the program has ended."""
        chunks = REDRAW.split(self.text())
        if self.proc.poll() is None:
            chunks = chunks[:-1]
        frames = []
        for chunk in chunks:
            text = ANSI.sub("", chunk).replace("\r", "")
            if TITLE in text:
                text = text[text.rindex(TITLE) :]  # a log line may come above a frame
                text = text.split("stopping the site")[0]  # what follows the last frame
                frames.append(text.rstrip("\n").split("\n"))
        return frames

    def frame_after(self, seen: int, timeout: float = 20) -> list[str]:
        """The latest frame once at least two more than `seen` have been drawn (the first of
        them may have been on its way before whatever the caller did)."""
        deadline = time.monotonic() + timeout
        while len(frames := self.frames()) < seen + 2:
            assert time.monotonic() < deadline, self.text()[-3000:]
            time.sleep(0.2)
        return frames[-1]

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=5)
        os.close(self.master)
        return ANSI.sub("", self.text())


def check_fits(frame: list[str], rows: int, cols: int) -> None:
    screen = "\n".join(frame)
    assert len(frame) < rows, f"{len(frame)} lines on a screen of {rows}:\n{screen}"
    assert max(len(line.rstrip()) for line in frame) <= cols, screen
    # The health of every process, and the setpoint flow, are on the screen.
    assert re.search(r"process\s+kind\s+state\s+health\s+restarts", screen), screen
    for name in PROCESSES:
        assert re.search(rf"^{re.escape(name)}\s+\w+\s+(running|starting)\s", screen, re.M), (
            name,
            screen,
        )
    assert SETPOINT.search(screen.replace("\n", " ")), screen
    assert re.search(r"^lessag\s+agent\s+running\s.*" + AGENT_STATE.pattern, screen, re.M), screen
    assert re.search(r"^device\s+point\s+value\s+unit\s+quality", screen, re.M), screen


def test_the_live_view_fits_the_terminal_and_leaves_the_site_as_it_was():
    term = Terminal(84, 160)
    try:
        term.wait_for(r"from lessag at [\d:]+: (APPLIED|CLAMPED)")
        term.wait_for(AGENT_STATE.pattern)
        term.wait_for(r"PF3")  # the meter's points are in
        big = term.frame_after(len(term.frames()))
        check_fits(big, 84, 160)
        # The GUI's address stays on the screen, on its row (the first lines scroll away).
        assert re.search(
            r"^gui\s+agent\s+running\s.*http://127\.0\.0\.1:\d+/", "\n".join(big), re.M
        )
        # 160 x 84 has room for every point (in two columns): nothing is left out.
        assert "more, --all shows every point" not in "\n".join(big), "\n".join(big)
        assert re.search(r"\bRm\s+123\.40\s+kvarh\s+GOOD", "\n".join(big))

        seen = len(term.frames())
        # 30 rows: the 15 processes and the setpoint take 20 of them, so a 24-row terminal has
        # room for two devices' points (battery, er) and no more.
        term.resize(30, 80)
        small = term.frame_after(seen)  # redrawn at least every second
        check_fits(small, 30, 80)
        shown = "\n".join(small)
        assert re.search(r"^… \d+ more, --all shows every point$", shown, re.M), shown
        # The devices share the room: the battery's and the meter's main values are there.
        assert re.search(r"^battery\s+P\s+-?\d+\.\d\d\s+W\s+GOOD", shown, re.M), shown
        assert re.search(r"^smm\s+P\s+\d+\.\d\d\s+W\s+GOOD", shown, re.M), shown
        last_live = SETPOINT.search(shown.replace("\n", " "))
    finally:
        out = term.stop()
    assert term.proc.returncode == 0, out[-2000:]
    final = term.frames()[-1]
    check_fits(final, 30, 80)
    screen = "\n".join(final)
    assert re.match(rf"{TITLE}, stopped at [\d:]+: the site as it was then", screen), screen
    # The setpoint as it was at Ctrl-C: the same request as before or a newer one, never none.
    assert "none requested yet" not in screen
    final_setpoint = SETPOINT.search(screen.replace("\n", " "))
    assert final_setpoint is not None, screen
    if final_setpoint.group(2) == last_live.group(2):  # the same request (its time)
        order = ["PENDING", "APPLIED", "CLAMPED", "EXPIRED", "SUPERSEDED"]
        assert order.index(final_setpoint.group(3)) >= order.index(last_live.group(3))
    assert out.rstrip().endswith("demo stopped; nothing left running"), out[-500:]
    assert len(term.children) >= 6
    assert not _leftovers(term.children)


def test_all_shows_every_point_even_on_a_small_terminal():
    term = Terminal(24, 80, "--all")
    meter_points = list(resolve_map("eastron_sdm630").points)
    try:
        term.wait_for(r"PF3")
        term.wait_for(r"battery\s+P\s")
        term.frame_after(len(term.frames()))
    finally:
        out = term.stop()
    assert term.proc.returncode == 0, out[-2000:]
    screen = "\n".join(term.frames()[-1])
    assert "more, --all shows every point" not in screen
    rows = re.findall(r"^(\S*)\s+(\S+)\s+\S+.*\b(GOOD|STALE|BAD|UNCERTAIN)\b", screen, re.M)
    names = {point for _, point, _ in rows}
    assert set(meter_points) <= names, sorted(set(meter_points) - names)
    assert {"P", "SoC", "ESS_state", "uptime"} <= names, names
    assert "setpoint battery/P_set" in screen, screen
