"""Odd certificates for tests: expired, zero or two URI SANs, from a foreign CA.

Built directly with `cryptography` rather than through `trusted.pki`, so the tests of the core's
certificate checks do not depend on the code that normally makes good certificates.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "load_ca",
    "load_ca_key",
    "make_cert",
    "make_other_ca",
    "utcnow",
    "write_pair",
]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    uris: Sequence[str],
    not_before: dt.datetime,
    not_after: dt.datetime,
    dns: Sequence[str] = (),
    eku: Sequence[x509.ObjectIdentifier] | None = None,
    common_name: str = "test",
) -> tuple[bytes, bytes]:
    """A leaf certificate signed by ``ca_key``: (cert_pem, key_pem).

    ``uris`` may be empty or hold several URIs; the SAN extension is left out when both ``uris``
    and ``dns`` are empty. The EKU defaults to clientAuth, plus serverAuth when ``dns`` is given.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    if eku is None:
        eku = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if dns:
            eku.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.UniformResourceIdentifier(u) for u in uris]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def make_other_ca(
    site: str, *, days: int = 30
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA with the same subject and SAN as the real site CA of ``site`` but its own key.

    Certificates it signs look right by name; only the signature check can tell them apart.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"SMX site CA {site}")])
    now = utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{site}")]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def load_ca_key(pki_dir: Path) -> ec.EllipticCurvePrivateKey:
    """The site CA's private key from ``<pki_dir>/ca.key``."""
    key = serialization.load_pem_private_key((Path(pki_dir) / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey), "site CA key is not an EC key"
    return key


def load_ca(pki_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The site CA's (certificate, key), ready for :func:`make_cert`."""
    cert = x509.load_pem_x509_certificate((Path(pki_dir) / "ca.crt").read_bytes())
    return cert, load_ca_key(pki_dir)


def write_pair(directory: Path, name: str, cert_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    """Write ``<name>.crt`` and ``<name>.key`` (0600) under ``directory``; returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert_pem)
    key_path.touch(mode=0o600)
    key_path.write_bytes(key_pem)
    return cert_path, key_path
