"""Transports and standard services: the optional TCP listener with the same mTLS, health, and
server reflection (what grpcurl uses)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from extensions.sdk.testing import free_port
from smx.client import Stubs, error_reason
from smx.v1 import identity_service_pb2 as ipb
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb
from trusted.core.server import Core


async def test_tcp_listener_serves_the_same_api_with_the_same_mtls(site):
    port = free_port()
    core = Core(site.config(tcp=f"127.0.0.1:{port}"))
    await core.start()
    try:
        tcp = Stubs(site.creds("meter").aio_channel(f"127.0.0.1:{port}"))
        me = await tcp.identity.WhoAmI(ipb.WhoAmIRequest())
        assert me.identity == "spiffe://test-site/trusted/meter"
        await tcp.points.WritePoints(
            spb.WritePointsRequest(
                samples=[ppb.PointSample(name="meter/P", value=ppb.Value(double_value=7))]
            )
        )
        # Same data over the socket, same rights over TCP.
        got = await site.stubs("gui").points.GetPoints(spb.GetPointsRequest(names=["meter/P"]))
        assert got.points[0].value.double_value == 7
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await tcp.points.WritePoints(
                spb.WritePointsRequest(
                    samples=[ppb.PointSample(name="ess/P", value=ppb.Value(double_value=7))]
                )
            )
        assert error_reason(info.value) == "PERMISSION_NOT_GRANTED"
        # No client certificate: refused in the handshake on TCP too.
        creds = grpc.ssl_channel_credentials((site.home / "pki/ca.crt").read_bytes())
        bare = grpc.aio.secure_channel(
            f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "smxcore")]
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await Stubs(bare).identity.WhoAmI(ipb.WhoAmIRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await core.stop(grace=0.1)


async def test_health_reports_serving(site, core):
    channel = site.creds("gui").aio_channel(site.target)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "smx.v1.PointService", "smx.v1.ControlService"):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_and_describes_the_api(site, core):
    channel = site.creds("gui").aio_channel(site.target)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask(**kw):
        async for resp in stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(**kw)])
        ):
            return resp

    listed = await ask(list_services="")
    names = {s.name for s in listed.list_services_response.service}
    assert {
        "smx.v1.PointService",
        "smx.v1.ControlService",
        "smx.v1.IdentityService",
        "smx.v1.AdminService",
        "grpc.health.v1.Health",
    } <= names
    described = await ask(file_containing_symbol="smx.v1.PointService")
    assert described.file_descriptor_response.file_descriptor_proto
