"""One charge point session: the charger's connection, its SCADA connection, and every frame
between them, forwarded as received, in order, both ways (docs/OCPP.md).

Four tasks per session:
- charger reader: frames from the charger; results of the proxy's own calls are kept here,
  everything else goes to the SCADA through the pump;
- pump: the SCADA-bound frames in order; while the SCADA is away it answers what it can
  itself and stores it on disk (store.py), holds the rest, and closes the charger link when a
  held call waits longer than `hold_timeout` (the charger's own queue keeps it then); the
  charger's call in flight when the SCADA connection drops is handled again, first (at least
  once for that one: the SCADA may see it twice, with the same id);
- upstream: connects (again) to the SCADA with back-off, reads its frames for the charger;
- charger writer: the charger-bound frames in order, with one CALL outstanding at a time
  (OCPP-J: a party sends no CALL before its previous one is answered; the proxy's calls and the
  SCADA's share the charger, so they take turns). That also makes message ids unambiguous.
  The proxy's own calls go ahead of the SCADA calls waiting for the slot: local control is
  never starved by a SCADA backlog.

Bounds: `queue_limit` frames wait per direction. A SCADA CALL beyond it gets a CALLERROR, any
other SCADA frame beyond it closes the SCADA connection; beyond it the charger is not read
until frames move (TCP pushes back). The outage store's own bounds make the pump hold a call
instead of answering it. The observer (observe.py) reads a copy of each
frame after it was queued, and nothing it raises reaches forwarding.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from smx.aio import wait_event

from .config import VERSIONS, ChargePointConfig, OcppConfig
from .frames import (
    CALL,
    CALLERROR,
    CALLRESULT,
    Frame,
    FrameError,
    call_error,
    call_result,
    check_payload,
    parse,
)
from .observe import Observer
from .profiles import PURPOSES
from .store import OutageStore

__all__ = ["ANSWERABLE", "Link", "ProxyCall", "ProxyCallError"]

log = logging.getLogger(__name__)

Raw = str | bytes
# CALLs the proxy answers itself while the SCADA is away (their answers carry nothing only the
# SCADA knows); they are stored and delivered later. Heartbeat is answered, not stored.
ANSWERABLE = {
    "1.6": {
        "StatusNotification",
        "MeterValues",
        "StopTransaction",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
    },
    "2.0.1": {
        "StatusNotification",
        "MeterValues",
        "TransactionEvent",
        "NotifyEvent",
        "NotifyReport",
        "NotifyMonitoringReport",
        "SecurityEventNotification",
        "FirmwareStatusNotification",
        "LogStatusNotification",
    },
}
RECENT_SCADA_IDS = 1024  # never reuse one of these for our own calls
# Frames that may carry credentials (AuthorizationKey, BasicAuthPassword, network profiles):
# an invalid one is logged by action and id only, never its text.
_SECRET_MARKERS = (
    "changeconfiguration",
    "getconfiguration",
    "setvariables",
    "getvariables",
    "setnetworkprofile",
    "password",
    "authorizationkey",
)


class ProxyCallError(Exception):
    """The charger did not take our call: not connected, CALLERROR, or no answer."""


class HoldExpired(Exception):
    """A call waited for the SCADA longer than hold_timeout: close the charger link."""


@dataclass
class Out:
    """A frame for the charger: from the SCADA, the proxy's own CALL, or the proxy's answer."""

    raw: Raw
    frame: Frame | None
    origin: str  # "scada", "proxy" or "local"
    call: ProxyCall | None = None  # ours: raw and frame made when it is sent


@dataclass
class Incoming:
    raw: Raw
    frame: Frame | None
    action: str
    at: float = field(default_factory=time.monotonic)
    held: bool = False  # logged as held (SCADA away)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Link:
    def __init__(
        self,
        cfg: OcppConfig,
        cp: ChargePointConfig,
        charger: ServerConnection,
        subprotocol: str,
        upstream: ClientConnection | None,
        store: OutageStore,
        observer: Observer,
        open_upstream: Callable[[], Awaitable[ClientConnection]] | None,
    ) -> None:
        self.cfg, self.cp, self.charger = cfg, cp, charger
        self.subprotocol = subprotocol
        self.version = VERSIONS[subprotocol]
        self.upstream = upstream
        self.store = store
        self.observer = observer
        self._open_upstream = open_upstream
        self.up = asyncio.Event()
        if upstream is not None:
            self.up.set()
        self.incoming: deque[Incoming] = deque()  # SCADA-bound, not yet sent
        self.wake = asyncio.Event()  # the pump has something to do
        self.room = asyncio.Event()  # a frame left a queue: the charger reader may go on
        self.to_charger: deque[Out] = deque()  # the SCADA's frames and the proxy's answers
        self.own: deque[Out] = deque()  # the proxy's own calls: first when the slot is free
        self.writable = asyncio.Event()  # the writer has something to look at
        # The CALL outstanding at the charger: (origin, id, deadline).
        self.outstanding: tuple[str, str, float] | None = None
        self.mine: dict[str, ProxyCall] = {}  # our calls by id, until answered
        # The charger answered a SCADA ClearChargingProfile that may have cleared ours.
        self.on_profiles_cleared: Callable[[], None] | None = None
        self._clears: OrderedDict[str, None] = OrderedDict()  # such clears, by message id
        self._store_full = False  # in an episode of a full outage store (logged once)
        self._observer_faults: set[str] = set()  # kinds already logged
        self._background: set[asyncio.Future[Any]] = set()
        self.recent_scada_ids: OrderedDict[str, None] = OrderedDict()
        self.awaiting: tuple[str, asyncio.Future[Frame]] | None = None  # a stored frame's id
        # The charger's CALL sent to the SCADA and not answered yet, with the connection it went
        # over: if that connection is lost first, the call is answered or held again (_pump).
        self.in_flight: tuple[Incoming, ClientConnection] | None = None
        self._ids = itertools.count(1)
        self._salt = secrets.token_hex(3)
        # The SCADA link as the extension shows it: on_scada(up, frames stored, why it is down).
        self.on_scada: Callable[[bool, int, str], None] | None = None
        self.scada_why = "" if upstream is not None else "SCADA not connected yet"
        if open_upstream is None:
            self.scada_why = "no SCADA configured"
        self._stored_flush: asyncio.TimerHandle | None = None
        self.closed = asyncio.Event()
        self.stats = {"to_scada": 0, "to_charger": 0, "stored": 0, "invalid": 0}

    # -- the SCADA link's state ----------------------------------------------------------------

    def report_scada(self) -> None:
        """Tell on_scada the SCADA link's state now."""
        if self._stored_flush is not None:
            self._stored_flush.cancel()
            self._stored_flush = None
        if self.on_scada is not None and not self.closed.is_set():
            up = self.up.is_set()
            self.on_scada(up, len(self.store), "" if up else self.scada_why)

    def _scada_down(self, why: str) -> None:
        self.up.clear()
        self.scada_why = why
        self.report_scada()

    def _stored_changed(self) -> None:
        """The store's count changed: reported within a second (not once per frame)."""
        if self._stored_flush is None and self.on_scada is not None:
            loop = asyncio.get_running_loop()
            self._stored_flush = loop.call_later(1.0, self.report_scada)

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Until the charger's connection ends (or a held call outlives hold_timeout)."""
        tasks = [
            asyncio.ensure_future(self._charger_reader()),
            asyncio.ensure_future(self._charger_writer()),
            asyncio.ensure_future(self._pump()),
            asyncio.ensure_future(self._upstream_loop()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    err = task.exception()
                    if isinstance(err, HoldExpired):
                        log.warning("charge point %s: %s; closing its link", self.cp.id, err)
                        await self.charger.close(1011, "upstream unavailable")
                    elif not isinstance(err, ConnectionClosed):
                        log.error("charge point %s: %s", self.cp.id, err, exc_info=err)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.closed.set()
            if self._stored_flush is not None:
                self._stored_flush.cancel()
            queued = [o.call for o in [*self.own, *self.to_charger] if o.call is not None]
            self.own.clear()
            self.to_charger.clear()
            for pc in [*self.mine.values(), *queued]:
                if not pc.answer.done():
                    pc.answer.set_exception(ProxyCallError("the charger disconnected"))
                    pc.answer.exception()  # retrieved: nobody may be waiting any more
            if self.upstream is not None:
                await self.upstream.close()
            await self.charger.close()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.charger.close(code, reason)

    # -- charger -> SCADA ---------------------------------------------------------------------

    def _check(self, sender: str, raw: Raw) -> tuple[Frame | None, str, FrameError | None]:
        """Parse a copy of `raw`: (frame or None, its action, the problem if invalid)."""
        try:
            frame = parse(raw, self.version)
        except FrameError as err:
            return None, "", err
        action = self.observer.action_of(sender, frame)
        try:
            if action or frame.kind == CALL:
                check_payload(frame, action, self.version)
        except FrameError as err:
            return frame, action, err
        return frame, action, None

    def _invalid(self, sender: str, raw: Raw, err: FrameError, action: str = "") -> None:
        self.stats["invalid"] += 1
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        description = err.description
        if any(marker in text.lower() for marker in _SECRET_MARKERS):
            # Neither the text nor the schema's message (which quotes the value) is shown.
            description = "details not shown"
            shown = f"{action or 'a frame'} {err.id}, {len(raw)} bytes (may hold credentials)"
        else:
            shown = repr(raw[:300])
        log.warning(
            "charge point %s: invalid frame from the %s (%s: %s), %s: %s",
            self.cp.id,
            "charger" if sender == "cp" else "SCADA",
            err.code,
            description,
            "refused" if self.cfg.invalid_frames == "refuse" else "forwarded",
            shown,
        )

    def _observe(self, sender: str, frame: Frame) -> None:
        """The observer reads a copy: whatever it raises is logged once per kind, and
        forwarding goes on."""
        try:
            self.observer.seen(sender, frame)
        except Exception as err:
            kind = f"{type(err).__name__} on {frame.action or 'a result'}"
            if kind not in self._observer_faults and len(self._observer_faults) < 64:
                self._observer_faults.add(kind)
                log.warning(
                    "charge point %s: a frame could not be observed (%s: %s); forwarded anyway "
                    "(logged once per kind)",
                    self.cp.id,
                    kind,
                    str(err)[:200],
                )

    def _to_charger(self, out: Out) -> None:
        self.to_charger.append(out)
        self.writable.set()

    def _later(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _charger_reader(self) -> None:
        async for raw in self.charger:
            # Bounded: with queue_limit frames waiting either way, the charger is not read
            # until they move (TCP pushes back; a held call ends in hold_timeout anyway).
            limit = self.cfg.queue_limit
            while len(self.incoming) >= limit or len(self.to_charger) >= 2 * limit:
                self.room.clear()
                await self.room.wait()
            if ours := self._ours(raw):
                self._our_answer(ours)
                continue
            frame, action, err = self._check("cp", raw)
            if err is not None:
                self._invalid("cp", raw, err, action)
                if self.cfg.invalid_frames == "refuse":
                    if frame is None or frame.kind == CALL:
                        answer = call_error(err.id, err.code, err.description)
                        self._to_charger(Out(answer, None, "local"))
                    continue
            self.incoming.append(Incoming(raw, frame, action))
            self.wake.set()
            if frame is not None:
                self._release_slot(frame)
                cleared = frame.kind != CALL and frame.id in self._clears
                if cleared:
                    del self._clears[frame.id]
                self._observe("cp", frame)
                if cleared and self.on_profiles_cleared is not None:
                    self.on_profiles_cleared()  # after the clear: ours is sent again

    def _ours(self, raw: Raw) -> Frame | None:
        """The charger's answer to one of our calls, or None."""
        if not self.mine:
            return None
        try:
            frame = parse(raw, self.version)
        except FrameError:
            return None
        return frame if frame.kind != CALL and frame.id in self.mine else None

    def _our_answer(self, frame: Frame) -> None:
        pc = self.mine.pop(frame.id)
        try:
            check_payload(frame, pc.action, self.version)
        except FrameError as err:
            self._invalid("cp", frame.id, err)
        self._release_slot(frame)
        if not pc.answer.done():
            pc.answer.set_result(frame)

    async def _pump(self) -> None:
        while True:
            self._requeue_in_flight()
            head = self.incoming[0] if self.incoming else None
            if self.up.is_set():
                if len(self.store) and not self.store.broken:
                    await self._deliver_stored()
                elif head is not None:
                    conn = self.upstream
                    if conn is not None and head.frame is not None and head.frame.kind == CALL:
                        self.in_flight = (head, conn)  # before sending: its answer may be quick
                    if await self._send_upstream(head.raw):
                        self._popleft()
                    elif self.in_flight is not None and self.in_flight[0] is head:
                        self.in_flight = None  # not sent: still at the head of `incoming`
                else:
                    await self._sleep()
                continue
            if head is None:
                await self._sleep()
                continue
            frame = head.frame
            if frame is not None and frame.kind == CALL and frame.action == "Heartbeat":
                self._answer_locally(frame, {"currentTime": now_iso()})
                self._popleft()
            elif (
                frame is not None
                and frame.kind == CALL
                and frame.action in ANSWERABLE[self.version]
                and await self._stored(head)
            ):
                self._answer_locally(frame, {})
                self._popleft()
            elif frame is None or frame.kind != CALL:
                # An answer to a SCADA call whose connection is gone, or garbage: nobody to
                # give it to.
                log.info("charge point %s: SCADA away, dropped %r", self.cp.id, head.raw[:120])
                self._popleft()
            else:
                left = head.at + self.cfg.hold_timeout - time.monotonic()
                if not head.held:
                    head.held = True
                    log.warning(
                        "charge point %s: SCADA away (%s): %s %s held, unanswered, for up to %g s",
                        self.cp.id,
                        self.scada_why,
                        frame.action,
                        frame.id,
                        self.cfg.hold_timeout,
                    )
                if left <= 0:
                    raise HoldExpired(
                        f"{frame.action} waited {self.cfg.hold_timeout:g} s for the SCADA"
                    )
                await self._sleep(left)

    def _requeue_in_flight(self) -> None:
        """The SCADA connection that took the charger's call in flight is gone, its answer with
        it: the call goes back to the head of `incoming`, ahead of everything that came after
        it. With the SCADA away it is then answered and stored (an ANSWERABLE action: the store
        is empty while a charger call is in flight, as stored frames go first, so it is stored
        ahead of the frames stored after it) or held; with the SCADA back it is sent again
        first. The SCADA may have had it: at least once, with the same message id."""
        if self.in_flight is None:
            return
        entry, conn = self.in_flight
        if self.up.is_set() and conn is self.upstream and conn.state is State.OPEN:
            return
        self.in_flight = None
        frame = entry.frame
        log.warning(
            "charge point %s: the SCADA connection was lost with %s %s unanswered: "
            "it is handled again (the SCADA may see it twice, with the same id)",
            self.cp.id,
            entry.action or (frame.action if frame is not None else "a call"),
            frame.id if frame is not None else "",
        )
        self.incoming.appendleft(entry)

    def _popleft(self) -> None:
        self.incoming.popleft()
        self.room.set()

    async def _stored(self, head: Incoming) -> bool:
        """`head` stored on disk (then the proxy answers it), or False: the store is full (or
        cannot be written) and the call is held like one only the SCADA can answer."""
        raw = head.raw if isinstance(head.raw, str) else head.raw.decode("utf-8", "replace")
        if not self.store.full(raw) and await self.store.append(raw):
            self.stats["stored"] += 1
            self._store_full = False
            self._stored_changed()
            return True
        if not self._store_full:
            self._store_full = True
            log.warning(
                "charge point %s: outage store full (%d frames, %d bytes; limits %d, %d): "
                "calls are held, not answered, and the charger's own queue keeps them",
                self.cp.id,
                len(self.store),
                self.store.pending_bytes,
                self.store.max_frames,
                self.store.max_bytes,
            )
        return False

    async def _sleep(self, seconds: float | None = None) -> None:
        self.wake.clear()
        if seconds is None:
            await self.wake.wait()
        else:
            await wait_event(self.wake, seconds)

    def _answer_locally(self, frame: Frame, payload: dict[str, Any]) -> None:
        answer = call_result(frame.id, payload)
        self._to_charger(Out(answer, None, "local"))
        self._observe("csms", Frame(CALLRESULT, frame.id, payload=payload))

    async def _deliver_stored(self) -> None:
        """Send the oldest stored frame, wait for the SCADA's answer (kept here: the charger
        had ours), then forget it. A lost link leaves it stored, for the next connection."""
        raw = await self.store.first()
        if raw is None:
            return  # unreadable: logged; the store is read again at the next session
        try:
            frame = parse(raw, self.version)
        except FrameError as err:
            log.warning("charge point %s: stored frame dropped (%s): %r", self.cp.id, err, raw[:80])
            await self.store.pop()
            return
        answered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.awaiting = (frame.id, answered)
        try:
            if not await self._send_upstream(raw):
                return
            lost: asyncio.Future[Any] = asyncio.ensure_future(self._link_lost())
            try:
                done, _ = await asyncio.wait(
                    [answered, lost],
                    timeout=self.cfg.call_timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                lost.cancel()
            if answered not in done:
                if self.upstream is not None and lost not in done:
                    await self.upstream.close(1011, "no answer")  # retried on the next link
                await self._sleep(0.05)
                return
            reply = answered.result()
            if reply.kind == CALLERROR:
                log.warning(
                    "charge point %s: the SCADA refused stored %s: %s %s",
                    self.cp.id,
                    frame.action,
                    reply.error_code,
                    reply.description,
                )
            await self.store.pop()
            self._stored_changed()
        finally:
            self.awaiting = None

    async def _link_lost(self) -> None:
        while self.up.is_set():
            await asyncio.sleep(0.05)

    async def _send_upstream(self, raw: Raw) -> bool:
        """True once sent; False when the SCADA connection is gone (the frame stays queued,
        the upstream loop reconnects)."""
        if self.upstream is None:
            return False
        try:
            await self.upstream.send(raw)
        except ConnectionClosed:
            self._scada_down(_closed("SCADA connection lost", self.upstream))
            await self._sleep(0.05)
            return False
        self.stats["to_scada"] += 1
        return True

    # -- SCADA -> charger ---------------------------------------------------------------------

    async def _upstream_loop(self) -> None:
        failures = 0
        while True:
            if self.upstream is None or not self.up.is_set():
                if self._open_upstream is None:
                    await asyncio.Event().wait()  # no SCADA configured: local only
                try:
                    self.upstream = await self._open_upstream()  # type: ignore[misc]
                except Exception as err:  # unreachable, refused, TLS...
                    failures += 1
                    delay = min(0.5 * 2 ** min(failures - 1, 10), self.cfg.reconnect_max)
                    if failures == 1:  # after a loss, its cause stays in view
                        lost = self.scada_why if self.scada_why.startswith("SCADA conn") else ""
                        why = f"SCADA unreachable: {err}"
                        self._scada_down(f"{lost}; {why}" if lost else why)
                    if failures in (1, 5) or failures % 50 == 0:
                        log.warning(
                            "charge point %s: SCADA unreachable (%s), try %d, next in %.1f s",
                            self.cp.id,
                            err,
                            failures,
                            delay,
                        )
                    await asyncio.sleep(delay)
                    continue
                if failures:
                    log.info("charge point %s: SCADA connected again", self.cp.id)
                failures = 0
                self.up.set()
                self.report_scada()
                self.wake.set()
            upstream = self.upstream
            assert upstream is not None
            try:
                async for raw in upstream:
                    self._from_scada(raw)
            except ConnectionClosed:
                pass
            why = _closed("SCADA connection lost", upstream)
            log.warning("charge point %s: %s", self.cp.id, why)
            self._scada_down(why)
            self.wake.set()
            # Calls the SCADA had outstanding at the charger died with its connection.
            if self.outstanding is not None and self.outstanding[0] == "scada":
                self.outstanding = None
                self.writable.set()
            self.observer.calls["csms"].clear()

    def _from_scada(self, raw: Raw) -> None:
        frame, action, err = self._check("csms", raw)
        if (
            frame is not None
            and frame.kind != CALL
            and self.in_flight is not None
            and self.in_flight[0].frame is not None
            and frame.id == self.in_flight[0].frame.id
        ):
            self.in_flight = None  # answered: forwarded to the charger below
        if (
            frame is not None
            and self.awaiting is not None
            and frame.id == self.awaiting[0]
            and frame.kind != CALL
        ):
            if not self.awaiting[1].done():
                self.awaiting[1].set_result(frame)
            return  # the answer to a stored frame: the charger had the proxy's
        if err is not None:
            self._invalid("csms", raw, err, action)
            if self.cfg.invalid_frames == "refuse":
                if frame is None or frame.kind == CALL:
                    self._refuse_scada(err.id, err.code, err.description)
                return
        if len(self.to_charger) >= self.cfg.queue_limit:
            if frame is not None and frame.kind == CALL:
                self._refuse_scada(
                    frame.id, "GenericError", f"charger busy: {len(self.to_charger)} frames queued"
                )
                return
            log.warning("charge point %s: SCADA frames pile up: closing its connection", self.cp.id)
            if self.upstream is not None:
                self._later(self.upstream.close(1008, "too many frames queued"))
            return
        if frame is not None and frame.kind == CALL:
            reason = self._touches_ours(frame)
            if reason is not None:
                log.warning(
                    "charge point %s: SCADA %s refused: %s", self.cp.id, frame.action, reason
                )
                self._refuse_scada(frame.id, "PropertyConstraintViolation", reason)
                return
        self._to_charger(Out(raw, frame, "scada"))
        if frame is not None:
            if frame.kind == CALL:
                self.recent_scada_ids[frame.id] = None
                while len(self.recent_scada_ids) > RECENT_SCADA_IDS:
                    self.recent_scada_ids.popitem(last=False)
                id_key = "id" if self.version == "1.6" else "chargingProfileId"
                if frame.action == "ClearChargingProfile" and id_key not in frame.payload:
                    self._clears[frame.id] = None  # may clear ours: sent again once answered
                    while len(self._clears) > 16:
                        self._clears.popitem(last=False)
            self._observe("csms", frame)

    def _refuse_scada(self, id: str, code: str, description: str) -> None:
        if self.upstream is not None:
            self._later(self._send_upstream(call_error(id, code, description)))

    def _touches_ours(self, frame: Frame) -> str | None:
        """Why a SCADA call would replace or clear the proxy's own profile, or None.

        A charger replaces a profile with the same id, or the same stack level and purpose:
        our ids (profile_id_base + connector) and our stack level with our purpose are the
        proxy's. A ClearChargingProfile without an id is let through (ours is sent again)."""
        p, v16 = frame.payload, self.version == "1.6"
        ours = range(
            self.cfg.profile_id_base + 1, self.cfg.profile_id_base + len(self.cp.connectors) + 1
        )
        if frame.action == "SetChargingProfile":
            profile = p.get("csChargingProfiles" if v16 else "chargingProfile")
            if not isinstance(profile, dict):
                return None
            pid = profile.get("chargingProfileId" if v16 else "id")
            if type(pid) is int and pid in ours:
                return f"charging profile id {pid} is reserved for the site's local control"
            purpose = PURPOSES[self.version][self.cp.profile]
            level = profile.get("stackLevel")
            if type(level) is int and level == self.cfg.stack_level:
                if profile.get("chargingProfilePurpose") == purpose:
                    return (
                        f"stack level {level} of {purpose} is reserved for the site's local control"
                    )
        elif frame.action == "ClearChargingProfile":
            pid = p.get("id" if v16 else "chargingProfileId")
            if type(pid) is int and pid in ours:
                return f"charging profile id {pid} is the site's local control"
        return None

    # -- to the charger, one CALL at a time ---------------------------------------------------

    async def _charger_writer(self) -> None:
        while True:
            out, wait = self._next_out()
            if out is None:
                self.writable.clear()
                if wait is None:
                    await self.writable.wait()
                else:
                    await wait_event(self.writable, wait)
                continue
            deadline = time.monotonic() + self.cfg.call_timeout
            if out.call is not None:
                pc = out.call
                pc.id = self.new_id()
                self.outstanding = ("proxy", pc.id, deadline)
                self.mine[pc.id] = pc
                out.raw = json.dumps([CALL, pc.id, pc.action, pc.payload], separators=(",", ":"))
            elif out.frame is not None and out.frame.kind == CALL:
                self.outstanding = (out.origin, out.frame.id, deadline)
            await self.charger.send(out.raw)
            self.room.set()
            self.stats["to_charger"] += 1
            if out.call is not None and not out.call.sent.done():
                out.call.sent.set_result(None)

    def _next_out(self) -> tuple[Out | None, float | None]:
        """The next frame to write, or None and how long to wait at most (None: until woken).
        A CALL needs the slot (free, or its call unanswered past call_timeout); the proxy's
        own calls take it before the SCADA's."""
        wait = None
        if self.outstanding is not None:
            left = self.outstanding[2] - time.monotonic()
            if left > 0:
                wait = left
        head = self.to_charger[0] if self.to_charger else None
        head_is_call = head is not None and head.frame is not None and head.frame.kind == CALL
        if head is not None and not head_is_call:
            # Answers first: our call may depend on one (a TxProfile on the transaction id of
            # the StartTransaction.conf just queued).
            return self.to_charger.popleft(), None
        if wait is None and (self.own or head_is_call):
            if self.outstanding is not None:
                log.info(
                    "charge point %s: call %s unanswered, next call",
                    self.cp.id,
                    self.outstanding[1],
                )
                self.outstanding = None
            return (self.own.popleft() if self.own else self.to_charger.popleft()), None
        return None, wait if (self.own or head_is_call) else None

    def _release_slot(self, frame: Frame) -> None:
        if frame.kind != CALL and self.outstanding is not None and self.outstanding[1] == frame.id:
            self.outstanding = None
            self.writable.set()

    # -- the proxy's own calls ----------------------------------------------------------------

    def new_id(self) -> str:
        """An id no SCADA call outstanding or recent has: "smx-" + a per-link salt + counter."""
        while True:
            id = f"smx-{self._salt}-{next(self._ids)}"
            if id not in self.recent_scada_ids and id not in self.observer.calls["csms"]:
                return id

    def call(self, action: str, payload: dict[str, Any]) -> ProxyCall:
        """Queue our CALL for the charger. Its id is chosen when it is sent (new_id), so it is
        none of the SCADA's ids seen until then. Never forwarded to the SCADA, nor its answer."""
        if self.closed.is_set():
            raise ProxyCallError(f"charge point {self.cp.id} is not connected")
        check_payload(Frame(CALL, "check", action, payload), action, self.version)  # ours
        loop = asyncio.get_running_loop()
        pc = ProxyCall("", action, payload, loop.create_future(), loop.create_future())
        self.own.append(Out("", None, "proxy", pc))
        self.writable.set()
        return pc


def _closed(what: str, conn: ClientConnection | ServerConnection) -> str:
    """`what` with the WebSocket close code and reason, when there are."""
    if conn.close_code is None:
        return f"{what} (no close frame)"
    reason = f" {conn.close_reason!r}" if conn.close_reason else ""
    return f"{what} (close code {conn.close_code}{reason})"


@dataclass
class ProxyCall:
    """One of the proxy's own CALLs: `sent` once written to the charger (`id` set then),
    `answer` the charger's CALLRESULT or CALLERROR frame."""

    id: str
    action: str
    payload: dict[str, Any]
    sent: asyncio.Future[None]
    answer: asyncio.Future[Frame]
