"""A flood of idle TCP connections, against a real GUI process: closed beyond the bounds at
once, dropped after the handshake timeout, and the GUI keeps answering its page with its
descriptors bounded (and its file limit lowered)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from extensions.sdk.testing import TestSite
from tests.untrusted.gui.conftest import GuiProcess, gui_process
from untrusted.gui.connections import MAX_OPEN_FILES
from untrusted.gui.server import MAX_CONNECTIONS_PER_ADDRESS, OPEN_TIMEOUT_S


@pytest.fixture(scope="module")
def gui(site: TestSite) -> Iterator[GuiProcess]:
    with gui_process(site) as g:
        yield g


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def idle_connections(gui: GuiProcess, source: str, count: int) -> list[socket.socket]:
    held = []
    for _ in range(count):
        s = socket.socket()
        s.bind((source, 0))
        s.connect(("127.0.0.1", gui.port))
        held.append(s)
    return held


def closed_by_the_gui(s: socket.socket) -> bool:
    s.settimeout(0.01)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_idle_connections_are_bounded_and_the_page_still_answers(gui: GuiProcess):
    before = open_fds(gui.proc.pid)
    held = idle_connections(gui, "127.0.0.2", 300)
    try:
        assert gui.get("/", {"Host": gui.host}).status == 200  # from another address
        time.sleep(0.5)
        assert open_fds(gui.proc.pid) <= before + MAX_CONNECTIONS_PER_ADDRESS + 2
        refused = sum(closed_by_the_gui(s) for s in held)
        assert refused >= 300 - MAX_CONNECTIONS_PER_ADDRESS
        # Those let in are dropped too once the handshake timeout has passed.
        time.sleep(OPEN_TIMEOUT_S + 1)
        assert all(closed_by_the_gui(s) for s in held)
        assert open_fds(gui.proc.pid) <= before + 2
    finally:
        for s in held:
            s.close()


def test_the_guis_file_limit_is_lowered(gui: GuiProcess):
    limits = open(f"/proc/{gui.proc.pid}/limits").read()
    line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
    assert line.split()[3:5] == [str(MAX_OPEN_FILES), str(MAX_OPEN_FILES)]
