"""Revocation reaches every open stream, idle or not: a watch with a long heartbeat, a
Health.Watch and a reflection stream of a revoked client end within about a second of
`smx pki revoke`, with the status and audited refusal a call would get. A CRL put back with a
lower CRLNumber does not revive the certificate."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from smx.client import error_reason
from smx.v1 import identity_service_pb2 as ipb
from smx.v1 import point_service_pb2 as spb
from tests.contract.audit_log import audit_records
from trusted.pki import SiteCA

GUI = "spiffe://test-site/trusted/gui"
WATCH = "/smx.v1.PointService/WatchPoints"
HEALTH = "/grpc.health.v1.Health/Watch"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


async def ended(call) -> tuple[float, grpc.StatusCode, str | None]:
    """Read `call` until it fails; when (monotonic), with what code and ErrorInfo reason."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        while True:
            await call.read()
    return time.monotonic(), info.value.code(), error_reason(info.value)


async def test_idle_watch_health_and_reflection_streams_end_on_revocation(site, core):
    channel = site.creds("gui").aio_channel(site.target)
    gui = site.stubs("gui")

    # An idle watch: nothing matches, the heartbeat is a minute away.
    watch = gui.points.WatchPoints(
        spb.WatchPointsRequest(patterns=["nothing/*"], heartbeat_interval=Duration(seconds=60))
    )
    assert (await watch.read()).snapshot
    health = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    assert (await health.read()).status == health_pb2.HealthCheckResponse.SERVING
    # A reflection stream whose client keeps it open without asking anything more.
    more = asyncio.Event()

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        await more.wait()

    reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(requests())
    assert (await reflect.read()).list_services_response.service
    # The admin's stream is not touched.
    admin_watch = site.stubs("admin").points.WatchPoints(
        spb.WatchPointsRequest(patterns=["nothing/*"], heartbeat_interval=Duration(seconds=60))
    )
    assert (await admin_watch.read()).snapshot

    readers = [asyncio.ensure_future(ended(c)) for c in (watch, health, reflect)]
    await asyncio.sleep(0.3)
    assert not any(r.done() for r in readers)
    revoked_at = time.monotonic()
    SiteCA.load(site.home / "pki").revoke("gui")
    results = await asyncio.wait_for(asyncio.gather(*readers), timeout=5)
    for when, code, reason in results:
        assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "CERTIFICATE_REVOKED")
        assert when - revoked_at < 1.5
    more.set()

    # The streams' places are given back, the refusals audited, other clients unaffected.
    # (the handlers' clean-up runs just after the status went out)
    for _ in range(50):
        if core.state.gate.clients[GUI].open_streams == 0:
            break
        await asyncio.sleep(0.02)
    assert core.state.gate.clients[GUI].open_streams == 0
    records = await audit_records(site.stubs("admin"), kind="denied", identity=GUI)
    assert {(r.method, r.reason) for r in records} == {
        (m, "CERTIFICATE_REVOKED") for m in (WATCH, HEALTH, REFLECTION)
    }
    assert admin_watch.done() is False
    admin_watch.cancel()


async def test_an_older_crl_put_back_does_not_revive_a_revoked_client(site, core):
    pki = site.home / "pki"
    before = (pki / "crl.pem").read_bytes()
    gui = site.stubs("gui")
    assert (await gui.identity.WhoAmI(ipb.WhoAmIRequest(), timeout=5)).identity == GUI
    SiteCA.load(pki).revoke("gui")
    await asyncio.sleep(0.6)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await gui.identity.WhoAmI(ipb.WhoAmIRequest(), timeout=5)  # the new list is in force
    assert error_reason(info.value) == "CERTIFICATE_REVOKED"
    (pki / "crl.pem").write_bytes(before)  # validly signed, lower CRLNumber
    await asyncio.sleep(0.6)
    for stubs in (gui, site.stubs("gui")):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stubs.identity.WhoAmI(ipb.WhoAmIRequest(), timeout=5)
        assert error_reason(info.value) == "CERTIFICATE_REVOKED"
    assert core.state.gate.revocations.revoked_serials
    assert core.state.gate.revocations.version == 1
