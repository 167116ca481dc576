"""Messages a page should never send, against a real GUI process: deeply nested JSON is a bad
message like any other (closed, 1003), not a traceback in the log; requests for no point are
paced like the others and their input is not echoed."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from extensions.sdk.testing import TestSite
from tests.untrusted.gui.conftest import PASSWORD_HASH, GuiProcess, gui_process

NESTED = "[" * 4000  # within the 4 KiB message bound, past json's recursion limit


@pytest.fixture(scope="module")
def locked_gui(site: TestSite) -> Iterator[GuiProcess]:
    with gui_process(site, password_hash=PASSWORD_HASH) as gui:
        yield gui


@pytest.fixture(scope="module")
def open_gui(site: TestSite) -> Iterator[GuiProcess]:
    with gui_process(site) as gui:
        yield gui


async def closed_after(gui: GuiProcess, path: str, message: str) -> int | None:
    async with connect(f"ws://{gui.host}{path}", origin=gui.url) as ws:
        await ws.send(message)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.recv()
    return closed.value.rcvd.code if closed.value.rcvd else None


async def test_a_deeply_nested_login_message_is_a_bad_message(locked_gui: GuiProcess):
    for _ in range(3):
        assert await closed_after(locked_gui, "/ws/login", NESTED) == 1003
    assert "Traceback" not in locked_gui.output()
    assert "RecursionError" not in locked_gui.output()


async def test_a_deeply_nested_page_request_is_a_bad_message(open_gui: GuiProcess):
    for _ in range(3):
        assert await closed_after(open_gui, "/ws", NESTED) == 1003
    assert "Traceback" not in open_gui.output()
    assert "RecursionError" not in open_gui.output()


async def test_requests_for_no_point_are_paced_and_not_echoed(open_gui: GuiProcess):
    # close_timeout: the GUI reads the close frame only after the queued requests.
    async with connect(f"ws://{open_gui.host}/ws", origin=open_gui.url, close_timeout=1) as ws:
        unknown = json.dumps({"history": "x" * 3000})
        for _ in range(50):
            await ws.send(unknown)
        errors = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3.0):
                while True:
                    message = json.loads(await ws.recv())
                    if message["type"] == "error":
                        errors.append(message["error"])
    # One reply a second, a refusal too: within 3 s at most 4, not 50.
    assert 1 <= len(errors) <= 4, len(errors)
    assert all("xxx" not in e and len(e) < 100 for e in errors), errors
