"""Request targets that are not origin-form ("//x/ws/login", "http://h/ws/login") are refused
by the gate, and a live WebSocket without a session gets neither the site nor a page's place:
raw sockets against a real GUI process."""

from __future__ import annotations

import base64
import json
import os
import socket
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect

from extensions.sdk.testing import TestSite
from tests.untrusted.gui.conftest import PASSWORD, PASSWORD_HASH, GuiProcess, gui_process
from tests.untrusted.gui.test_http_security import log_in


@pytest.fixture(scope="module")
def locked_gui(site: TestSite) -> Iterator[GuiProcess]:
    with gui_process(site, password_hash=PASSWORD_HASH, max_clients=1) as gui:
        yield gui


def upgrade(gui: GuiProcess, target: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {target} HTTP/1.1\r\nHost: {gui.host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: {gui.url}\r\n\r\n"
    ).encode()


def answer_to(gui: GuiProcess, target: str, wait: float = 2.0) -> bytes:
    """What the GUI sends to an upgrade for `target` within `wait` s (a frame would follow)."""
    with socket.create_connection(("127.0.0.1", gui.port), timeout=wait) as s:
        s.sendall(upgrade(gui, target))
        received = b""
        try:
            while chunk := s.recv(65536):
                received += chunk
        except TimeoutError:
            pass
        return received


@pytest.mark.parametrize(
    "target", ["//x/ws/login", "http://h/ws/login", "//x/ws", "http://h/ws", "ws/login", "*"]
)
def test_a_target_that_is_not_origin_form_is_refused(locked_gui: GuiProcess, target: str):
    answer = answer_to(locked_gui, target)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"hello" not in answer and b"site" not in answer


async def test_sockets_without_a_session_take_no_place_from_the_owner(locked_gui: GuiProcess):
    # Sockets that try to reach the live view without a session, and never answer a close
    # frame: the one place (max_clients = 1) stays the owner's.
    held = []
    for target in ("//x/ws/login", "http://h/ws/login", "/ws"):
        s = socket.create_connection(("127.0.0.1", locked_gui.port), timeout=5)
        s.sendall(upgrade(locked_gui, target))
        held.append(s)
    try:
        for s in held:
            assert b"hello" not in s.recv(65536)
        ticket = (await log_in(locked_gui, PASSWORD))["ticket"]
        cookie = locked_gui.get(f"/session?ticket={ticket}", {"Host": locked_gui.host})
        session = cookie.getheader("Set-Cookie", "").split(";")[0]
        async with connect(
            f"ws://{locked_gui.host}/ws",
            origin=locked_gui.url,
            additional_headers={"Cookie": session},
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
    finally:
        for s in held:
            s.close()
