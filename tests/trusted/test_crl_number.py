"""A CRL must carry a CRLNumber greater than the one in force: putting back an older (validly
signed) list, or one without a number, would otherwise revive revoked certificates."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tests.support.certs import load_ca, utcnow
from trusted.pki import PkiError, RevocationList, SiteCA

SITE = "usm-0017"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def ca(tmp_path: Path) -> SiteCA:
    return SiteCA.init(tmp_path / "pki", SITE)


def signed_crl(ca: SiteCA, number: int | None, serials: list[int]) -> bytes:
    """A CRL validly signed by the site CA, with `number` as its CRLNumber (None: none)."""
    ca_cert, ca_key = load_ca(ca.crl_path.parent)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(utcnow() - dt.timedelta(minutes=1))
        .next_update(utcnow() + dt.timedelta(days=1))
    )
    if number is not None:
        builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(utcnow() - dt.timedelta(minutes=1))
            .build()
        )
    return crl_pem(builder.sign(ca_key, hashes.SHA256()))


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_an_older_crl_put_back_does_not_revive_a_revoked_certificate(
    ca: SiteCA, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    issued = ca.issue("fronius", "trusted")
    old = ca.crl_path.read_bytes()  # before the revocation, validly signed
    crl = RevocationList(ca.crl_path, ca.ca_certificate, clock=clock)
    old_number = crl.number
    ca.revoke("fronius")
    clock.t += 1
    assert crl.is_revoked(issued.serial)
    assert crl.number == old_number + 1 and crl.version == 1

    with caplog.at_level(logging.ERROR, logger="trusted.pki.crl"):
        ca.crl_path.write_bytes(old)
        clock.t += 1
        assert crl.is_revoked(issued.serial)
        clock.t += 1
        assert crl.is_revoked(issued.serial)  # logged once, not on every check
    [line] = errors(caplog)
    assert str(ca.crl_path) in line
    assert f"CRLNumber {old_number} " in line and f"over {old_number + 1} " in line
    assert crl.number == old_number + 1 and crl.version == 1


def test_an_equal_or_missing_crl_number_is_refused(
    ca: SiteCA, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    issued = ca.issue("fronius", "trusted")
    ca.revoke("fronius")
    crl = RevocationList(ca.crl_path, ca.ca_certificate, clock=clock)
    in_force = crl.number
    for number in (in_force, None):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="trusted.pki.crl"):
            ca.crl_path.write_bytes(signed_crl(ca, number, []))
            clock.t += 1
            assert crl.is_revoked(issued.serial), number
        [line] = errors(caplog)
        assert str(ca.crl_path) in line and str(in_force) in line
        assert ("no CRLNumber" in line) == (number is None)

    # A higher number is taken, whatever the content.
    ca.crl_path.write_bytes(signed_crl(ca, in_force + 10, []))
    clock.t += 1
    assert not crl.is_revoked(issued.serial)
    assert crl.number == in_force + 10 and crl.version == 1


def test_a_crl_without_a_number_is_refused_at_start(ca: SiteCA) -> None:
    ca.crl_path.write_bytes(signed_crl(ca, None, []))
    with pytest.raises(PkiError, match="no CRLNumber"):
        RevocationList(ca.crl_path, ca.ca_certificate)
