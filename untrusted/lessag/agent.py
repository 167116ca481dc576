"""`Lessag`: the agent, wired from its parts on the SDK's `Agent` (docs/LESSAG.md).

    core watch --> Measurements --(SenML / line protocol)--> Outbox --> MqttLink --> broker
    core watch --> EssControl (GESSCon profile, every period) --> setpoint request --> core
    broker --> gesscon/profile --> ProfileStore;  broker --> evchcon/command --> EvCommands
    core outcome stream --> EssControl / EvCommands --> report / reply --> Outbox

Untrusted: it reads what its policy lets it read and requests setpoints; it writes only its own
state points (`<name>/mqtt`, `<name>/queued`, `<name>/dropped`, where the policy allows).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from smx.process_env import require_readable
from smx.sdk import (
    Agent,
    DeviceHealth,
    HealthReport,
    PointUpdate,
    ProcessEnv,
    SetpointState,
    SetupError,
)

from .ess_control import EssControl
from .evchcon import EvCommands
from .measurements import Measurements, build_devices
from .mqtt_link import MAX_PACKET, MqttLink
from .outbox import Outbox
from .profile import ProfileError, ProfileStore, parse_profile
from .rights import STATE_POINTS, missing_rights
from .settings import LessagConfig, MqttConfig, size_bytes

__all__ = ["Lessag"]

log = logging.getLogger("lessag")

INBOX_SIZE = 100  # commands waiting; beyond, dropped with a log line (a flood is not a plan)
REQUEST_TIMEOUT_S = 15.0


class Lessag(Agent):
    def __init__(self, env: ProcessEnv, clock: Callable[[], dt.datetime] | None = None) -> None:
        super().__init__(env)
        cfg = self.cfg = self.settings(LessagConfig)
        m = cfg.mqtt
        if (m.cert is None) != (m.key is None):
            raise SetupError(f"{self.config_key}.mqtt: cert and key go together")
        if m.cert is not None and m.ca is None:
            raise SetupError(f"{self.config_key}.mqtt.ca: required with a client certificate")
        _readable(self.config_key, m)
        for key, band in cfg.deadband.items():
            if isinstance(band, bool) or not isinstance(band, int | float) or band < 0:
                raise SetupError(f"{self.config_key}.deadband.{key}: must be a number >= 0")
        try:
            self.zone = ZoneInfo(cfg.ess.timezone) if cfg.ess.timezone else None
        except (KeyError, ValueError):
            raise SetupError(f"{self.config_key}.ess.timezone: unknown time zone") from None
        self.prefix = m.prefix or f"{env.site}/{self.name}"
        # Room for the largest profile the config accepts (commands are 1 KB at most).
        max_packet = max(MAX_PACKET, size_bytes(cfg.ess.max_message) + 1024)
        self.link = MqttLink(m, m.client_id or f"{env.site}-{self.name}", self.prefix, max_packet)
        self.outbox = Outbox(self.link, cfg.queue, cfg.queue.path or self.state_dir / "queue.db")
        devices = build_devices(cfg, env.site, self.prefix)
        self.measurements = Measurements(cfg, devices, self.outbox.submit)
        try:
            store = ProfileStore(self.state_dir / "profile.json")
        except ValueError as err:
            raise SetupError(str(err)) from err
        self.ess = EssControl(
            cfg.ess, store, self._request, self._publish("gesscon/report"), clock or self._now
        )
        self.ev = EvCommands(cfg.ev, self._request, self._publish("evchcon/reply"))
        self.inbox: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue(INBOX_SIZE)
        self.inbox_dropped = 0  # in the current episode of a full inbox (logged once)
        self._wire()

    def _now(self) -> dt.datetime:
        return dt.datetime.now(self.zone) if self.zone else dt.datetime.now().astimezone()

    def _publish(self, leaf: str) -> Callable[[bytes], object]:
        topic = f"{self.prefix}/{leaf}"
        return lambda payload: self.outbox.submit(topic, payload)

    async def _request(self, name: str, value: float, valid_for: float) -> SetpointState:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):  # the core away: say so, do not hang
            return await self.request_setpoint(name, value, valid_for)

    # -- wiring ---------------------------------------------------------------------------------

    def _wire(self) -> None:
        link = self.link
        link.on_up = self.outbox.link_up
        link.on_down = self.outbox.link_down
        link.on_message = self._received
        # A day profile is state: the retained one fills the gap of an agent that has none for
        # today (the demo's simulator publishes it retained). A command acts: never retained.
        link.subscribe(f"{self.prefix}/gesscon/profile", retained=True)
        link.subscribe(f"{self.prefix}/evchcon/command", retained=False)
        if self.measurements.devices:
            self.subscribe(self.measurements.patterns(), self.measurements.update)
        if self.cfg.ess.enabled:
            live = self.ess.watched()

            def follow(p: PointUpdate) -> None:
                self.ess.update(live[p.name], p.value, p.quality)

            self.subscribe(list(live), follow)
            self.background(self.ess.run, "ess-control")

        @self.on_outcome
        def route(sp: SetpointState) -> None:
            self.ess.outcome(sp)
            self.ev.outcome(sp)

        @self.on_start
        async def connect() -> None:
            link.start()

        @self.on_stop
        async def disconnect() -> None:
            await link.stop()
            self.outbox.close()

        self.background(self._check_rights, "rights")
        self.background(self.outbox.run, "outbox")
        self.background(self.measurements.run, "measurements")
        self.background(self._serve_inbox, "inbox")

    async def _check_rights(self) -> None:
        """Once connected to the core: what the config needs and the core does not grant this
        agent, in one warning (lessag would run with pieces missing, denied one by one)."""
        await self.client.wait_connected()
        missing = missing_rights(self.cfg, self.name, self.client.may)
        if missing:
            log.warning(
                "the policy does not grant what this config needs: %s; bind it as "
                'docs/LESSAG.md "Least privilege" shows (rights.site_keys)',
                ", ".join(f"{verb} {pattern}" for verb, pattern in missing),
            )

    def _received(self, topic: str, payload: bytes, retained: bool = False) -> None:
        try:
            self.inbox.put_nowait((topic, payload, retained))
        except asyncio.QueueFull:
            if not self.inbox_dropped:  # one line per episode, the count when it ends
                log.warning(
                    "inbox full (%d waiting): dropping messages (first on %s)", INBOX_SIZE, topic
                )
            self.inbox_dropped += 1

    async def _serve_inbox(self) -> None:
        while True:
            topic, payload, retained = await self.inbox.get()
            if self.inbox_dropped and self.inbox.empty():
                log.warning("inbox has room again: %d message(s) dropped", self.inbox_dropped)
                self.inbox_dropped = 0
            try:
                if topic.endswith("/gesscon/profile"):
                    self._take_profile(payload, retained)
                elif topic.endswith("/evchcon/command"):
                    await self.ev.handle(payload)
            except Exception:
                log.exception("message on %s not handled", topic)

    def _take_profile(self, payload: bytes, retained: bool = False) -> None:
        today = self.ess.now().date()
        if retained and self.ess.store.day(today) is not None:
            # The broker's retained profile, sent again at every connect: it fills a gap only,
            # never replaces a profile in force (it may be older than the one sent live since).
            log.debug("retained GESSCon profile ignored: a profile for %s is in force", today)
            return
        error = self._publish("gesscon/error")
        try:
            profile = parse_profile(payload, today, size_bytes(self.cfg.ess.max_message))
        except ProfileError as err:
            log.warning("GESSCon %sprofile refused: %s", "retained " * retained, err)
            if retained:  # the broker's copy, sent again at every connect: no reply each time
                return
            error(_json({"id": err.msg_id, "field": err.field, "error": str(err)}))
            return
        self.ess.store.replace(profile)
        log.info("GESSCon profile %s accepted for %s", profile.id, profile.today.date)
        self._publish("gesscon/accepted")(_json({"id": profile.id, "Date_crt": profile.today.date}))

    # -- health ---------------------------------------------------------------------------------

    def describe(self) -> str:
        return (
            f"MQTT {self.cfg.mqtt.host}:{self.cfg.mqtt.port} as {self.link.client_id}, "
            f"{len(self.measurements.devices)} devices, queue {self.outbox.queued} message(s)"
        )

    def devices_health(self) -> dict[str, DeviceHealth]:
        refused = self.outbox.refusals()
        return {
            "mqtt": DeviceHealth(ok=self.link.connected, last_error=self.link.last_error),
            "broker": DeviceHealth(ok=not refused, last_error=refused),
        }

    def health_points(self, report: HealthReport) -> dict[str, Any]:
        values = {
            "mqtt": "connected" if self.link.connected else "disconnected",
            "queued": self.outbox.backlog,
            "dropped": self.outbox.dropped,
        }
        assert set(values) == set(STATE_POINTS)
        points = super().health_points(report)
        points.update({f"{self.name}/{k}": v for k, v in values.items()})
        return points


def _readable(config_key: str, m: MqttConfig) -> None:
    """The MQTT files, checked at start (one line naming the file, the user and the fix)."""
    keys = ("ca", "cert", "key", "password_file")
    require_readable({f"{config_key}.mqtt.{k}": getattr(m, k) for k in keys})


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
