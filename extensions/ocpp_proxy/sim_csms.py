"""A minimal SCADA/CSMS on the `ocpp` library (1.6 and 2.0.1): accepts every boot,
authorisation and transaction (1.6 transaction ids from 1 up), and records every frame it
receives, as received, per charge point (`frames[cp_id]`), for tests to compare."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections import defaultdict
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call_result as r16
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call_result as r201
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.typing import Subprotocol

__all__ = ["SimCsms"]

log = logging.getLogger(__name__)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class _Recording:
    """The connection as the ocpp library sees it, recording what arrives."""

    def __init__(self, ws: ServerConnection, into: list[str], sent: list[str]) -> None:
        self.ws, self.into, self.sent = ws, into, sent

    async def recv(self) -> str:
        raw = await self.ws.recv()
        self.into.append(raw if isinstance(raw, str) else raw.decode())
        return raw if isinstance(raw, str) else raw.decode()

    async def send(self, raw: str) -> None:
        self.sent.append(raw)
        await self.ws.send(raw)


class SimCsms:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.frames: dict[str, list[str]] = defaultdict(list)  # received
        self.sent: dict[str, list[str]] = defaultdict(list)
        self.sessions: dict[str, Any] = {}
        self.connections = 0
        self.tx_ids = itertools.count(1)
        self.server: Server | None = None

    async def start(self) -> SimCsms:
        self.server = await serve(
            self._session,
            self.host,
            self.port,
            subprotocols=[Subprotocol("ocpp1.6"), Subprotocol("ocpp2.0.1")],
            compression=None,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/ocpp"

    async def _session(self, ws: ServerConnection) -> None:
        cp_id = ws.request.path.rstrip("/").rpartition("/")[2] if ws.request else "?"
        self.connections += 1
        conn = _Recording(ws, self.frames[cp_id], self.sent[cp_id])
        cp = (_Csms16 if ws.subprotocol == "ocpp1.6" else _Csms201)(cp_id, conn, self)
        self.sessions[cp_id] = cp
        try:
            await cp.start()
        except Exception as err:  # the connection ended
            log.info("CSMS: %s gone (%s)", cp_id, type(err).__name__)


class _Csms16(Cp16):
    def __init__(self, cp_id: str, conn: Any, sim: SimCsms) -> None:
        super().__init__(cp_id, conn)
        self.sim = sim

    @on("BootNotification")
    def boot(self, **_: Any) -> Any:
        return r16.BootNotification(current_time=_now(), interval=300, status="Accepted")

    @on("Heartbeat")
    def heartbeat(self) -> Any:
        return r16.Heartbeat(current_time=_now())

    @on("StatusNotification")
    def status(self, **_: Any) -> Any:
        return r16.StatusNotification()

    @on("Authorize")
    def authorize(self, id_tag: str) -> Any:
        return r16.Authorize(id_tag_info={"status": "Accepted"})

    @on("StartTransaction")
    def start_tx(self, **_: Any) -> Any:
        tx = next(self.sim.tx_ids)
        return r16.StartTransaction(transaction_id=tx, id_tag_info={"status": "Accepted"})

    @on("MeterValues")
    def meter_values(self, **_: Any) -> Any:
        return r16.MeterValues()

    @on("StopTransaction")
    def stop_tx(self, **_: Any) -> Any:
        return r16.StopTransaction()


class _Csms201(Cp201):
    def __init__(self, cp_id: str, conn: Any, sim: SimCsms) -> None:
        super().__init__(cp_id, conn)
        self.sim = sim

    @on("BootNotification")
    def boot(self, **_: Any) -> Any:
        return r201.BootNotification(current_time=_now(), interval=300, status="Accepted")

    @on("Heartbeat")
    def heartbeat(self) -> Any:
        return r201.Heartbeat(current_time=_now())

    @on("StatusNotification")
    def status(self, **_: Any) -> Any:
        return r201.StatusNotification()

    @on("Authorize")
    def authorize(self, **_: Any) -> Any:
        return r201.Authorize(id_token_info={"status": "Accepted"})

    @on("TransactionEvent")
    def transaction_event(self, **_: Any) -> Any:
        return r201.TransactionEvent()

    @on("MeterValues")
    def meter_values(self, **_: Any) -> Any:
        return r201.MeterValues()
