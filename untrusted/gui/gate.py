"""Every HTTP request passes here before anything else (websockets' process_request): the Host
and Origin checks, the session cookie, the few plain HTTP routes, and the security headers of
every response. WebSocket upgrades that pass go on to the handlers in server.py."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .hub import Hub
from .sessions import COOKIE, Tokens
from .settings import GuiConfig
from .static_files import StaticFile, load_static

__all__ = ["Gate", "LIVE_PATH", "LOGIN_PATH", "route"]

LIVE_PATH = "/ws"
LOGIN_PATH = "/ws/login"

CSP = (
    "default-src 'self'; connect-src 'self'; img-src 'self'; style-src 'self'; "
    "script-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # a login ticket is in one URL: never pass it on
    "Cache-Control": "no-store",
}


def route(request: Request) -> str:
    """The path a request is routed on, by the gate and by the WebSocket handlers alike: one
    decision, so that no request target passes the gate as one route and runs as another."""
    return urlsplit(request.path).path


class Gate:
    def __init__(self, cfg: GuiConfig, hub: Hub, sessions: Tokens, tickets: Tokens) -> None:
        self.cfg, self.hub, self.sessions, self.tickets = cfg, hub, sessions, tickets
        self.hosts = cfg.allowed_hosts()
        self.origins = cfg.allowed_origins()
        self.static: dict[str, StaticFile] = load_static()

    def session_of(self, request: Request) -> str | None:
        """The valid session token of the request's cookie, or None."""
        for header in request.headers.get_all("Cookie"):
            for pair in header.split(";"):
                name, _, value = pair.strip().partition("=")
                if name == COOKIE and self.sessions.valid(value):
                    return value
        return None

    def logged_in(self, request: Request) -> bool:
        return not self.cfg.login_required or self.session_of(request) is not None

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.method != "GET":
            return _text(405, "only GET")
        # Another Host is a DNS-rebinding page of another site reaching this one by its address.
        if _one(request, "Host") not in self.hosts:
            return _text(400, "unknown host: add it to the GUI's `hosts`")
        # Origin-form only ("/path?query"): "//x/ws/login" or "http://h/ws/login" would parse
        # to one path here and read as another anywhere that looks at the raw target.
        if not request.path.startswith("/") or request.path.startswith("//"):
            return _text(400, "bad request target")
        url = urlsplit(request.path)
        upgrade = _one(request, "Upgrade").lower() == "websocket"
        if url.path in (LIVE_PATH, LOGIN_PATH) and upgrade:
            return self._upgrade(url.path, request)
        if url.path in self.static:
            f = self.static[url.path]
            return _response(200, f.body, f.content_type)
        if url.path == "/api/me":
            state = {"login": self.cfg.login_required, "logged_in": self.logged_in(request)}
            return _response(200, json.dumps(state).encode(), "application/json")
        if url.path == "/session":
            return self._open_session(parse_qs(url.query).get("ticket", [""])[0])
        if url.path == "/logout":
            self.sessions.revoke(self.session_of(request))
            return _redirect("/", self._cookie("", max_age=0))
        return _text(404, "not found")

    def process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        for name, value in SECURITY_HEADERS.items():
            response.headers[name] = value
        if self.cfg.tls:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"

    def _upgrade(self, path: str, request: Request) -> Response | None:
        # Cross-site WebSocket hijacking: a page elsewhere may open a WebSocket here with the
        # browser's cookie; only the GUI's own pages may.
        if _one(request, "Origin") not in self.origins:
            return _text(403, "WebSocket from another origin")
        if path == LOGIN_PATH:
            return None if self.cfg.login_required else _text(404, "no login on this GUI")
        if not self.logged_in(request):
            return _text(401, "log in first")
        if self.hub.full:
            return _text(503, "too many open pages")
        return None

    def _open_session(self, ticket: str) -> Response:
        if not self.cfg.login_required or not self.tickets.redeem(ticket):
            return _text(403, "no valid login ticket: log in again")
        return _redirect("/", self._cookie(self.sessions.issue(), int(self.cfg.session_lifetime)))

    def _cookie(self, token: str, max_age: int) -> str:
        secure = "; Secure" if self.cfg.tls else ""
        return f"{COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"


def _one(request: Request, name: str) -> str:
    """A header given once; "" when absent or repeated (two Hosts are no Host)."""
    values = request.headers.get_all(name)
    return values[0] if len(values) == 1 else ""


def _response(status: int, body: bytes, content_type: str, **headers: Any) -> Response:
    h = Headers({"Content-Type": content_type, "Content-Length": str(len(body))})
    for name, value in headers.items():
        h[name.replace("_", "-")] = value
    return Response(status, HTTPStatus(status).phrase, h, body)


def _text(status: int, text: str) -> Response:
    return _response(status, f"{text}\n".encode(), "text/plain; charset=utf-8")


def _redirect(to: str, cookie: str) -> Response:
    return _response(303, b"", "text/plain", Location=to, Set_Cookie=cookie)
