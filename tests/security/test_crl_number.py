"""A CRL must carry a CRLNumber greater than the one in force: putting back an older (validly
signed) list, or one without a number, would otherwise revive revoked certificates. The highest
number accepted is kept on disk, so this holds across a restart of the core too."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from smx.v1 import identity_service_pb2 as ipb
from tests.contract.calls import refused
from tests.support.certs import load_ca, utcnow
from tests.support.site import ROOT, Site
from trusted.core.server import Core
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


# -- the highest number survives a restart ---------------------------------------------------


def test_the_highest_number_is_kept_0600_and_refuses_an_older_crl_after_a_restart(
    ca: SiteCA, tmp_path: Path
) -> None:
    clock = FakeClock()
    kept = tmp_path / "data" / "crl.number"
    kept.parent.mkdir()
    issued = ca.issue("fronius", "trusted")
    old = ca.crl_path.read_bytes()  # before the revocation, validly signed
    crl = RevocationList(ca.crl_path, ca.ca_certificate, clock=clock, number_file=kept)
    old_number = crl.number
    assert json.loads(kept.read_text())["crl_number"] == old_number
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o600
    ca.revoke("fronius")
    clock.t += 1
    assert crl.is_revoked(issued.serial)
    assert json.loads(kept.read_text())["crl_number"] == old_number + 1  # kept at once
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o600

    # The "restart": a new list, the older CRL put back while the core was down.
    current = ca.crl_path.read_bytes()
    ca.crl_path.write_bytes(old)
    with pytest.raises(PkiError) as info:
        RevocationList(ca.crl_path, ca.ca_certificate, number_file=kept)
    line = str(info.value)
    assert "\n" not in line
    assert str(ca.crl_path) in line and str(kept) in line
    assert f"CRLNumber {old_number} is lower than {old_number + 1}" in line
    assert json.loads(kept.read_text())["crl_number"] == old_number + 1  # not lowered

    # The current list (same number) starts again, and its revocation holds.
    ca.crl_path.write_bytes(current)
    again = RevocationList(ca.crl_path, ca.ca_certificate, number_file=kept)
    assert again.number == old_number + 1 and again.is_revoked(issued.serial)


def test_a_number_kept_for_another_ca_does_not_apply(
    ca: SiteCA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kept = tmp_path / "crl.number"
    kept.write_text(json.dumps({"crl_number": 99, "ca_sha256": "0" * 64}))
    with caplog.at_level(logging.WARNING, logger="trusted.pki.crl"):
        crl = RevocationList(ca.crl_path, ca.ca_certificate, number_file=kept)
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert str(kept) in line and "another site CA" in line
    assert json.loads(kept.read_text())["crl_number"] == crl.number < 99


@pytest.mark.parametrize("text", ["", "7", "{}", '{"crl_number": "7", "ca_sha256": "x"}'])
def test_a_corrupt_number_file_stops_the_start(ca: SiteCA, tmp_path: Path, text: str) -> None:
    kept = tmp_path / "crl.number"
    kept.write_text(text)
    with pytest.raises(PkiError, match=f"CRL number file {kept} is corrupt"):
        RevocationList(ca.crl_path, ca.ca_certificate, number_file=kept)


async def test_a_restarted_core_refuses_an_older_crl_and_keeps_refusing_the_revoked_client() -> (
    None
):
    """Through the real core: revoke `gui` (CRL n), stop, put the CRL n-1 back: the core does
    not start (one line); with the current list back it starts and `gui` stays refused, also
    when the older list is put back while it runs."""
    site = Site()
    try:
        old = site.ca.crl_path.read_bytes()
        core = Core(site.config())
        await core.start()
        try:
            gui = site.stubs("gui")
            assert (await gui.identity.WhoAmI(ipb.WhoAmIRequest(), timeout=5)).roles == ["gui"]
            site.ca.revoke("gui")
            core.state.gate.revocations.refresh(force=True)
            assert await refused(gui.identity.WhoAmI(ipb.WhoAmIRequest(), timeout=5)) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "CERTIFICATE_REVOKED",
            )
        finally:
            await core.stop(grace=0.1)
        kept = site.config().history.path.with_name("crl.number")
        assert stat.S_IMODE(os.stat(kept).st_mode) == 0o600

        current = site.ca.crl_path.read_bytes()
        site.ca.crl_path.write_bytes(old)
        with pytest.raises(PkiError, match="is lower than"):
            Core(site.config())
        # `smx core` says so in one line and exits 2: the revoked client reaches nothing.
        run = subprocess.run(
            [sys.executable, "-m", "trusted.cli.main", "--home", str(site.home), "core"],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        assert run.returncode == 2, run.stderr
        [line] = [x for x in run.stderr.splitlines() if "crl" in x.lower()]
        assert line.startswith("smx core: ")
        assert "CRLNumber" in line and "is lower than" in line and str(kept) in line
        assert not site.socket.exists()

        site.ca.crl_path.write_bytes(current)
        core = Core(site.config())
        await core.start()
        try:
            gui = site.stubs("gui")
            assert await refused(gui.identity.WhoAmI(ipb.WhoAmIRequest(), timeout=5)) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "CERTIFICATE_REVOKED",
            )
            site.ca.crl_path.write_bytes(old)  # while it runs: refused, the list stays
            core.state.gate.revocations.refresh(force=True)
            assert await refused(gui.identity.WhoAmI(ipb.WhoAmIRequest(), timeout=5)) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "CERTIFICATE_REVOKED",
            )
            admin = site.stubs("admin")
            assert (await admin.identity.WhoAmI(ipb.WhoAmIRequest(), timeout=5)).roles == ["admin"]
        finally:
            await core.stop(grace=0.1)
    finally:
        site.cleanup()
