"""smx.sdk.Client against a real core (its own process, real mTLS over a Unix socket): reading,
listing and watching points with resume, rights from WhoAmI, buffered writes, and setpoint
outcomes followed on the core's stream instead of polling."""

from __future__ import annotations

import asyncio
import math
import time

import grpc
import pytest

from extensions.sdk import Applied, Clamped, Extension, PointSpec, Rejected
from extensions.sdk.testing import TestSite, until
from smx.client import Credentials
from smx.sdk import Client, CoreUnavailable, HistorySample, SetpointState
from smx.timestamps import ts_of
from smx.v1 import point_pb2
from smx.v1 import point_service_pb2 as pb
from smx.values import to_value

CLIENTS = {
    "meter": ("trusted", ["trusted-extension"], []),
    "battery": ("trusted", ["trusted-extension"], []),
    "gui": ("untrusted", ["gui"], []),
    "ctrl": ("untrusted", ["untrusted-agent"], []),
}


@pytest.fixture(scope="module")
def site():
    with TestSite(CLIENTS) as s:
        yield s


def sample(name: str, value: float) -> point_pb2.PointSample:
    return point_pb2.PointSample(
        name=name, value=to_value(value), source_time=ts_of(), quality=point_pb2.QUALITY_GOOD
    )


async def test_get_list_and_watch_with_resume(site):
    seen: list[tuple[str, float]] = []
    async with site.client("meter") as meter, site.client("gui") as gui:
        meter.declare([PointSpec("meter/P", unit="W", period=5.0, description="PCC power")])
        meter.publish_sample(sample("meter/P", 1500.0))
        got = await until(lambda: client_points(gui, "meter/P"))
        p = got["meter/P"]
        assert (p.value, p.unit, p.quality) == (1500.0, "W", "GOOD")
        assert p.writer == "spiffe://test-site/trusted/meter"
        (spec,) = await gui.list_points("meter/*")
        assert (spec.unit, spec.period, spec.description) == ("W", 5.0, "PCC power")
        assert spec.owner == "spiffe://test-site/trusted/meter"

        gui.watch(["meter/*"], lambda u: seen.append((u.name, u.value)))
        await until(lambda: ("meter/P", 1500.0) in seen)  # the snapshot
        meter.publish_sample(sample("meter/P", 1600.0))
        await until(lambda: ("meter/P", 1600.0) in seen)  # then the changes

        # The core restarts: both clients reconnect by themselves, the meter declares its
        # point again, the watch starts over from a snapshot.
        site.restart_core()
        meter.publish_sample(sample("meter/P", 1700.0))
        await until(lambda: ("meter/P", 1700.0) in seen, timeout=20)
        (spec,) = await gui.list_points("meter/*")
        assert spec.unit == "W"


async def client_points(client: Client, *names: str):
    """The points by name once all exist and are readable, else None (for `until`)."""
    try:
        got = await client.get_points(names)
    except grpc.aio.AioRpcError:
        return None
    return got if len(got) == len(names) else None


async def test_rights_come_from_whoami(site):
    async with site.client("gui") as gui, site.client("ctrl") as ctrl:
        assert gui.identity == "spiffe://test-site/untrusted/gui"
        assert gui.may("read", "battery/P") and not gui.may("write", "gui/P")
        assert ctrl.may("request", "battery/P_set") and not ctrl.may("read", "battery/P_set")
        assert ctrl.may("write", "ctrl/ext.state")  # its own health points only
        assert not ctrl.may("write", "ctrl/P") and not ctrl.may("write", "battery/ext.state")


async def test_a_core_that_never_answers_is_core_unavailable(site, tmp_path):
    client = Client(f"unix://{tmp_path}/none.sock", site.credentials("gui"))
    with pytest.raises(CoreUnavailable, match="none.sock within 0.5 s"):
        async with asyncio.timeout(5):
            await client.start()
            await client.wait_connected(0.5)
    await client.close()
    with pytest.raises(FileNotFoundError, match="certificate not found"):
        await Client(
            site.target, Credentials(tmp_path / "a", tmp_path / "b", tmp_path / "c")
        ).start()


async def test_outcomes_are_followed_on_the_stream_not_polled(site):
    owner = Extension(site.env("battery"))

    @owner.on_setpoint("battery/P_set", timeout=5.0)
    async def set_power(req):
        await asyncio.sleep(1.5)  # a slow device: an agent that polled would ask many times
        if req.value > 5000:
            return Clamped(5000.0, "inverter limit")
        if req.value < -9000:
            return Rejected("below the discharge limit")
        return Applied()

    await owner.start()
    ctrl = site.client("ctrl")
    changes: list[SetpointState] = []
    ctrl.on_outcome(changes.append)
    await ctrl.start()
    await ctrl.wait_connected(10)
    gets = _count_get_setpoint(ctrl)
    try:
        sp = await until(lambda: _request_or_none(ctrl, 8000.0, valid_for=2))
        assert sp.status == "PENDING" and sp.requester == "spiffe://test-site/untrusted/ctrl"
        done = await ctrl.outcome(sp.id, timeout=10)
        assert (done.status, done.applied_value, done.reason) == (
            "CLAMPED",
            5000.0,
            "inverter limit",
        )
        # At most one look-up by id, once, when the stream opened after the request: no polling.
        assert gets() <= 1
        expired = await until(lambda: _state_of(changes, sp.id, "EXPIRED"), timeout=10)
        assert not expired.in_force()

        refused = await ctrl.request_setpoint("battery/P_set", -10000.0, valid_for=30)
        assert (await ctrl.outcome(refused.id, timeout=10)).reason == "below the discharge limit"
        newer = await ctrl.request_setpoint("battery/P_set", 100.0, valid_for=30)
        await ctrl.request_setpoint("battery/P_set", 200.0, valid_for=30)
        assert (await ctrl.outcome(newer.id, timeout=10)).status in ("APPLIED", "SUPERSEDED")
        with pytest.raises(TimeoutError):
            await ctrl.outcome("no-such-setpoint", timeout=0.3)
        assert gets() <= 1
    finally:
        await ctrl.close()
        await owner.stop()


