"""The extension SDK against a real core (its own process, real mTLS): publishing and declaring,
isolated device polling, setpoint handlers with expiry, surviving a core restart, and clear
start-up errors."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import grpc
import pytest

from extensions.sdk import (
    Applied,
    Clamped,
    Extension,
    PointSpec,
    PolledDevice,
    Reading,
    Rejected,
    SetupError,
)
from extensions.sdk.testing import TestSite, until
from smx.client import Credentials
from smx.sdk.certificate import check_certificate
from smx.v1 import admin_service_pb2 as apb
from smx.v1 import control_service_pb2 as cpb
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb

CLIENTS = {
    "battery": ("trusted", ["trusted-extension"], ["grid/*"]),
    "grid": ("trusted", ["trusted-extension"], []),
    "ctrl": ("untrusted", ["untrusted-agent"], []),
}


@pytest.fixture(scope="module")
def site():
    with TestSite(CLIENTS) as s:
        yield s


class Counter(PolledDevice):
    def __init__(self, name: str, point: str, interval: float = 0.05) -> None:
        self.name, self.point, self.interval, self.n = name, point, interval, 0

    async def poll(self):
        self.n += 1
        return {self.point: self.n}


class Hanging(PolledDevice):
    timeout = 0.2
    interval = 0.1
    max_backoff = 0.4

    def __init__(self) -> None:
        self.name, self.calls, self.hang = "hanging", 0, False

    async def poll(self):
        self.calls += 1
        if self.hang:
            await asyncio.sleep(3600)
        return {"battery/V": Reading(51.2, source_time=1_700_000_000.5)}


async def get(site, *names):
    resp = await site.stubs("admin").points.GetPoints(spb.GetPointsRequest(names=list(names)))
    return {p.name: p for p in resp.points}


async def points_or_none(site, *names):
    try:
        return await get(site, *names)
    except grpc.aio.AioRpcError:
        return None


async def test_declares_publishes_and_reports_health(site):
    ext = Extension(site.env("battery"))
    ext.declare(
        PointSpec("battery/P", unit="W", period=1.0, description="storage power"),
        PointSpec("battery/n", kind="int"),
    )
    ext.add_device(Counter("counter", "battery/n"))
    await ext.start()
    try:
        got = await until(lambda: points_or_none(site, "battery/n", "battery/ext.state"))
        assert got["battery/n"].value.int_value >= 1
        assert got["battery/n"].writer == "spiffe://test-site/trusted/battery"
        listed = await site.stubs("admin").points.ListPoints(
            spb.ListPointsRequest(pattern="battery/P")
        )
        assert listed.points[0].unit == "W" and listed.points[0].owner.endswith("/battery")
        health_file = ext.env.health_file
        health = await until(
            lambda: (h := json.loads(health_file.read_text()))["core_connected"] and h, timeout=5
        )
        assert health["state"] == "running" and health["devices"]["counter"]["ok"]
        assert abs(health["ts"] - time.time()) < 5
    finally:
        await ext.stop()


async def test_a_dead_device_never_stalls_the_others(site):
    ext = Extension(site.env("battery"))
    hanging, counter = Hanging(), Counter("counter", "battery/n", interval=0.05)
    ext.add_device(hanging)
    ext.add_device(counter)
    await ext.start()
    try:
        got = await until(lambda: points_or_none(site, "battery/V"))
        assert got["battery/V"].quality == ppb.QUALITY_GOOD
        assert got["battery/V"].source_time.ToMilliseconds() == 1_700_000_000_500
        hanging.hang = True
        n0 = counter.n
        await asyncio.sleep(1.0)
        assert counter.n - n0 >= 12  # ~20 polls at 50 ms despite the hung device
        got = await get(site, "battery/V", "battery/n")
        assert got["battery/V"].quality == ppb.QUALITY_BAD  # last good value, marked BAD
        assert got["battery/V"].value.double_value == 51.2
        assert got["battery/n"].value.int_value >= n0 + 10
        # Back-off: far fewer tries than at the 0.1 s interval.
        calls = hanging.calls
        await asyncio.sleep(1.0)
        assert hanging.calls - calls <= 4
        state = dict((d.name, s) for d, s in ext.devices)["hanging"]
        assert not state.ok and state.last_error == "timed out"
        hanging.hang = False
        await until(lambda: dict((d.name, s) for d, s in ext.devices)["hanging"].ok, timeout=3)
    finally:
        await ext.stop()


async def test_setpoint_applied_clamped_rejected_and_expiry_fallback(site):
    ext = Extension(site.env("battery"))
    fallbacks = []

    async def fallback(req):
        fallbacks.append(req.id)

    @ext.on_setpoint("battery/P_set", on_expire=fallback)
    async def set_power(req):
        if req.value > 5000:
            return Clamped(5000.0, "inverter limit")
        if req.value < -9000:
            return Rejected("below discharge limit")
        return Applied()

    await ext.start()
    ctrl = site.stubs("ctrl")
    try:
        await until(lambda: ext.client.connected)

        async def request(value, seconds=30):
            r = await ctrl.control.RequestSetpoint(
                cpb.RequestSetpointRequest(
                    name="battery/P_set",
                    value=ppb.Value(double_value=value),
                    valid_for={"seconds": seconds},
                )
            )
            return r.setpoint.id

        async def status(sid):
            r = await ctrl.control.GetSetpoint(cpb.GetSetpointRequest(id=sid))
            return r.setpoint

        sid = await request(8000)
        sp = await until(lambda: _done(status(sid)))
        assert sp.status == cpb.SETPOINT_STATUS_CLAMPED
        assert sp.applied_value.double_value == 5000 and sp.reason == "inverter limit"
        sid = await request(-10000)
        sp = await until(lambda: _done(status(sid)))
        assert (sp.status, sp.reason) == (cpb.SETPOINT_STATUS_REJECTED, "below discharge limit")
        sid = await request(1000, seconds=1)
        sp = await until(lambda: _done(status(sid)))
        assert sp.status == cpb.SETPOINT_STATUS_APPLIED
        await until(lambda: sid in fallbacks, timeout=4)
        await asyncio.sleep(0.5)
        assert fallbacks.count(sid) == 1  # core's EXPIRED and the local timer: one fallback
    finally:
        await ext.stop()


async def _done(coro):
    sp = await coro
    return sp if sp.status != cpb.SETPOINT_STATUS_PENDING else None


async def test_survives_the_core_going_away(site):
    ext = Extension(site.env("battery"))
    ext.declare(PointSpec("battery/n", kind="int"))
    counter = Counter("counter", "battery/n", interval=0.05)
    ext.add_device(counter)
    seen = []
    ext.subscribe(["grid/*"], lambda u: seen.append((u.name, u.value)))
    grid = site.sync_stubs("grid")
    grid.points.WritePoints(
        spb.WritePointsRequest(
            samples=[ppb.PointSample(name="grid/P", value=ppb.Value(double_value=1.0))]
        )
    )
    await ext.start()
    try:
        await until(lambda: ("grid/P", 1.0) in seen)
        site.stop_core(signal.SIGKILL)
        await until(lambda: not ext.client.connected)
        n0 = counter.n
        await asyncio.sleep(1.0)
        assert counter.n > n0 + 10  # polling goes on while the core is away
        assert ext.client.pending >= 1  # latest value kept, not lost
        site.start()
        await until(lambda: ext.client.connected, timeout=15)
        got = await until(lambda: points_or_none(site, "battery/n"))
        assert got["battery/n"].value.int_value > n0 + 10  # flushed after recovery
        # The watch comes back by itself (after a core restart: a fresh snapshot).
        grid = site.sync_stubs("grid")
        grid.points.WritePoints(
            spb.WritePointsRequest(
                samples=[ppb.PointSample(name="grid/P", value=ppb.Value(double_value=2.0))]
            )
        )
        await until(lambda: ("grid/P", 2.0) in seen, timeout=15)
    finally:
        await ext.stop()


async def test_writing_another_devices_point_is_refused_dropped_and_audited(site):
    site.sync_stubs("grid").points.WritePoints(
        spb.WritePointsRequest(
            samples=[ppb.PointSample(name="grid/P", value=ppb.Value(double_value=1.0))]
        )
    )
    ext = Extension(site.env("battery"))
    await ext.start()
    try:
        await until(lambda: ext.client.connected)
        ext.publish("grid/P", 99.0)
        ext.publish("battery/ok", 1.0)
        got = await until(lambda: points_or_none(site, "battery/ok"))
        assert got["battery/ok"].value.double_value == 1.0
        assert ext.client.dropped == 1
        (p,) = (await get(site, "grid/P")).values()
        assert p.value.double_value != 99.0
        records = (
            await site.stubs("admin").admin.ListAuditRecords(
                apb.ListAuditRecordsRequest(
                    kind="denied", identity="spiffe://test-site/trusted/battery"
                )
            )
        ).audit_records
        assert any(r.point == "grid/P" and r.reason == "PERMISSION_NOT_GRANTED" for r in records)
    finally:
        await ext.stop()


def test_missing_or_foreign_certificate_is_a_clear_setup_error(site, tmp_path):
    creds = site.credentials("battery")
    missing = Credentials(creds.ca, tmp_path / "nope.crt", creds.key)
    with pytest.raises(SetupError, match="nope.crt.*smx pki issue battery"):
        check_certificate(missing, "battery", "trusted")
    other = TestSite({})
    other.provision()
    try:
        theirs = other.credentials("admin")
        foreign = Credentials(creds.ca, theirs.cert, theirs.key)
        with pytest.raises(SetupError, match="not issued by the site CA"):
            check_certificate(foreign, "battery", "trusted")
    finally:
        other.close()


def test_environment_without_variables_is_a_clear_setup_error():
    with pytest.raises(SetupError, match="SMX_NAME.*smx run"):
        Extension.from_environ({})


def test_expired_certificate_is_a_clear_setup_error(site, tmp_path):
    import datetime as dt

    from tests.support.certs import load_ca, make_cert, utcnow, write_pair

    ca_cert, ca_key = load_ca(site.home / "pki")
    cert, key = make_cert(
        ca_cert,
        ca_key,
        uris=["spiffe://test-site/trusted/battery"],
        not_before=utcnow() - dt.timedelta(days=10),
        not_after=utcnow() - dt.timedelta(days=1),
    )
    cert_path, key_path = write_pair(tmp_path, "old", cert, key)
    expired = Credentials(site.credentials("battery").ca, cert_path, key_path)
    with pytest.raises(SetupError, match="has expired.*--replace"):
        check_certificate(expired, "battery", "trusted")
    check_certificate(site.credentials("battery"), "battery", "trusted")  # the real one passes


async def test_device_falls_back_at_start_when_no_setpoint_is_in_force(site):
    # A setpoint that expired while the extension was down was never announced to it: at start
    # the SDK falls back wherever the core has nothing in force.
    ext = Extension(site.env("battery"))
    fallbacks = []

    async def fall_back(req):
        fallbacks.append(req.name)

    @ext.on_setpoint("battery/P_set", on_expire=fall_back)
    async def set_power(req):
        return Applied()

    await ext.start()
    try:
        await until(lambda: fallbacks == ["battery/P_set"], timeout=10)
    finally:
        await ext.stop()


def test_two_devices_with_one_name_are_refused(site):
    class Meter(PolledDevice):
        async def poll(self):
            return {}

    ext = Extension(site.env("battery"))
    ext.add_device(Meter())
    with pytest.raises(ValueError, match="two devices named 'device'"):
        ext.add_device(Meter())
