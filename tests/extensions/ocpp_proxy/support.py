"""Shared test plumbing: a proxy in front of a SCADA (a raw websockets server that records the
exact frames it receives and answers as told, or the ocpp-library CSMS simulator)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.typing import Subprotocol

from extensions.ocpp_proxy import OcppProxy
from extensions.ocpp_proxy.config import ChargePointConfig, OcppConfig
from extensions.ocpp_proxy.server import ProxyServer
from extensions.sdk import Extension
from extensions.sdk.testing import TestSite, until


@dataclass
class RawScada:
    """A SCADA that records the bytes it receives and lets the test speak for it."""

    port: int = 0
    received: list[str | bytes] = field(default_factory=list)
    connections: list[ServerConnection] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    answer: Callable[[str | bytes], str | None] | None = None  # auto-answer
    server: Server | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, subprotocols: tuple[str, ...] = ("ocpp1.6", "ocpp2.0.1")) -> RawScada:
        self.server = await serve(
            self._session,
            "127.0.0.1",
            self.port,
            subprotocols=[Subprotocol(p) for p in subprotocols],
            compression=None,
            max_size=2**22,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    @property
    def ws(self) -> ServerConnection:
        return self.connections[-1]

    async def _session(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        assert ws.request is not None
        self.paths.append(ws.request.path)
        self.auth.append(ws.request.headers.get("Authorization"))
        async for raw in ws:
            self.received.append(raw)
            self.arrived.set()
            if self.answer is not None:
                reply = self.answer(raw)
                if reply is not None:
                    await ws.send(reply)

    async def frame(self, index: int, timeout: float = 5.0) -> str | bytes:
        """The `index`-th frame received (0 first), once it has arrived."""
        async with asyncio.timeout(timeout):
            while len(self.received) <= index:
                self.arrived.clear()
                await self.arrived.wait()
        return self.received[index]


def config(scada_url: str = "", **overrides: Any) -> OcppConfig:
    cps = overrides.pop("charge_points", None) or [
        ChargePointConfig(id="CP1", upstream=scada_url, connectors=["ev1"])
    ]
    return OcppConfig(port=0, charge_points=cps, **overrides)


@asynccontextmanager
async def proxy(
    cfg: OcppConfig, queue_dir: Path, emit: Any = None, on_session: Any = None
) -> AsyncIterator[ProxyServer]:
    server = await ProxyServer(cfg, queue_dir, emit, on_session).start()
    try:
        yield server
    finally:
        await server.stop()


def charger(port: int, cp_id: str = "CP1", version: str = "ocpp1.6", **kw: Any) -> Any:
    kw.setdefault("subprotocols", [Subprotocol(version)] if version else None)
    kw.setdefault("compression", None)
    return connect(f"ws://127.0.0.1:{port}/{cp_id}", **kw)


async def recv(ws: ClientConnection | ServerConnection, timeout: float = 5.0) -> str | bytes:
    async with asyncio.timeout(timeout):
        return await ws.recv()


def ok(raw: str | bytes) -> str | None:
    """A SCADA that accepts everything: an empty CALLRESULT to each call, transaction 77 to a
    StartTransaction (RawScada's `answer`)."""
    msg = json.loads(raw)
    if msg[0] != 2:
        return None
    payload = {"transactionId": 77, "idTagInfo": {"status": "Accepted"}}
    return json.dumps([3, msg[1], payload if msg[2] == "StartTransaction" else {}])


def scada_answers(raw: str | bytes) -> str | None:
    """The SCADA: StartTransaction gets transaction ids 7, 8...; everything else {}."""
    frame = json.loads(raw)
    if frame[0] != 2:
        return None
    if frame[2] == "StartTransaction":
        scada_answers.tx += 1  # type: ignore[attr-defined]
        tx = scada_answers.tx  # type: ignore[attr-defined]
        return json.dumps([3, frame[1], {"transactionId": tx, "idTagInfo": {"status": "Accepted"}}])
    return json.dumps([3, frame[1], {}])


@asynccontextmanager
async def site_with_proxy(
    tmp_path: Any, scada: Any, top: dict[str, Any] | None = None, **cfg: Any
) -> AsyncIterator[Any]:
    """A core and the extension, its charge point CP1 connecting up to `scada` (anything with a
    `url`: a RawScada, the ocpp-library CSMS simulator), `cfg` for CP1, `top` for its config;
    yields (the proxy, a `ctrl` client, the site)."""
    site = TestSite({"ocpp": ("trusted", [], []), "ctrl": ("untrusted", ["untrusted-agent"], [])})
    config = {
        "port": 0,
        "answer_timeout": "1s",
        "queue_dir": str(tmp_path),
        "charge_points": [{"id": "CP1", "upstream": scada.url, "connectors": ["ev1"], **cfg}],
        **(top or {}),
    }
    try:
        site.provision()
        site.bind_extension("ocpp", ("ocpp", "ev1"))
        site.start()
        ext = Extension(site.env("ocpp", config, devices=("ocpp", "ev1")))
        proxy = OcppProxy(ext)
        await ext.start()
        try:
            await until(lambda: proxy.server.server is not None)
            async with site.client("ctrl") as ctrl:
                yield proxy, ctrl, site
        finally:
            await ext.stop()
    finally:
        site.close()
