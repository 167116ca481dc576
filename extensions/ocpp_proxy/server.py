"""The charge points' side: a WebSocket server where each charger connects to
`ws[s]://<host>:<port>/<anything>/<charge point id>` offering `ocpp1.6` and/or `ocpp2.0.1`.

The opening handshake decides everything before the charger is accepted (docs/OCPP.md):
1. the id (last path segment) must be a configured charge point (else 401, as for a wrong
   password: the answer does not tell which ids exist);
2. its security profile: 1 and 2 need HTTP Basic auth with its password (else 401), 2 and 3
   need TLS, 3 a client certificate whose CN is the id (else 403). Failures slow the next
   attempts of the peer and for the id down (throttle.py); refusals are logged as one line,
   then a summary a minute;
3. the subprotocol: the SCADA connection is opened with what the charger offered and the
   charger gets the one the SCADA chose. A SCADA that is away does not keep the charger out:
   it gets its own first choice, and the link reconnects upstream by itself. A charger that
   offers none is refused (400) unless `lenient_subprotocol`.
A charger that connects again replaces its previous session (the old socket is closed).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import http
import ipaddress
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .config import VERSIONS, ChargePointConfig, OcppConfig
from .link import Link
from .observe import Observer
from .store import OutageStore
from .throttle import RefusalLog, Throttle
from .upstream import open_upstream

__all__ = ["ProxyServer"]

log = logging.getLogger(__name__)


@dataclass
class Accepted:
    cp: ChargePointConfig
    subprotocol: str
    offered: bool  # the charger offered a subprotocol (else lenient: none is sent back)
    upstream: ClientConnection | None


WRONG = "wrong charge point id or password"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def offered_subprotocols(headers: Headers) -> list[str]:
    return [p.strip() for h in headers.get_all("Sec-WebSocket-Protocol") for p in h.split(",") if p]


def _basic_auth(headers: Headers) -> tuple[str, str] | None:
    value = headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(token.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


class ProxyServer:
    """The server and its sessions. `emit(cp_id, connector, readings)` receives observations,
    `on_session(cp_id, link or None)` each session's start and end."""

    def __init__(
        self,
        cfg: OcppConfig,
        queue_dir: Path,
        emit: Callable[[str, int, dict[str, Any]], None] | None = None,
        on_session: Callable[[str, Link | None], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.queue_dir = queue_dir
        self.charge_points = {cp.id: cp for cp in cfg.charge_points}
        self.links: dict[str, Link] = {}
        self._accepted: dict[ServerConnection, Accepted] = {}
        self.current: dict[str, ServerConnection] = {}  # the newest accepted, per charge point
        self._locks: dict[str, asyncio.Lock] = {}
        self._emit = emit
        self._on_session = on_session
        self.server: Server | None = None
        self.tls = cfg.tls_cert is not None
        self.throttle = Throttle()
        self.refusals = RefusalLog()
        # One outage store per charge point and OCPP version, kept across its sessions.
        self.stores: dict[tuple[str, str], OutageStore] = {}

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> ProxyServer:
        if not _loopback(self.cfg.host):
            for cp in self.cfg.charge_points:
                if cp.security_profile == 0:
                    log.warning(
                        "charge point %s: security profile 0 (no authentication) on %s, "
                        "which is not a loopback address: anyone who reaches port %d can "
                        "connect as it",
                        cp.id,
                        self.cfg.host,
                        self.cfg.port,
                    )
        self.server = await serve(
            self._session,
            self.cfg.host,
            self.cfg.port,
            process_request=self._handshake,
            select_subprotocol=self._subprotocol,
            compression=None,  # byte-for-byte, and no zlib state per connection
            max_size=self.cfg.max_frame,
            ssl=self._tls(),
            server_header=None,
        )
        return self

    async def stop(self) -> None:
        self.refusals.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def _tls(self) -> ssl.SSLContext | None:
        if self.cfg.tls_cert is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.cfg.tls_cert), str(self.cfg.tls_key or self.cfg.tls_cert))
        if self.cfg.client_ca is not None:
            ctx.load_verify_locations(str(self.cfg.client_ca))
            ctx.verify_mode = ssl.CERT_OPTIONAL  # required per charge point (profile 3)
        return ctx

    # -- handshake ----------------------------------------------------------------------------

    async def _handshake(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        cp_id = unquote(path.rstrip("/").rpartition("/")[2])
        cp = self.charge_points.get(cp_id)
        peer = conn.remote_address
        host = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
        if cp is None:
            self.throttle.failed(host, None)
            line = f"refused {host}: unknown charge point {cp_id[:60]!r}"
            return self._refuse(http.HTTPStatus.UNAUTHORIZED, WRONG, line, "unknown id", conn)
        if self.throttle.blocked(host, cp.id):
            line = f"refused charge point {cp.id} from {host}: too many failed attempts, waiting"
            return self._refuse(http.HTTPStatus.UNAUTHORIZED, WRONG, line, "throttled", conn)
        refusal = self._authenticate(conn, request, cp)
        if refusal is not None:
            if refusal[0] == http.HTTPStatus.UNAUTHORIZED:
                self.throttle.failed(host, cp.id)
            line = f"refused charge point {cp.id} from {host}: {refusal[1]}"
            return self._refuse(refusal[0], refusal[1], line, refusal[1], conn)
        if cp.security_profile in (1, 2):
            self.throttle.succeeded(host, cp.id)
        offered = offered_subprotocols(request.headers)
        usable = [p for p in offered if p in VERSIONS]
        if not usable:
            if offered or not self.cfg.lenient_subprotocol:
                line = f"refused charge point {cp.id}: subprotocols {offered or 'none'}"
                text = "Expected subprotocol ocpp1.6 or ocpp2.0.1"
                return self._refuse(http.HTTPStatus.BAD_REQUEST, text, line, "subprotocol", conn)
            usable = [cp.default_version]
        async with self._lock(cp.id):
            # A charger that connects again replaces its session, before the SCADA sees a
            # second connection for the same id.
            previous = self.links.get(cp.id)
            if previous is not None:
                log.info("charge point %s connected again: closing its previous session", cp.id)
                await previous.close(1000, "replaced by a new connection")
                await previous.closed.wait()
            self.current[cp.id] = conn
            upstream = None
            chosen = usable[0]
            if cp.upstream:
                try:
                    upstream = await open_upstream(cp, usable, self.cfg.max_frame)
                except Exception as err:
                    log.warning(
                        "charge point %s: SCADA unreachable at connection (%s); charger "
                        "accepted, upstream retried",
                        cp.id,
                        err,
                    )
                else:
                    if upstream.subprotocol not in usable:
                        await upstream.close()
                        log.warning("refused charge point %s: the SCADA chose none", cp.id)
                        return conn.respond(http.HTTPStatus.BAD_GATEWAY, "SCADA refused\n")
                    chosen = upstream.subprotocol
            self._accepted[conn] = Accepted(cp, chosen, bool(offered), upstream)
        # A charger gone before the end of its handshake never reaches _session.
        asyncio.get_running_loop().call_later(30, self._forget, conn)
        return None

    def _refuse(
        self, status: http.HTTPStatus, text: str, line: str, reason: str, conn: ServerConnection
    ) -> Response:
        self.refusals.refused(line, reason)
        response = conn.respond(status, text + "\n")
        if status == http.HTTPStatus.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = 'Basic realm="ocpp", charset="UTF-8"'
        return response

    def _forget(self, conn: ServerConnection) -> None:
        accepted = self._accepted.pop(conn, None)
        if accepted is not None and accepted.upstream is not None:
            asyncio.ensure_future(accepted.upstream.close())

    def _lock(self, cp_id: str) -> asyncio.Lock:
        return self._locks.setdefault(cp_id, asyncio.Lock())

    def _authenticate(
        self, conn: ServerConnection, request: Request, cp: ChargePointConfig
    ) -> tuple[http.HTTPStatus, str] | None:
        if cp.security_profile >= 2 and not self.tls:
            return http.HTTPStatus.FORBIDDEN, f"security profile {cp.security_profile} needs TLS"
        if cp.security_profile in (1, 2):
            creds = _basic_auth(request.headers)
            if creds is None:
                return http.HTTPStatus.UNAUTHORIZED, "Basic auth required"
            user, password = creds
            self.throttle.checked += 1
            good_user = hmac.compare_digest(user.encode(), cp.id.encode())
            good_password = hmac.compare_digest(password.encode(), cp.password.encode())
            if not (good_user and good_password):
                return http.HTTPStatus.UNAUTHORIZED, WRONG
        if cp.security_profile == 3:
            tls = conn.transport.get_extra_info("ssl_object")
            cert = tls.getpeercert() if tls is not None else None
            if not cert:
                return http.HTTPStatus.FORBIDDEN, "client certificate required"
            cns = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
            if cp.id not in cns:
                return http.HTTPStatus.FORBIDDEN, f"certificate CN {cns} is not the charge point id"
        return None

    def _subprotocol(self, conn: ServerConnection, offered: Any) -> Any:
        accepted = self._accepted.get(conn)
        return accepted.subprotocol if accepted and accepted.offered else None

    # -- sessions -----------------------------------------------------------------------------

    async def _session(self, conn: ServerConnection) -> None:
        accepted = self._accepted.pop(conn, None)
        if accepted is None:
            return
        cp = accepted.cp
        async with self._lock(cp.id):
            if self.current.get(cp.id) is not conn:  # a newer connection of the same charger
                if accepted.upstream is not None:
                    await accepted.upstream.close()
                return
            try:
                link = await self._link(conn, accepted)
            except Exception as err:  # the store unreadable (disk, permissions)...
                log.error("charge point %s: session not set up: %s", cp.id, err)
                if accepted.upstream is not None:
                    await accepted.upstream.close()
                await conn.close(1011, "session set-up failed")
                return
            self.links[cp.id] = link
        log.info(
            "charge point %s connected from %s (%s, SCADA %s)",
            cp.id,
            conn.remote_address,
            accepted.subprotocol,
            "up" if accepted.upstream else "away" if cp.upstream else "none",
        )
        if self._on_session:
            self._on_session(cp.id, link)
        try:
            await link.run()
        finally:
            if self.links.get(cp.id) is link:
                del self.links[cp.id]
                if self._on_session:
                    self._on_session(cp.id, None)
            code, reason = conn.close_code, conn.close_reason
            log.info("charge point %s disconnected (close code %s%s)", cp.id, code,
                     f" {reason!r}" if reason else "")  # fmt: skip

    async def _store(self, cp: ChargePointConfig, subprotocol: str) -> OutageStore:
        store = self.stores.get((cp.id, subprotocol))
        if store is None:
            store = self.stores[(cp.id, subprotocol)] = OutageStore(
                self.queue_dir,
                cp.id,
                subprotocol,
                max_bytes=self.cfg.store_max_bytes,
                max_frames=self.cfg.store_max_frames,
            )
        await store.open()
        return store

    async def _link(self, conn: ServerConnection, accepted: Accepted) -> Link:
        cp = accepted.cp
        store = await self._store(cp, accepted.subprotocol)

        def emit(connector: int, readings: dict[str, Any]) -> None:
            if self._emit is not None:
                self._emit(cp.id, connector, readings)

        async def reopen() -> ClientConnection:
            return await open_upstream(cp, [accepted.subprotocol], self.cfg.max_frame)

        return Link(
            self.cfg,
            cp,
            conn,
            accepted.subprotocol,
            accepted.upstream,
            store,
            Observer(VERSIONS[accepted.subprotocol], emit, len(cp.connectors)),
            reopen if cp.upstream else None,
        )
