"""The GUI's web server: one websockets server for the page's files (through the gate) and two
WebSockets, the live view (points and overview pushed from the hub, the chart's history on
request) and the login (a password in, a one-use ticket out, made a cookie by /session)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .connections import ConnectionLimits
from .failed_logins import FailedLogins
from .gate import LIVE_PATH, LOGIN_PATH, Gate, route
from .hub import Hub, Viewer
from .passwords import verify_password
from .sessions import TICKET_LIFETIME_S, Tokens
from .settings import GuiConfig, tls_context
from .wire import dumps

__all__ = ["GuiServer"]

log = logging.getLogger("gui")

SEND_EVERY_S = 0.25  # a page gets at most 4 messages a second: changes in between coalesce
SESSION_CHECK_S = 5.0  # an expired or logged-out session ends its WebSocket this soon
HISTORY_EVERY_S = 1.0  # a page's chart requests are answered one a second at most
MAX_MESSAGE = 4096  # what a page sends: a history request or a password
LOGIN_TIMEOUT_S = 30.0
OPEN_TIMEOUT_S = 5.0  # TLS and HTTP handshake: an idle connection is dropped this soon
MAX_CONNECTIONS = 256  # TCP connections at a time, whatever their state
MAX_CONNECTIONS_PER_ADDRESS = 32  # a browser opens a few; a flood from one address stops here
# A peer that never answers our close frame holds its socket (and, before, a page's place) only
# this long, not websockets' default 10 s.
CLOSE_TIMEOUT_S = 2.0
MAX_SESSIONS = 32
# What json.loads and the lookups raise on a message that is not the expected object; deep
# nesting ("[" * 4000) is a RecursionError, a bad message like any other.
BAD_MESSAGE = (ValueError, KeyError, TypeError, RecursionError)
HistoryReader = Callable[[str], Awaitable[dict[str, Any]]]


class GuiServer:
    def __init__(self, cfg: GuiConfig, hub: Hub, read_history: HistoryReader, site: str):
        self.cfg, self.hub, self.read_history, self.site = cfg, hub, read_history, site
        self.sessions = Tokens(cfg.session_lifetime, MAX_SESSIONS)
        self.tickets = Tokens(TICKET_LIFETIME_S, MAX_SESSIONS)
        self.failed_logins = FailedLogins(cfg.max_failed_logins, cfg.max_failed_logins_total)
        self.gate = Gate(cfg, hub, self.sessions, self.tickets)
        self._password_check = asyncio.Lock()  # one scrypt at a time: 16 MiB each
        self.connections = ConnectionLimits(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_ADDRESS)
        self.port = 0  # the port listened on (when `listen` says 0: a free one)

    async def run(self) -> None:
        addr = self.cfg.address
        async with serve(
            self._handle,
            addr.host,
            addr.port,
            process_request=self.gate.process_request,
            process_response=self.gate.process_response,
            server_header="smx-gui",
            ssl=self._tls(),
            max_size=MAX_MESSAGE,
            max_queue=4,
            open_timeout=OPEN_TIMEOUT_S,
            close_timeout=CLOSE_TIMEOUT_S,
            create_connection=self.connections.connection_class(),
            compression=None,  # the page's messages are small; deflate costs memory per page
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            scheme = "https" if self.cfg.tls else "http"
            log.info("serving the GUI on %s://%s:%d", scheme, addr.host, self.port)
            await asyncio.Future()  # until cancelled

    def _tls(self) -> ssl.SSLContext | None:
        if self.cfg.tls_cert is None or self.cfg.tls_key is None:
            return None
        return tls_context(self.cfg.tls_cert, self.cfg.tls_key)

    async def _handle(self, ws: ServerConnection) -> None:
        path = route(ws.request) if ws.request is not None else None
        if path == LOGIN_PATH:
            await self._login(ws)
        elif path == LIVE_PATH:
            await self._live(ws)
        else:  # the gate lets no other upgrade through: never reached, but never a page
            await ws.close(1008, "no such WebSocket")

    # -- the live view ------------------------------------------------------------------------

    async def _live(self, ws: ServerConnection) -> None:
        # The session first: a socket without one gets nothing, not even a page's place.
        session = self.gate.session_of(ws.request) if ws.request else None
        if self.cfg.login_required and session is None:
            await ws.close(4001, "log in first")
            return
        viewer = self.hub.join()
        if viewer is None:
            await ws.close(1013, "too many open pages")
            return
        # Pushing and answering until either ends (the page left, or its session did): then
        # the other is cancelled at once, so the page's place is free at once.
        tasks = [
            asyncio.create_task(self._push(ws, viewer, session)),
            asyncio.create_task(self._answer(ws)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            self.hub.leave(viewer)
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, Exception) and not isinstance(result, ConnectionClosed):
                    log.error("a page's connection failed: %r", result)

    async def _push(self, ws: ServerConnection, viewer: Viewer, session: str | None) -> None:
        await ws.send(dumps({"type": "hello", "site": self.site}))
        while True:
            if self.cfg.login_required and not self.sessions.valid(session):
                await ws.close(4001, "session ended: log in again")
                return
            message = await viewer.next_message(SESSION_CHECK_S)
            if message is not None:
                await ws.send(dumps(message))
                await asyncio.sleep(SEND_EVERY_S)

    async def _answer(self, ws: ServerConnection) -> None:
        """The page's requests, one at a time and paced (each costs the core a history read):
        the chart's history of a known point. Returns when the page has gone."""
        with contextlib.suppress(ConnectionClosed):
            await self._answer_requests(ws)

    async def _answer_requests(self, ws: ServerConnection) -> None:
        async for raw in ws:
            try:
                request = json.loads(raw)
                name = request["history"]
            except BAD_MESSAGE:
                log.debug("a bad request from a page at %s", ws.remote_address)
                await ws.close(1003, 'expected {"history": <point name>}')
                return
            await ws.send(dumps(await self._history(name)))
            # Every reply is paced, a refusal too: else a page's bad requests cost a reply each
            # as fast as it can send them.
            await asyncio.sleep(HISTORY_EVERY_S)

    async def _history(self, name: object) -> dict[str, Any]:
        if not isinstance(name, str) or name not in self.hub.latest:
            # Not echoed: the name is the page's input, up to the whole message.
            return {"type": "error", "error": "no such point"}
        try:
            return await self.read_history(name)
        except Exception as err:  # noqa: BLE001 - the core's refusal or absence, said
            log.warning("history of %s: %s", name, err)
            return {"type": "error", "error": f"no history of {name}"}

    # -- the login ----------------------------------------------------------------------------

    async def _login(self, ws: ServerConnection) -> None:
        try:
            async with asyncio.timeout(LOGIN_TIMEOUT_S):
                raw = await ws.recv()
            password = json.loads(raw)["password"]
            if not isinstance(password, str):
                raise TypeError
        except (TimeoutError, *BAD_MESSAGE):
            log.debug("no login message or a bad one from %s", ws.remote_address)
            await ws.close(1003, 'expected {"password": "..."}')
            return
        except ConnectionClosed:
            return
        address = ws.remote_address[0] if ws.remote_address else ""
        async with self._password_check:
            wait = self.failed_logins.wait_s(address)
            if wait > 0:
                await ws.send(dumps({"error": f"too many failed logins: wait {wait:.0f} s"}))
                return
            ok = await asyncio.to_thread(verify_password, password, self.cfg.password_hash)
            if not ok:
                self.failed_logins.failed(address)
                log.warning("failed login from %s", address)
                await ws.send(dumps({"error": "wrong password"}))
                return
        await ws.send(dumps({"ticket": self.tickets.issue()}))
