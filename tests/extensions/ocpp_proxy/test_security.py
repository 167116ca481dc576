"""OCPP security profiles at the proxy's door: 1 (Basic auth over ws), 2 (Basic auth over
TLS), 3 (TLS with a client certificate whose CN is the charge point id); and Basic auth
towards the SCADA."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from extensions.ocpp_proxy.config import ChargePointConfig

from .support import RawScada, charger, config, proxy

pytestmark = pytest.mark.timeout(30)


def _cert(cn: str, issuer: tuple | None, server: bool = False):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if server:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        b = b.add_extension(san, critical=False)
    cert = b.sign(issuer[1] if issuer else key, hashes.SHA256())
    return cert, key


def _write(dir: Path, name: str, cert, key) -> tuple[Path, Path]:
    c, k = dir / f"{name}.crt", dir / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return c, k


@pytest.fixture
def pki(tmp_path):
    ca = _cert("test-ca", None)
    ca_crt, _ = _write(tmp_path, "ca", *ca)
    server = _write(tmp_path, "server", *_cert("proxy", ca, server=True))
    good = _write(tmp_path, "cp1", *_cert("CP1", ca))
    other = _write(tmp_path, "cp2", *_cert("CP2", ca))
    return ca_crt, server, good, other


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_profile_1_basic_auth_and_upstream_credentials(tmp_path):
    scada = await RawScada().start()
    cp = ChargePointConfig(id="CP1", connectors=["ev1"], upstream=scada.url, security_profile=1,
                           password="s3cret", upstream_password="up-pw")  # fmt: skip
    try:
        async with proxy(config(charge_points=[cp]), tmp_path) as p:
            for headers in ({}, basic("CP1", "wrong"), basic("CP2", "s3cret")):
                with pytest.raises(InvalidStatus) as refused:
                    async with charger(p.port, additional_headers=headers):
                        pass
                assert refused.value.response.status_code == 401
            assert scada.connections == []  # refused before the SCADA heard of it
            async with charger(p.port, additional_headers=basic("CP1", "s3cret")) as ws:
                assert ws.subprotocol == "ocpp1.6"
                assert scada.auth == [basic("CP1", "up-pw")["Authorization"]]
    finally:
        await scada.stop()


async def test_profiles_2_and_3_over_tls(tmp_path, pki):
    ca_crt, server, good, other = pki
    cps = [
        ChargePointConfig(id="CP1", connectors=["ev1"], security_profile=3),
        ChargePointConfig(id="CP2", connectors=["ev2"], security_profile=2, password="pw2"),
    ]
    cfg = config(charge_points=cps, tls_cert=server[0], tls_key=server[1], client_ca=ca_crt)

    def tls(client: tuple[Path, Path] | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(ca_crt))
        if client:
            ctx.load_cert_chain(str(client[0]), str(client[1]))
        return ctx

    def wss(port: int, cp_id: str, client=None, **kw):
        return connect(f"wss://127.0.0.1:{port}/{cp_id}", subprotocols=["ocpp1.6"],
                       ssl=tls(client), **kw)  # fmt: skip

    async with proxy(cfg, tmp_path) as p:
        async with wss(p.port, "CP1", good) as ws:  # profile 3: its own certificate
            assert ws.subprotocol == "ocpp1.6"
        for client in (None, other):  # no certificate, or another charge point's
            with pytest.raises(InvalidStatus) as refused:
                async with wss(p.port, "CP1", client):
                    pass
            assert refused.value.response.status_code == 403
        async with wss(p.port, "CP2", additional_headers=basic("CP2", "pw2")) as ws:
            assert ws.subprotocol == "ocpp1.6"  # profile 2: TLS + Basic auth
        with pytest.raises(InvalidStatus):
            async with wss(p.port, "CP2"):
                pass
