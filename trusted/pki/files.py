"""File handling of the site PKI directory: PkiError, atomic writes, reads that name the file,
and PEM encoding of keys and certificates.

Shared by the CA side (trusted.pki, run by `smx pki`) and the core's revocation check
(trusted.pki.crl).
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from smx.files import write_atomic

__all__ = [
    "KEY_MODE",
    "PUBLIC_MODE",
    "PkiError",
    "cert_pem",
    "key_pem",
    "load_cert_file",
    "read_file",
    "write_atomic",
]

KEY_MODE = 0o600
PUBLIC_MODE = 0o644


class PkiError(Exception):
    """A PKI operation that cannot be done; the message names the file, name or value."""


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def read_file(path: Path, what: str) -> bytes:
    """The bytes of ``path``; PkiError naming ``what`` and the path when it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError as err:
        raise PkiError(f"{what} not found: {path}") from err
    except OSError as err:
        raise PkiError(f"cannot read {what} {path}: {err.strerror}") from err


def load_cert_file(path: Path, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(read_file(path, what))
    except ValueError as err:
        raise PkiError(f"{what} {path} is not a PEM certificate: {err}") from err
