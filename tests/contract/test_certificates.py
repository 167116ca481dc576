"""Certificate refusals, each as a client sees it: no certificate, another CA, expired (at the
handshake and during an open connection), revoked on a running core, zero or several URI SANs,
another site's identity."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest

from smx.client import CHANNEL_OPTIONS, Credentials, Stubs, error_reason
from smx.v1 import identity_service_pb2 as ipb
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb
from tests.contract.audit_log import audit_records
from tests.support.certs import load_ca, make_cert, make_other_ca, utcnow, write_pair
from trusted.pki import SiteCA


def stubs_for(site, cert_pem: bytes, key_pem: bytes, name: str = "odd") -> Stubs:
    cert, key = write_pair(site.home / "odd", name, cert_pem, key_pem)
    return Stubs(Credentials(site.home / "pki" / "ca.crt", cert, key).aio_channel(site.target))


async def whoami(stubs: Stubs):
    return await stubs.identity.WhoAmI(ipb.WhoAmIRequest(), timeout=5)


def window(days: float = 1) -> dict:
    now = utcnow()
    return {"not_before": now - dt.timedelta(minutes=5), "not_after": now + dt.timedelta(days=days)}


async def test_valid_certificate_is_accepted(site, core):
    me = await whoami(site.stubs("meter"))
    assert me.identity == "spiffe://test-site/trusted/meter"
    assert me.roles == ["trusted-extension"]


async def test_no_client_certificate_is_refused_in_the_handshake(site, core):
    creds = grpc.ssl_channel_credentials(root_certificates=(site.home / "pki/ca.crt").read_bytes())
    stubs = Stubs(grpc.aio.secure_channel(site.target, creds, options=CHANNEL_OPTIONS))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await whoami(stubs)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_certificate_from_another_ca_is_refused(site, core):
    other_cert, other_key = make_other_ca("test-site")
    cert, key = make_cert(
        other_cert, other_key, uris=["spiffe://test-site/trusted/admin"], **window()
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await whoami(stubs_for(site, cert, key))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_expired_certificate_is_refused_in_the_handshake(site, core):
    ca_cert, ca_key = load_ca(site.home / "pki")
    now = utcnow()
    cert, key = make_cert(
        ca_cert,
        ca_key,
        uris=["spiffe://test-site/trusted/admin"],
        not_before=now - dt.timedelta(days=10),
        not_after=now - dt.timedelta(days=1),
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await whoami(stubs_for(site, cert, key))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_certificate_expiring_during_an_open_connection_is_refused(site, core):
    ca_cert, ca_key = load_ca(site.home / "pki")
    now = utcnow()
    # X.509 times have one-second resolution.
    cert, key = make_cert(
        ca_cert,
        ca_key,
        uris=["spiffe://test-site/trusted/admin"],
        not_before=now - dt.timedelta(minutes=1),
        not_after=now + dt.timedelta(seconds=2),
    )
    stubs = stubs_for(site, cert, key)
    assert (await whoami(stubs)).identity.endswith("/admin")
    await asyncio.sleep(2.5)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await whoami(stubs)  # same channel, same TLS session
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(info.value) == "CERTIFICATE_EXPIRED"


@pytest.mark.parametrize(
    "uris",
    [
        [],
        ["spiffe://test-site/trusted/admin", "spiffe://test-site/trusted/meter"],
        ["https://test-site/trusted/admin"],
        ["spiffe://test-site/root/admin"],
    ],
)
async def test_zero_several_or_malformed_uri_sans_are_refused(site, core, uris):
    ca_cert, ca_key = load_ca(site.home / "pki")
    cert, key = make_cert(ca_cert, ca_key, uris=uris, dns=[] if uris else ["client"], **window())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await whoami(stubs_for(site, cert, key))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(info.value) == "IDENTITY_INVALID"
    denied = await audit_records(site.stubs("admin"), kind="denied")
    assert any(r.reason == "IDENTITY_INVALID" and r.method.endswith("WhoAmI") for r in denied)


async def test_identity_of_another_site_is_refused(site, core):
    ca_cert, ca_key = load_ca(site.home / "pki")
    cert, key = make_cert(ca_cert, ca_key, uris=["spiffe://usm-9999/trusted/admin"], **window())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await whoami(stubs_for(site, cert, key))
    assert error_reason(info.value) == "WRONG_SITE"


async def test_revocation_takes_effect_on_a_running_core_and_open_connection(site, core):
    gui = site.stubs("gui")
    stream = gui.points.WatchPoints(spb.WatchPointsRequest())
    assert (await stream.read()).snapshot
    assert (await whoami(gui)).identity.endswith("/gui")
    SiteCA.load(site.home / "pki").revoke("gui")
    await asyncio.sleep(0.6)  # the core re-reads a changed CRL at most every 0.5 s
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await whoami(gui)  # same open channel
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(info.value) == "CERTIFICATE_REVOKED"
    with pytest.raises(grpc.aio.AioRpcError):
        await whoami(site.stubs("gui"))  # and a new connection
    # Other clients are unaffected; the refusal is audited.
    records = await audit_records(
        site.stubs("admin"), kind="denied", identity="spiffe://test-site/trusted/gui"
    )
    # The call and the watch it had open (ended by the core's revocation timer) are refused.
    assert {r.reason for r in records} == {"CERTIFICATE_REVOKED"}
    # The watch ends instead of flowing on.
    await site.stubs("meter").points.WritePoints(
        spb.WritePointsRequest(
            samples=[ppb.PointSample(name="meter/P", value=ppb.Value(double_value=1))]
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        while True:
            await asyncio.wait_for(stream.read(), 5)
    assert error_reason(info.value) == "CERTIFICATE_REVOKED"
