"""Central authorization: the one method table, and what a client observes when a method has no
entry in it, or when it holds the method's verb on no point at all."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor import ServiceDescriptor

from smx.client import Stubs, error_reason, unix_target
from smx.v1 import (
    admin_service_pb2,
    control_service_pb2,
    identity_service_pb2,
    point_service_pb2,
)
from smx.v1 import identity_service_pb2 as ipb
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb
from tests.contract.audit_log import audit_records
from trusted.core.rpc import service_handler
from trusted.core.server import Core
from trusted.core.services.identity import IdentityService
from trusted.core.services.points import PointService
from trusted.policy import METHOD_VERBS, NO_VERB, VERBS

SERVICES: list[ServiceDescriptor] = [
    module.DESCRIPTOR.services_by_name[name]
    for module, name in (
        (point_service_pb2, "PointService"),
        (control_service_pb2, "ControlService"),
        (identity_service_pb2, "IdentityService"),
        (admin_service_pb2, "AdminService"),
    )
]
ADMIN = "spiffe://test-site/trusted/admin"


def test_every_rpc_has_exactly_one_entry_and_every_entry_an_rpc():
    served = [f"/{s.full_name}/{m.name}" for s in SERVICES for m in s.methods]
    assert len(served) == len(set(served))
    assert set(served) == set(METHOD_VERBS), {
        "without entry": set(served) - set(METHOD_VERBS),
        "entry without rpc": set(METHOD_VERBS) - set(served),
    }
    assert set(METHOD_VERBS.values()) <= {*VERBS, NO_VERB}
    # The only method any authenticated client may call is WhoAmI; admin covers AdminService.
    assert [m for m, v in METHOD_VERBS.items() if v == NO_VERB] == [
        "/smx.v1.IdentityService/WhoAmI"
    ]
    assert {m for m, v in METHOD_VERBS.items() if v == "admin"} == {
        f"/smx.v1.AdminService/{m.name}" for m in SERVICES[3].methods
    }


async def serve_beside(core: Core, socket, service, impl, verbs) -> grpc.aio.Server:
    """The core's own handler, gate and mTLS, on another socket, with another method table."""
    ca = core.state.ca
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [service_handler(service, impl, core.state.gate, core.config.max_message_bytes, verbs)]
    )
    creds = grpc.ssl_server_credentials(
        [(ca.server_key_path.read_bytes(), ca.server_cert_path.read_bytes())],
        root_certificates=ca.ca_cert_path.read_bytes(),
        require_client_auth=True,
    )
    server.add_secure_port(f"unix://{socket}", creds)
    await server.start()
    return server


async def test_a_method_without_entry_is_refused_to_everyone_and_audited(site, core):
    # A table that forgot WhoAmI and WatchPoints: they must not be served, not even to admin.
    verbs = {
        m: v
        for m, v in METHOD_VERBS.items()
        if m not in ("/smx.v1.IdentityService/WhoAmI", "/smx.v1.PointService/WatchPoints")
    }
    beside = site.home / "beside.sock"
    identity = serve_beside(core, beside, SERVICES[2], IdentityService(core.state), verbs)
    points = serve_beside(
        core, site.home / "points.sock", SERVICES[0], PointService(core.state), verbs
    )
    servers = [await identity, await points]
    try:
        admin = Stubs(site.creds("admin").aio_channel(unix_target(beside)))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin.identity.WhoAmI(ipb.WhoAmIRequest())
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_reason(info.value) == "METHOD_UNGUARDED"

        gui = Stubs(site.creds("gui").aio_channel(unix_target(site.home / "points.sock")))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await gui.points.WatchPoints(spb.WatchPointsRequest()).read()
        assert error_reason(info.value) == "METHOD_UNGUARDED"
        # The methods that have an entry are served as usual.
        await site.stubs("meter").points.WritePoints(
            spb.WritePointsRequest(
                samples=[ppb.PointSample(name="meter/P", value=ppb.Value(double_value=1))]
            )
        )
        got = await gui.points.GetPoints(spb.GetPointsRequest(names=["meter/P"]))
        assert got.points[0].value.double_value == 1
    finally:
        for server in servers:
            await server.stop(0)
    denied = await audit_records(site.stubs("admin"), kind="denied")
    assert {(r.identity, r.method) for r in denied if r.reason == "METHOD_UNGUARDED"} == {
        (ADMIN, "/smx.v1.IdentityService/WhoAmI"),
        ("spiffe://test-site/trusted/gui", "/smx.v1.PointService/WatchPoints"),
    }


async def test_a_caller_without_the_verb_anywhere_is_refused_before_the_request_is_read(site, core):
    # gui may write nothing: refused as such even though its request is malformed, so the
    # handler (which would answer INVALID_ARGUMENT) never ran.
    channel = site.creds("gui").aio_channel(site.target)
    call = channel.unary_unary("/smx.v1.PointService/WritePoints")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(b"\xff\xff\xff")
    assert error_reason(info.value) == "PERMISSION_NOT_GRANTED"
    assert "may not write" in (info.value.details() or "")
    # With the verb on some point, the same bytes reach the parser.
    meter = site.creds("meter").aio_channel(site.target)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await meter.unary_unary("/smx.v1.PointService/WritePoints")(b"\xff\xff\xff")
    assert error_reason(info.value) == "INVALID_ARGUMENT"


async def test_whoami_needs_no_verb(site, core):
    me = await site.stubs("nobody").identity.WhoAmI(ipb.WhoAmIRequest())
    assert me.identity == "spiffe://test-site/trusted/nobody" and not me.roles
    assert me.certificate_expire_time.seconds > 0
