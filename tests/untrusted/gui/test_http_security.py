"""The GUI as the LAN meets it, over plain HTTP and WebSockets (no browser): login, cookie,
Origin and Host checks, no path traversal, bounded requests, security headers, config errors.
A real core and the GUI as its own process."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from extensions.sdk.testing import TestSite, until
from smx.timestamps import ts_to_seconds
from smx.v1 import point_service_pb2 as spb
from tests.untrusted.gui.conftest import (
    PASSWORD,
    PASSWORD_HASH,
    GuiProcess,
    gui_process,
    run_gui_expecting_failure,
    write,
)


@pytest.fixture(scope="module")
def open_gui(site: TestSite) -> Iterator[GuiProcess]:
    """A GUI on loopback without login."""
    with gui_process(site) as gui:
        yield gui


@pytest.fixture(scope="module")
def locked_gui(site: TestSite) -> Iterator[GuiProcess]:
    """A GUI with a password."""
    with gui_process(site, password_hash=PASSWORD_HASH, max_failed_logins=3) as gui:
        yield gui


def raw_request(gui: GuiProcess, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", gui.port), timeout=10) as s:
        s.sendall(data)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
        return received


async def log_in(gui: GuiProcess, password: str) -> dict:
    async with connect(f"ws://{gui.host}/ws/login", origin=gui.url) as ws:
        await ws.send(json.dumps({"password": password}))
        return json.loads(await ws.recv())


# -- headers and files ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/app.js", "/style.css", "/api/me", "/nothing-here"])
def test_every_response_carries_the_security_headers(open_gui: GuiProcess, path: str):
    resp = open_gui.get(path, {"Host": open_gui.host})
    csp = resp.getheader("Content-Security-Policy", "")
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert resp.getheader("X-Content-Type-Options") == "nosniff"
    assert resp.getheader("X-Frame-Options") == "DENY"


def test_the_page_and_its_script_are_served_with_their_types(open_gui: GuiProcess):
    page = open_gui.get("/", {"Host": open_gui.host})
    script = open_gui.get("/app.js", {"Host": open_gui.host})
    assert (page.status, page.getheader("Content-Type")) == (200, "text/html; charset=utf-8")
    assert script.getheader("Content-Type", "").startswith("text/javascript")


@pytest.mark.parametrize(
    "path",
    [
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2f..%2fetc%2fpasswd",
        "/static/../settings.py",
        "/app.js/../../passwords.py",
        "/%2e%2e%2fsettings.py",
        "//etc/passwd",
        "/static/app.js",
    ],
)
def test_no_path_reaches_a_file_beyond_the_three(open_gui: GuiProcess, path: str):
    answer = raw_request(open_gui, f"GET {path} HTTP/1.1\r\nHost: {open_gui.host}\r\n\r\n".encode())
    assert answer.startswith((b"HTTP/1.1 404", b"HTTP/1.1 400")), answer[:200]
    assert b"root:" not in answer and b"import" not in answer


def test_a_request_for_another_host_is_refused(open_gui: GuiProcess):
    # A DNS-rebinding page of evil.example reaching the GUI by its address.
    resp = open_gui.get("/api/me", {"Host": f"evil.example:{open_gui.port}"})
    assert resp.status == 400
    twice = raw_request(
        open_gui,
        f"GET / HTTP/1.1\r\nHost: {open_gui.host}\r\nHost: evil.example\r\n\r\n".encode(),
    )
    assert twice.startswith(b"HTTP/1.1 400"), twice[:100]


def test_requests_with_a_body_or_another_method_are_refused(open_gui: GuiProcess):
    post = raw_request(
        open_gui,
        f"POST / HTTP/1.1\r\nHost: {open_gui.host}\r\nContent-Length: 5\r\n\r\nhello".encode(),
    )
    delete = raw_request(open_gui, f"DELETE / HTTP/1.1\r\nHost: {open_gui.host}\r\n\r\n".encode())
    # websockets reads no request body: it closes the connection without an answer.
    assert post == b"" or post.startswith(b"HTTP/1.1 4"), post[:100]
    assert delete.startswith(b"HTTP/1.1 405")


def test_oversized_requests_are_refused(open_gui: GuiProcess):
    long_line = raw_request(
        open_gui, f"GET /?{'a' * 20000} HTTP/1.1\r\nHost: {open_gui.host}\r\n\r\n".encode()
    )
    many = "".join(f"X-H{i}: x\r\n" for i in range(200))
    many_headers = raw_request(
        open_gui, f"GET / HTTP/1.1\r\nHost: {open_gui.host}\r\n{many}\r\n".encode()
    )
    for answer in (long_line, many_headers):
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:100]
    assert open_gui.get("/", {"Host": open_gui.host}).status == 200  # and it still serves


async def test_an_oversized_websocket_message_ends_the_connection(open_gui: GuiProcess):
    async with connect(f"ws://{open_gui.host}/ws", origin=open_gui.url) as ws:
        await ws.recv()  # hello
        await ws.send(json.dumps({"history": "x" * 100_000}))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big


# -- the WebSocket's Origin ----------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["http://evil.example", "null", None])
async def test_a_websocket_from_another_origin_is_refused(open_gui: GuiProcess, origin):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://{open_gui.host}/ws", origin=origin):
            pass
    assert refused.value.response.status_code == 403


async def test_the_pages_own_origin_gets_the_site(site: TestSite, open_gui: GuiProcess):
    await write(site, "smm", {"smm/P": 1500.0})
    async with connect(f"ws://{open_gui.host}/ws", origin=open_gui.url) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        points = json.loads(await ws.recv())
    grid = {p["name"]: p for p in points["points"]}["smm/P"]
    assert (grid["value"], grid["unit"], grid["quality"]) == (1500.0, "W", "GOOD")


async def test_pages_beyond_max_clients_are_refused(site: TestSite):
    with gui_process(site, max_clients=1) as gui:
        async with connect(f"ws://{gui.host}/ws", origin=gui.url) as first:
            await first.recv()
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"ws://{gui.host}/ws", origin=gui.url):
                    pass
            assert refused.value.response.status_code == 503

        async def hello_again() -> str:
            async with connect(f"ws://{gui.host}/ws", origin=gui.url) as again:
                return json.loads(await again.recv())["type"]

        # The place is free again once the first page is gone.
        assert await until(hello_again, what="a page after the first closed") == "hello"


# -- login ---------------------------------------------------------------------------------------


async def test_with_a_password_nothing_is_seen_before_logging_in(locked_gui: GuiProcess):
    me = locked_gui.get("/api/me", {"Host": locked_gui.host})
    assert me.status == 200
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://{locked_gui.host}/ws", origin=locked_gui.url):
            pass
    assert refused.value.response.status_code == 401
    forged = locked_gui.get("/session?ticket=guess", {"Host": locked_gui.host})
    assert forged.status == 403 and forged.getheader("Set-Cookie") is None


async def test_logging_in_gives_a_strict_httponly_cookie_that_opens_the_site(
    locked_gui: GuiProcess,
):
    answer = await log_in(locked_gui, PASSWORD)
    ticket = answer["ticket"]
    resp = locked_gui.get(f"/session?ticket={ticket}", {"Host": locked_gui.host})
    assert resp.status == 303 and resp.getheader("Location") == "/"
    cookie = resp.getheader("Set-Cookie", "")
    flags = {part.strip().split("=")[0] for part in cookie.split(";")}
    assert {"HttpOnly", "SameSite", "Path"} <= flags and "SameSite=Strict" in cookie
    session = cookie.split(";")[0]

    again = locked_gui.get(f"/session?ticket={ticket}", {"Host": locked_gui.host})
    assert again.status == 403  # a ticket opens one session only

    async with connect(
        f"ws://{locked_gui.host}/ws", origin=locked_gui.url, additional_headers={"Cookie": session}
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"

        out = locked_gui.get("/logout", {"Host": locked_gui.host, "Cookie": session})
        assert "Max-Age=0" in out.getheader("Set-Cookie", "")
        # The page open with that session is closed too, within the 5 s session check.
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
    with pytest.raises(InvalidStatus):
        async with connect(
            f"ws://{locked_gui.host}/ws",
            origin=locked_gui.url,
            additional_headers={"Cookie": session},
        ):
            pass


async def test_wrong_passwords_are_refused_then_rate_limited(site: TestSite):
    with gui_process(site, password_hash=PASSWORD_HASH, max_failed_logins=2) as gui:
        assert await log_in(gui, "wrong one") == {"error": "wrong password"}
        assert await log_in(gui, "wrong two") == {"error": "wrong password"}
        # Past the limit even the right password waits: a guesser learns nothing more.
        limited = await log_in(gui, PASSWORD)
        assert "too many failed logins" in limited["error"]
        assert "ticket" not in limited


async def test_a_login_from_another_origin_is_refused(locked_gui: GuiProcess):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://{locked_gui.host}/ws/login", origin="http://evil.example"):
            pass
    assert refused.value.response.status_code == 403


# -- config --------------------------------------------------------------------------------------


def test_an_unknown_config_key_is_one_line_naming_it(site: TestSite):
    code, output = run_gui_expecting_failure(site, {"listn": "127.0.0.1:8080"})
    assert code == 2
    assert "agents.gui.config.listn: unknown key (did you mean 'listen'?" in output
    assert len(output.strip().splitlines()) == 1, output


def test_listening_beyond_loopback_without_a_password_is_refused(site: TestSite):
    code, output = run_gui_expecting_failure(site, {"listen": "0.0.0.0:8080"})
    assert code == 2
    assert "agents.gui.config.password_hash" in output and "network" in output


def test_a_malformed_password_hash_is_refused(site: TestSite):
    code, output = run_gui_expecting_failure(site, {"password_hash": "hunter2"})
    assert code == 2 and "agents.gui.config.password_hash" in output


async def test_names_listed_in_hosts_are_answered_and_their_origin_accepted(site: TestSite):
    with gui_process(site, hosts=["usm.local"]) as gui:
        named = f"usm.local:{gui.port}"
        assert gui.get("/", {"Host": named}).status == 200
        assert gui.get("/", {"Host": f"localhost:{gui.port}"}).status == 200  # on loopback
        assert gui.get("/", {"Host": f"other.local:{gui.port}"}).status == 400
        # Reached by that name (the browser's Host and Origin), at the loopback address.
        async with connect(
            f"ws://{named}/ws", origin=f"http://{named}", host="127.0.0.1", port=gui.port
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"


def test_a_host_with_a_port_is_refused_naming_the_key(site: TestSite):
    code, output = run_gui_expecting_failure(site, {"hosts": ["usm.local:8080"]})
    assert code == 2 and "agents.gui.config.hosts" in output and "usm.local:8080" in output


async def test_open_pages_share_one_core_watch():
    with TestSite({"gui": ("untrusted", ["gui"], [])}) as own_site:
        with gui_process(own_site) as gui:
            stubs = own_site.stubs("admin")

            async def watchers_since(t: float) -> tuple[int] | None:
                resp = await stubs.points.GetPoints(spb.GetPointsRequest(names=["core/watchers"]))
                p = resp.points[0]
                return (p.value.int_value,) if ts_to_seconds(p.source_time) > t else None

            # The core counts its WatchPoints streams every 5 s: the GUI's alone first.
            async def with_the_guis_watch() -> tuple[int] | None:
                count = await watchers_since(0.0)
                return count if count and count[0] >= 1 else None

            (alone,) = await until(with_the_guis_watch, timeout=15, what="the GUI's watch")
            pages = [await connect(f"ws://{gui.host}/ws", origin=gui.url) for _ in range(3)]
            try:
                for page in pages:
                    assert json.loads(await page.recv())["type"] == "hello"
                    assert json.loads(await page.recv())["type"] == "points"
                opened = time.time()
                assert await until(lambda: watchers_since(opened), timeout=15) == (alone,)
            finally:
                for page in pages:
                    await page.close()
