"""A policy reload that takes a stream's verb from its caller ends the stream, as a revocation
does: before, the stream stayed open with heartbeats and kept its place forever (found by the
attack review). A caller that keeps the verb keeps its stream."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from smx.client import error_reason
from smx.v1 import admin_service_pb2 as apb
from smx.v1 import control_service_pb2 as cpb
from smx.v1 import point_service_pb2 as spb
from tests.support.site import DEFAULT_CLIENTS, Site
from trusted.core.server import Core


async def _ended(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async with asyncio.timeout(5):
            while True:
                await call.read()  # type: ignore[attr-defined]
    return info.value


async def test_a_reload_that_unbinds_a_caller_ends_its_streams(site: Site, core: Core) -> None:
    gui, lessag, admin = site.stubs("gui"), site.stubs("lessag"), site.stubs("admin")
    hb = {"seconds": 0, "nanos": 200_000_000}  # heartbeats keep an idle stream talking
    watch = gui.points.WatchPoints(spb.WatchPointsRequest(heartbeat_interval=hb))
    outcomes = lessag.control.WatchSetpointOutcomes(
        cpb.WatchSetpointOutcomesRequest(heartbeat_interval=hb)
    )
    kept = admin.points.WatchPoints(spb.WatchPointsRequest(heartbeat_interval=hb))
    for call in (watch, outcomes, kept):
        assert (await call.read()).snapshot

    site.clients = {
        name: (domain, [] if name in ("gui", "lessag") else roles, reads)
        for name, (domain, roles, reads) in DEFAULT_CLIENTS.items()
    }
    site.write_policy()
    t0 = time.monotonic()
    await admin.admin.ReloadPolicy(apb.ReloadPolicyRequest())

    for call in (watch, outcomes):
        err = await _ended(call)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
        assert error_reason(err) == "PERMISSION_NOT_GRANTED"
    assert time.monotonic() - t0 < 2.0
    # Their places are free again, and the refusals are audited.
    assert core.state.gate.clients["spiffe://test-site/trusted/gui"].open_streams == 0
    records = await admin.admin.ListAuditRecords(
        apb.ListAuditRecordsRequest(kind="denied", identity="spiffe://test-site/trusted/gui")
    )
    assert any(r.method.endswith("WatchPoints") for r in records.audit_records)
    # The admin still holds `read`: its stream goes on.
    msg = await kept.read()
    assert msg.heartbeat or msg.points
    kept.cancel()