def _count_get_setpoint(client: Client):
    control = client.stubs.control
    real = control.GetSetpoint
    calls = []

    def counting(*args, **kwargs):
        calls.append(time.monotonic())
        return real(*args, **kwargs)

    control.GetSetpoint = counting
    return lambda: len(calls)


async def _request_or_none(client: Client, value: float, valid_for: float):
    try:  # the owner declares its setpoint point as it connects
        return await client.request_setpoint("battery/P_set", value, valid_for)
    except grpc.aio.AioRpcError:
        return None


def _state_of(changes: list[SetpointState], setpoint_id: str, status: str):
    return next((c for c in changes if c.id == setpoint_id and c.status == status), None)


async def test_a_point_added_while_a_declaration_is_in_flight_is_declared_before_its_value(
    site, monkeypatch
):
    """The mirror case: new points arrive (declared, then published) while the declaration of
    earlier ones is still in flight; their values must not reach the core before their own
    declaration, or the core creates them without unit or description."""
    async with site.client("meter") as meter, site.client("gui") as gui:
        declarations = meter._declarations
        calls: list[tuple[set[str], asyncio.Event]] = []
        declare = declarations._call

        async def gated(specs):
            gate = asyncio.Event()
            calls.append(({s.name for s in specs}, gate))
            await gate.wait()
            await declare(specs)

        monkeypatch.setattr(declarations, "_call", gated)
        meter.declare([PointSpec("meter/inflight/A", unit="W")])
        meter.publish_sample(sample("meter/inflight/A", 1.0))
        await until(lambda: calls)  # A's declaration is in flight, held
        meter.declare([PointSpec("meter/inflight/B", unit="Wh", description="added meanwhile")])
        meter.publish_sample(sample("meter/inflight/B", 2.0))
        calls[0][1].set()

        # B's own declaration is the next call, and B's value waits for it.
        await until(lambda: len(calls) >= 2)
        assert calls[1][0] == {"meter/inflight/B"}
        a = await until(lambda: client_points(gui, "meter/inflight/A"))
        assert a["meter/inflight/A"].unit == "W"
        assert await client_points(gui, "meter/inflight/B") is None
        assert meter.pending == 1

        calls[1][1].set()
        got = await until(lambda: client_points(gui, "meter/inflight/B"))
        assert (got["meter/inflight/B"].value, got["meter/inflight/B"].unit) == (2.0, "Wh")


async def test_read_history_raw_and_downsampled(site):
    t0 = (int(time.time()) // 60 - 2) * 60  # the start of a whole minute, two minutes ago
    async with site.client("meter") as meter, site.client("gui") as gui, site.client("ctrl") as c:
        meter.declare([PointSpec("meter/Ap", unit="Wh", period=60.0)])
        await meter.wait_connected(10)
        for i, value in enumerate((10.0, 12.5, 11.0)):  # one write each: the history keeps all
            s = point_pb2.PointSample(
                name="meter/Ap",
                value=to_value(value),
                source_time=ts_of(t0 + 10 * i),
                quality=point_pb2.QUALITY_GOOD,
            )
            await until(lambda s=s: written(meter, s))

        raw = await until(lambda: all_stored(gui, t0), timeout=15)  # at the next flush
        assert [(s.name, s.time, s.value, s.quality, s.count) for s in raw] == [
            ("meter/Ap", t0 + 0.0, 10.0, "GOOD", 1),
            ("meter/Ap", t0 + 10.0, 12.5, "GOOD", 1),
            ("meter/Ap", t0 + 20.0, 11.0, "GOOD", 1),
        ]
        assert [s.value async for s in gui.read_history(["meter/Ap"], t0 + 10, t0 + 20)] == [12.5]
        (minute,) = [
            s async for s in gui.read_history(["meter/Ap"], t0, bucket=60, aggregation="max")
        ]
        assert (minute.time, minute.value, minute.count) == (t0, 12.5, 3)

        with pytest.raises(TypeError, match="names: a list of point names, not the string"):
            [s async for s in gui.read_history("meter/Ap", t0)]
        with pytest.raises(TypeError, match="bucket: a finite number of seconds, got '1m'"):
            [s async for s in gui.read_history(["meter/Ap"], t0, bucket="1m")]  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="start: a finite number of seconds, got nan"):
            [s async for s in gui.read_history(["meter/Ap"], math.nan)]
        assert [s async for s in gui.read_history(["meter/nope"], t0)] == []  # no history
        with pytest.raises(ValueError, match="aggregation 'mean': one of min, max, avg, last"):
            [s async for s in gui.read_history(["meter/Ap"], t0, bucket=60, aggregation="mean")]
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # no read right on it
            [s async for s in c.read_history(["meter/Ap.bill01"], t0)]
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def written(client: Client, sample: point_pb2.PointSample) -> bool:
    try:
        await client.stubs.points.WritePoints(pb.WritePointsRequest(samples=[sample]), timeout=5)
    except grpc.aio.AioRpcError:
        return False  # not declared yet
    return True


async def all_stored(client: Client, start: float) -> list[HistorySample] | None:
    got = [s async for s in client.read_history(["meter/Ap"], start)]
    return got if len(got) == 3 else None
