"""Billing snapshots (`smm/Ap.bill01`, `Ap_T1.bill07`, mirrored `usm1/smm/Ap.bill01`) are the
meter owner's data: through the real core, with real certificates and the shipped default
policy, the untrusted agent's role reads the live values and indexes but no snapshot, by any
read method; a site grants a snapshot to an agent only by naming it in that agent's binding."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from smx.v1 import identity_service_pb2 as ipb
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb
from tests.contract.audit_log import audit_records
from tests.contract.calls import refused
from tests.support.site import Site
from trusted.core.server import Core

pytestmark = pytest.mark.asyncio(loop_scope="module")

# name -> (domain, roles, extra read patterns of its binding)
CLIENTS: dict[str, tuple[str, list[str], list[str]]] = {
    "admin": ("trusted", ["admin"], []),
    "smm": ("trusted", ["trusted-extension"], []),  # the PCC meter: writes smm/**
    "usm1": ("trusted", ["trusted-extension"], []),  # a mirrored remote USM: writes usm1/**
    "lessag": ("untrusted", ["untrusted-agent"], []),
    "billing": ("untrusted", ["untrusted-agent"], ["smm/Ap.bill01"]),  # the site's explicit grant
    "gui": ("trusted", ["gui"], []),
}
BILLING = ["smm/Ap.bill01", "smm/Ap.bill02", "smm/Ap_T1.bill07", "usm1/smm/Ap.bill01"]
LIVE = ["smm/Ap", "smm/Ap_T1", "smm/P", "usm1/smm/Ap", "usm1/smm/P"]
LESSAG = "spiffe://test-site/untrusted/lessag"


async def write_points(stubs, names: list[str], value: float) -> None:
    await stubs.points.WritePoints(
        spb.WritePointsRequest(
            samples=[ppb.PointSample(name=n, value=ppb.Value(double_value=value)) for n in names]
        )
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world():
    site = Site(CLIENTS)
    core = Core(site.config())
    await core.start()
    stubs = {name: site.stubs(name) for name in CLIENTS}
    for owner in ("smm", "usm1"):
        names = [n for n in BILLING + LIVE if n.startswith(f"{owner}/")]
        await write_points(stubs[owner], names, 1234.5)
    await core.state.history.flush()
    yield site, core, stubs
    await core.stop(grace=0.1)
    site.cleanup()


@pytest.mark.parametrize("point", BILLING)
async def test_get_points_and_history_of_a_snapshot_are_refused_and_audited(world, point):
    _, _, stubs = world
    lessag = stubs["lessag"].points
    for call in (
        lessag.GetPoints(spb.GetPointsRequest(names=[point])),
        lessag.ReadHistory(spb.ReadHistoryRequest(names=[point])),
    ):
        assert (await refused(call))[1] == "PERMISSION_NOT_GRANTED"
    records = await audit_records(stubs["admin"], kind="denied", identity=LESSAG)
    assert {r.method.rsplit("/", 1)[1] for r in records if r.point == point} == {
        "GetPoints",
        "ReadHistory",
    }


async def test_the_live_values_and_indexes_stay_readable(world):
    _, _, stubs = world
    got = await stubs["lessag"].points.GetPoints(spb.GetPointsRequest(names=LIVE))
    assert [p.name for p in got.points] == LIVE
    stream = stubs["lessag"].points.ReadHistory(spb.ReadHistoryRequest(names=LIVE))
    assert {r.name async for r in stream if r.samples} == set(LIVE)
    me = await stubs["lessag"].identity.WhoAmI(ipb.WhoAmIRequest())
    assert list(me.roles) == ["untrusted-agent"]


async def test_list_and_watch_leave_the_snapshots_out(world):
    _, _, stubs = world
    lessag = stubs["lessag"].points
    listed = {m.name for m in (await lessag.ListPoints(spb.ListPointsRequest(pattern="**"))).points}
    assert listed >= set(LIVE) and not listed & set(BILLING)
    stream = lessag.WatchPoints(spb.WatchPointsRequest(patterns=["**"]))
    try:
        snapshot = await stream.read()
        names = {p.name for p in snapshot.points}
        assert names >= set(LIVE) and not names & set(BILLING)
        # A new snapshot taken while the agent watches is not sent; the live value is.
        await write_points(stubs["smm"], ["smm/Ap.bill03", "smm/Ap.bill01"], 99.0)
        await write_points(stubs["smm"], ["smm/P"], 42.0)
        seen: set[str] = set()
        while "smm/P" not in seen:
            msg = await asyncio.wait_for(stream.read(), 5)
            seen |= {p.name for p in msg.points}
        assert not any(".bill" in n for n in seen)
    finally:
        stream.cancel()


async def test_trusted_readers_and_an_explicit_grant_still_read_snapshots(world):
    _, _, stubs = world
    got = await stubs["gui"].points.GetPoints(spb.GetPointsRequest(names=BILLING))
    assert [p.name for p in got.points] == BILLING
    # The site named smm/Ap.bill01 in this agent's binding: that one, no other snapshot.
    billing = stubs["billing"].points
    got = await billing.GetPoints(spb.GetPointsRequest(names=["smm/Ap.bill01", "smm/Ap"]))
    assert [p.name for p in got.points] == ["smm/Ap.bill01", "smm/Ap"]
    for point in ("smm/Ap.bill02", "usm1/smm/Ap.bill01"):
        call = billing.GetPoints(spb.GetPointsRequest(names=[point]))
        assert (await refused(call))[1] == "PERMISSION_NOT_GRANTED"
