"""ocpp_proxy: the EV charging point connector, a transparent OCPP-J proxy between charge points
and their SCADA/CSMS, which keeps its authority over authorisation, transactions and billing.

    [extensions.ocpp]
    module = "extensions.ocpp_proxy"
    devices = ["ev1"]
    [extensions.ocpp.config]
    port = 9000
    [[extensions.ocpp.config.charge_points]]
    id = "CP001"
    upstream = "ws://scada.example:9000/ocpp"
    connectors = ["ev1"]

- every frame forwarded as received, both ways, in order (link.py), parsed on the side with
  the `ocpp` library's schemas (frames.py);
- per connector a device `ev<N>` with status, transaction, P, I, U, Ap, SoC, session energy
  (observe.py, meter.py, device.py);
- setpoints `ev<N>/I_max_set`, `ev<N>/P_max_set` as the proxy's own charging profile
  (control.py, profiles.py);
- while the SCADA is away: answered locally and stored on disk, or held (store.py, link.py).

Specification: docs/OCPP.md.
"""

from __future__ import annotations

import logging
from typing import Any

from extensions.sdk import Extension, Reading, SetupError

from .config import OcppConfig
from .control import Control
from .device import ConnectorDevice, point_specs
from .link import Link
from .server import ProxyServer

__all__ = ["OcppConfig", "OcppProxy", "ProxyServer"]

log = logging.getLogger(__name__)


def check(cfg: OcppConfig, devices: tuple[str, ...]) -> None:
    ids = [cp.id for cp in cfg.charge_points]
    if not ids:
        raise SetupError("charge_points: list at least one charge point")
    if len(set(ids)) != len(ids):
        raise SetupError("charge_points: two charge points with one id")
    seen: list[str] = []
    for cp in cfg.charge_points:
        if cp.security_profile >= 2 and cfg.tls_cert is None:
            raise SetupError(f"charge point {cp.id}: security profile 2 and 3 need tls_cert")
        if cp.security_profile == 3 and cfg.client_ca is None:
            raise SetupError(f"charge point {cp.id}: security profile 3 needs client_ca")
        if cp.security_profile in (1, 2) and not cp.password:
            raise SetupError(f"charge point {cp.id}: security profile 1 and 2 need a password")
        if cp.profile == "ChargePointMaxProfile" and len(cp.connectors) > 1:
            raise SetupError(
                f"charge point {cp.id}: a ChargePointMaxProfile limits every connector; with "
                'several, use profile = "TxProfile"'
            )
        for dev in cp.connectors:
            if dev in seen or dev not in devices:
                raise SetupError(
                    f"charge point {cp.id}: connector device {dev!r} is "
                    + ("listed twice" if dev in seen else f"not one of the extension's {devices}")
                )
            seen.append(dev)


class OcppProxy:
    """The extension: the proxy server, one device per connector, the setpoint handlers."""

    def __init__(self, ext: Extension) -> None:
        self.cfg = ext.settings(OcppConfig)
        check(self.cfg, ext.device_ids)
        self.ext = ext
        queue_dir = self.cfg.queue_dir or ext.state_dir / "ocpp-queue"
        self.devices: dict[tuple[str, int], ConnectorDevice] = {}
        for cp in self.cfg.charge_points:
            for n, dev in enumerate(cp.connectors, start=1):
                ext.declare(point_specs(dev))
                device = self.devices[(cp.id, n)] = ConnectorDevice(dev, cp.id, n)
                ext.add_device(device)
        # Per charge point with a SCADA: a health entry, not ok while the SCADA is away (the
        # extension is degraded then). Without a charger there is no SCADA link to miss.
        self.scada_health = {
            cp.id: ext.link_health(f"scada.{cp.id}") for cp in self.cfg.charge_points if cp.upstream
        }
        for health in self.scada_health.values():
            health.ok = True
        self.server = ProxyServer(self.cfg, queue_dir, self._observed, self._session)
        self.control = Control(ext, self.cfg, self.server)
        ext.on_start(self._start)
        ext.on_stop(self.server.stop)

    async def _start(self) -> None:
        await self.server.start()
        log.info("OCPP proxy listening on %s:%d", self.cfg.host, self.server.port)

    def _observed(self, cp_id: str, connector: int, readings: dict[str, Any]) -> None:
        device = self.devices.get((cp_id, connector))
        if device is not None:
            device.feed(readings)

    def _session(self, cp_id: str, link: Link | None) -> None:
        for (cp, _), device in self.devices.items():
            if cp == cp_id:
                device.connected() if link is not None else device.disconnected()
        if link is not None:
            link.on_scada = lambda up, stored, why: self._scada(cp_id, link, up, stored, why)
            link.report_scada()
            self.control.reconnected(cp_id, link)
        elif cp_id in self.scada_health:
            health = self.scada_health[cp_id]
            health.ok, health.last_error = True, ""

    def _scada(self, cp_id: str, link: Link, up: bool, stored: int, why: str) -> None:
        """The SCADA link of a connected charge point: its points and health entry."""
        if self.server.links.get(cp_id) is not link:
            return  # a session that is ending
        health = self.scada_health.get(cp_id)
        if health is not None:
            health.ok, health.last_error = up, why
        for (cp, _), device in self.devices.items():
            if cp == cp_id:
                device.feed({"scada_up": Reading(up), "scada_stored": Reading(stored)})

    async def start(self) -> None:
        await self.ext.start()

    async def stop(self) -> None:
        await self.ext.stop()
