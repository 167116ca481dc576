"""The site PKI: CA creation, client certificates, revocation and the CRL the core reloads."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import stat
import string
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import example, given, settings
from hypothesis import strategies as st

from smx.identity import Identity, IdentityError, identity_from_certificate
from tests.support.certs import load_ca, load_ca_key, make_cert, make_other_ca, utcnow
from trusted import pki
from trusted.cli import pki_cmd
from trusted.pki import PkiError, RevocationList, SiteCA, load_certificate_pem

SITE = "usm-0017"


@pytest.fixture
def ca(tmp_path: Path) -> SiteCA:
    return SiteCA.init(tmp_path / "pki", SITE)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def read_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def san(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def crl_serials(ca: SiteCA) -> set[int]:
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.is_signature_valid(ca.ca_certificate.public_key())
    return {r.serial_number for r in crl}


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# --- init / load ---------------------------------------------------------------------------------


def test_init_creates_a_constrained_site_ca(ca: SiteCA) -> None:
    cert = read_cert(ca.ca_cert_path)
    assert cert == ca.ca_certificate
    assert ca.site == SITE
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == f"SMX site CA {SITE}"
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    assert san(cert).get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{SITE}"]
    assert mode(ca.pki_dir / "ca.key") == 0o600
    assert crl_serials(ca) == set()
    assert ca.list() == []


def test_key_files_are_private_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        ca = SiteCA.init(tmp_path / "pki", SITE)
        issued = ca.issue("fronius", "trusted")
    finally:
        os.umask(old)
    for key in (ca.pki_dir / "ca.key", ca.server_key_path, issued.key_path):
        assert mode(key) == 0o600, key
    assert mode(ca.ca_cert_path) & 0o077 == 0o044  # certificates stay readable
    assert not list(ca.pki_dir.rglob("*.tmp"))


def test_init_refuses_an_existing_ca(ca: SiteCA) -> None:
    before = ca.ca_cert_path.read_bytes()
    with pytest.raises(PkiError, match="already exists"):
        SiteCA.init(ca.pki_dir, "other-site")
    assert ca.ca_cert_path.read_bytes() == before


def test_init_rejects_a_bad_site_id(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="invalid site id 'Bad Site'"):
        SiteCA.init(tmp_path / "pki", "Bad Site")
    assert not (tmp_path / "pki" / "ca.crt").exists()


def test_load_round_trips(ca: SiteCA) -> None:
    ca.issue("fronius", "trusted")
    loaded = SiteCA.load(ca.pki_dir)
    assert loaded.site == SITE
    assert loaded.ca_certificate == ca.ca_certificate
    assert [c.name for c in loaded.list()] == ["fronius"]
    # A loaded CA can sign without having been told where its key is.
    assert loaded.issue("lessag", "untrusted").identity == f"spiffe://{SITE}/untrusted/lessag"


def test_load_names_the_missing_path(tmp_path: Path) -> None:
    with pytest.raises(PkiError) as info:
        SiteCA.load(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "ca.crt") in str(info.value)


@pytest.mark.parametrize("victim", ["ca.crt", "index.json"])
def test_load_names_a_corrupt_file(ca: SiteCA, victim: str) -> None:
    (ca.pki_dir / victim).write_bytes(b"garbage\n")
    with pytest.raises(PkiError) as info:
        SiteCA.load(ca.pki_dir)
    assert str(ca.pki_dir / victim) in str(info.value)


def test_a_foreign_ca_key_is_refused_before_signing(ca: SiteCA) -> None:
    _, other_key = make_other_ca(SITE)
    (ca.pki_dir / "ca.key").write_bytes(
        other_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(PkiError, match="does not match"):
        SiteCA.load(ca.pki_dir).issue("fronius", "trusted")
    assert not ca.client_paths("fronius")[0].exists()


# --- server certificate --------------------------------------------------------------------------


def test_server_certificate_serves_as_smxcore(ca: SiteCA) -> None:
    cert = read_cert(ca.server_cert_path)
    cert.verify_directly_issued_by(ca.ca_certificate)
    names = san(cert)
    assert names.get_values_for_type(x509.DNSName) == ["smxcore"]
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://{SITE}/trusted/smxcore"
    ]
    assert identity_from_certificate(cert) == Identity(SITE, "trusted", "smxcore")
    assert eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert mode(ca.server_key_path) == 0o600


# --- issue ---------------------------------------------------------------------------------------


def test_issue_gives_exactly_one_identity(ca: SiteCA) -> None:
    issued = ca.issue("fronius", "trusted", days=30)
    assert (issued.cert_path, issued.key_path) == ca.client_paths("fronius")
    assert issued.cert_path == ca.pki_dir / "clients" / "fronius.crt"
    cert = read_cert(issued.cert_path)
    cert.verify_directly_issued_by(ca.ca_certificate)
    assert len(list(san(cert))) == 1  # one URI and nothing else
    assert identity_from_certificate(cert) == Identity(SITE, "trusted", "fronius")
    assert issued.identity == f"spiffe://{SITE}/trusted/fronius"
    assert eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert issued.serial == cert.serial_number
    assert issued.not_after == cert.not_valid_after_utc
    assert issued.not_after.tzinfo is not None
    assert dt.timedelta(days=29) < issued.not_after - utcnow() <= dt.timedelta(days=30)
    assert not issued.revoked and issued.status == "valid"
    assert mode(issued.key_path) == 0o600
    key = serialization.load_pem_private_key(issued.key_path.read_bytes(), None)
    assert key.public_key() == cert.public_key()
    assert ca.list() == [issued]


def test_serials_are_random_and_distinct(ca: SiteCA) -> None:
    serials = {ca.issue(f"ext{i}", "trusted").serial for i in range(5)}
    assert len(serials) == 5
    assert all(s.bit_length() > 64 for s in serials)


def test_client_lifetime_is_capped_by_the_ca(tmp_path: Path) -> None:
    ca = SiteCA.init(tmp_path / "pki", SITE, days=10)
    issued = ca.issue("fronius", "trusted", days=365)
    assert issued.not_after == ca.ca_certificate.not_valid_after_utc


@pytest.mark.parametrize(
    ("name", "domain", "message"),
    [
        ("Fronius", "trusted", "invalid client name"),
        ("fro/nius", "trusted", "invalid client name"),
        ("fronius", "north", "invalid domain 'north'"),
        ("smxcore", "trusted", "reserved"),
    ],
)
def test_issue_rejects_bad_input(ca: SiteCA, name: str, domain: str, message: str) -> None:
    with pytest.raises(PkiError, match=message):
        ca.issue(name, domain)
    assert ca.list() == []


def test_reissue_needs_replace_which_revokes_the_old_serial(ca: SiteCA) -> None:
    first = ca.issue("fronius", "trusted")
    first_pem = first.cert_path.read_bytes()
    with pytest.raises(PkiError, match="--replace"):
        ca.issue("fronius", "trusted")
    assert first.cert_path.read_bytes() == first_pem
    assert crl_serials(ca) == set()

    second = ca.issue("fronius", "trusted", replace=True)
    assert second.serial != first.serial
    assert read_cert(second.cert_path).serial_number == second.serial
    assert crl_serials(ca) == {first.serial}
    history = ca.list()
    assert [(c.serial, c.status) for c in history] == [
        (first.serial, "revoked"),
        (second.serial, "valid"),
    ]


def test_a_revoked_name_can_be_issued_again(ca: SiteCA) -> None:
    first = ca.issue("fronius", "trusted")
    ca.revoke("fronius")
    second = ca.issue("fronius", "untrusted")
    assert second.identity == f"spiffe://{SITE}/untrusted/fronius"
    assert crl_serials(ca) == {first.serial}


# --- revoke --------------------------------------------------------------------------------------


def test_revoke_updates_crl_and_index(ca: SiteCA) -> None:
    keep = ca.issue("lessag", "untrusted")
    gone = ca.issue("fronius", "trusted")
    revoked = ca.revoke("fronius")
    assert revoked.serial == gone.serial and revoked.revoked
    assert crl_serials(ca) == {gone.serial}
    status = {c.name: c.status for c in SiteCA.load(ca.pki_dir).list()}
    assert status == {"lessag": "valid", "fronius": "revoked"}
    ca.revoke("lessag")
    assert crl_serials(ca) == {gone.serial, keep.serial}
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > utcnow() + dt.timedelta(days=365)


def test_revoke_unknown_or_twice_is_an_error(ca: SiteCA) -> None:
    with pytest.raises(PkiError, match="no certificate was issued to 'ghost'"):
        ca.revoke("ghost")
    ca.issue("fronius", "trusted")
    ca.revoke("fronius")
    with pytest.raises(PkiError, match="already revoked"):
        ca.revoke("fronius")


def test_expired_status(ca: SiteCA, monkeypatch: pytest.MonkeyPatch) -> None:
    ca.issue("fronius", "trusted", days=1)
    later = utcnow() + dt.timedelta(days=2)
    monkeypatch.setattr(pki, "_now", lambda: later)
    assert [c.status for c in ca.list()] == ["expired"]


# --- RevocationList ------------------------------------------------------------------------------


def test_revocation_list_picks_up_a_revoke_without_restart(ca: SiteCA) -> None:
    clock = FakeClock()
    crl = RevocationList(ca.crl_path, ca.ca_certificate, clock=clock)
    issued = ca.issue("fronius", "trusted")
    other = ca.issue("lessag", "untrusted")
    assert not crl.is_revoked(issued.serial)

    SiteCA.load(ca.pki_dir).revoke("fronius")  # as `smx pki revoke` in another process would
    clock.t += 0.1
    assert not crl.is_revoked(issued.serial), "checked the file again within 0.5 s"
    clock.t += 0.5
    assert crl.is_revoked(issued.serial)
    assert not crl.is_revoked(other.serial)

    ca.revoke("lessag")
    clock.t += 0.4
    assert not crl.is_revoked(other.serial), "checked the file again within 0.5 s"
    clock.t += 0.1
    assert crl.is_revoked(other.serial)


def test_revocation_list_keeps_the_previous_list_on_a_bad_crl(
    ca: SiteCA, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    issued = ca.issue("fronius", "trusted")
    ca.revoke("fronius")
    crl = RevocationList(ca.crl_path, ca.ca_certificate, clock=clock)
    assert crl.is_revoked(issued.serial)
    good = ca.crl_path.read_bytes()

    # A half-written file, garbage, and a well-formed empty CRL signed by a look-alike CA.
    other_cert, other_key = make_other_ca(SITE)
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(other_cert.subject)
        .last_update(utcnow())
        .next_update(utcnow() + dt.timedelta(days=1))
        .sign(other_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    for bad, why in [
        (good[: len(good) // 2], "corrupt"),
        (b"not a crl at all\n", "corrupt"),
        (forged, "not signed by the site CA"),
    ]:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="trusted.pki.crl"):
            ca.crl_path.write_bytes(bad)
            clock.t += 1
            assert crl.is_revoked(issued.serial), why
            assert crl.is_revoked(issued.serial)  # logged once, not on every call
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and why in errors[0].getMessage()

    ca.crl_path.unlink()
    clock.t += 1
    assert crl.is_revoked(issued.serial)

    # Recovery: the next real revocation rewrites the CRL and is picked up.
    second = ca.issue("lessag", "untrusted")
    ca.revoke("lessag")
    clock.t += 1
    assert crl.is_revoked(second.serial) and crl.is_revoked(issued.serial)


def test_revocation_list_refuses_to_start_on_a_bad_crl(ca: SiteCA) -> None:
    ca.crl_path.write_bytes(b"junk")
    with pytest.raises(PkiError, match="corrupt"):
        RevocationList(ca.crl_path, ca.ca_certificate)
    ca.crl_path.unlink()
    with pytest.raises(PkiError, match="not found"):
        RevocationList(ca.crl_path, ca.ca_certificate)


def test_load_certificate_pem_is_cached(ca: SiteCA) -> None:
    pem = ca.server_cert_path.read_bytes()
    assert load_certificate_pem(pem) is load_certificate_pem(pem)
    with pytest.raises(ValueError, match="not a PEM certificate"):
        load_certificate_pem(b"nope")


# --- odd certificates from tests.support ---------------------------------------------------------


def test_support_helpers_make_the_odd_certificates(ca: SiteCA) -> None:
    ca_cert, ca_key = load_ca(ca.pki_dir)
    assert load_ca_key(ca.pki_dir).public_key() == ca.ca_certificate.public_key()
    now = utcnow()
    uri = f"spiffe://{SITE}/trusted/x"
    for uris in ([], [uri, f"spiffe://{SITE}/trusted/y"]):
        pem, _ = make_cert(
            ca_cert, ca_key, uris=uris, not_before=now, not_after=now + dt.timedelta(days=1)
        )
        with pytest.raises(IdentityError, match=f"found {len(uris)}"):
            identity_from_certificate(x509.load_pem_x509_certificate(pem))
    pem, _ = make_cert(
        ca_cert,
        ca_key,
        uris=[uri],
        not_before=now - dt.timedelta(days=2),
        not_after=now - dt.timedelta(days=1),
    )
    assert x509.load_pem_x509_certificate(pem).not_valid_after_utc < now
    other_cert, other_key = make_other_ca(SITE)
    assert other_cert.subject == ca_cert.subject
    pem, _ = make_cert(
        other_cert, other_key, uris=[uri], not_before=now, not_after=now + dt.timedelta(days=1)
    )
    with pytest.raises(InvalidSignature):
        x509.load_pem_x509_certificate(pem).verify_directly_issued_by(ca_cert)


# --- the certificates work for gRPC mutual TLS ---------------------------------------------------


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="smx-pki-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _whoami(ca: SiteCA, sock: Path, cert_pem: bytes, key_pem: bytes) -> bytes:
    """Serve one RPC that returns the peer's PEM over mTLS, and call it with the given pair."""

    async def whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return context.auth_context()["x509_pem_cert"][0]

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "smxtest.Pki", {"WhoAmI": grpc.unary_unary_rpc_method_handler(whoami)}
            )
        ]
    )
    server_creds = grpc.ssl_server_credentials(
        [(ca.server_key_path.read_bytes(), ca.server_cert_path.read_bytes())],
        root_certificates=ca.ca_cert_path.read_bytes(),
        require_client_auth=True,
    )
    server.add_secure_port(f"unix:{sock}", server_creds)
    await server.start()
    try:
        creds = grpc.ssl_channel_credentials(ca.ca_cert_path.read_bytes(), key_pem, cert_pem)
        options = [("grpc.ssl_target_name_override", pki.SERVER_NAME)]
        async with grpc.aio.secure_channel(f"unix:{sock}", creds, options=options) as channel:
            return await channel.unary_unary("/smxtest.Pki/WhoAmI")(b"", timeout=5)
    finally:
        await server.stop(None)


async def test_grpc_mtls_accepts_issued_and_refuses_foreign_or_expired(
    ca: SiteCA, sock_dir: Path
) -> None:
    issued = ca.issue("fronius", "trusted")
    peer_pem = await _whoami(
        ca, sock_dir / "ok.sock", issued.cert_path.read_bytes(), issued.key_path.read_bytes()
    )
    peer = load_certificate_pem(peer_pem)
    assert identity_from_certificate(peer) == Identity(SITE, "trusted", "fronius")
    assert peer.serial_number == issued.serial

    now = utcnow()
    uri = [f"spiffe://{SITE}/trusted/intruder"]
    other_cert, other_key = make_other_ca(SITE)
    foreign = make_cert(
        other_cert, other_key, uris=uri, not_before=now, not_after=now + dt.timedelta(days=1)
    )
    ca_cert, ca_key = load_ca(ca.pki_dir)
    expired = make_cert(
        ca_cert,
        ca_key,
        uris=uri,
        not_before=now - dt.timedelta(days=2),
        not_after=now - dt.timedelta(days=1),
    )
    for label, (cert_pem, key_pem) in [("foreign", foreign), ("expired", expired)]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _whoami(ca, sock_dir / f"{label}.sock", cert_pem, key_pem)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, label


# --- CLI -----------------------------------------------------------------------------------------


@pytest.fixture
def smx(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], int]:
    """The real `smx` entry point; only `smx pki` is wired in while sibling commands are missing."""
    from trusted.cli import main as cli_main

    try:
        cli_main.build_parser()
    except ImportError:
        monkeypatch.setattr(cli_main, "COMMAND_MODULES", (pki_cmd.__name__,))
    return cli_main.main


def test_cli_end_to_end(
    smx: Callable[[list[str]], int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = ["--home", str(tmp_path)]
    pki_dir = tmp_path / "pki"

    assert smx([*home, "pki", "list"]) == 2
    assert capsys.readouterr().err.startswith(f"smx pki: no site CA in {pki_dir}")

    assert smx([*home, "pki", "init", "--site", SITE, "--days", "100"]) == 0
    out = capsys.readouterr().out
    assert str(pki_dir / "ca.crt") in out and str(pki_dir / "server" / "smxcore.key") in out
    assert smx([*home, "pki", "init", "--site", SITE]) == 2
    assert "already exists" in capsys.readouterr().err

    assert smx([*home, "pki", "issue", "fronius", "--domain", "trusted", "--days", "7"]) == 0
    out = capsys.readouterr().out
    key = pki_dir / "clients" / "fronius.key"
    assert str(key) in out and f"spiffe://{SITE}/trusted/fronius" in out
    assert mode(key) == 0o600
    assert smx([*home, "pki", "issue", "lessag", "--domain", "untrusted"]) == 0
    capsys.readouterr()

    assert smx([*home, "pki", "issue", "fronius", "--domain", "trusted"]) == 2
    assert "--replace" in capsys.readouterr().err
    assert smx([*home, "pki", "issue", "fronius", "--domain", "trusted", "--replace"]) == 0
    assert "(replaced)" in capsys.readouterr().out

    assert smx([*home, "pki", "revoke", "lessag"]) == 0
    assert str(pki_dir / "crl.pem") in capsys.readouterr().out
    assert smx([*home, "pki", "revoke", "lessag"]) == 2
    assert capsys.readouterr().err.startswith("smx pki: ")

    assert smx([*home, "pki", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        *("NAME", "DOMAIN", "IDENTITY", "SERIAL", "NOT", "AFTER", "(UTC)", "STATUS")
    ]
    rows = [line.split() for line in lines[1:]]
    certs = SiteCA.load(pki_dir).list()
    assert [(r[0], r[1], r[2], r[3], r[-1]) for r in rows] == [
        (c.name, c.domain, c.identity, f"{c.serial:x}", c.status) for c in certs
    ]
    # Issue order; the replaced certificate stays listed as revoked.
    assert [(r[0], r[-1]) for r in rows] == [
        ("fronius", "revoked"),
        ("lessag", "revoked"),
        ("fronius", "valid"),
    ]


def test_cli_rejects_bad_arguments(
    smx: Callable[[list[str]], int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = ["--home", str(tmp_path)]
    assert smx([*home, "pki", "init", "--site", "Not A Site"]) == 2
    assert "invalid site id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        smx([*home, "pki", "issue", "x", "--domain", "north"])
    with pytest.raises(SystemExit):
        smx([*home, "pki", "init", "--site", SITE, "--days", "0"])


# --- identity grammar (property tests) -----------------------------------------------------------

_LOWER = set(string.ascii_lowercase)
_DIGITS = set(string.digits)


def oracle(uri: str) -> Identity | None:
    """An independent, regex-free statement of the grammar in smx.identity."""
    prefix = "spiffe://"
    if not uri.startswith(prefix):
        return None
    parts = uri[len(prefix) :].split("/")
    if len(parts) != 3:
        return None
    site, domain, name = parts
    site_ok = (
        1 <= len(site) <= 63
        and site[0] in _LOWER | _DIGITS
        and all(c in _LOWER | _DIGITS | set("_.-") for c in site)
    )
    name_ok = (
        1 <= len(name) <= 32
        and name[0] in _LOWER
        and all(c in _LOWER | _DIGITS | set("_-") for c in name)
    )
    if site_ok and name_ok and domain in ("trusted", "untrusted"):
        return Identity(site, domain, name)
    return None


_SITE_CHARS = string.ascii_lowercase + string.digits + "_.-"
_NAME_CHARS = string.ascii_lowercase + string.digits + "_-"
sites = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,62}", fullmatch=True)
names = st.from_regex(r"[a-z][a-z0-9_-]{0,31}", fullmatch=True)
domains = st.sampled_from(["trusted", "untrusted"])
# Pieces around the length limits (63 for a site, 32 for a name), on both sides of them.
long_sites = st.text(alphabet=_SITE_CHARS, min_size=60, max_size=64).map(lambda s: "s" + s)
long_names = st.text(alphabet=_NAME_CHARS, min_size=29, max_size=33).map(lambda s: "n" + s)
uris = st.builds(
    lambda s, d, n: f"spiffe://{s}/{d}/{n}",
    st.one_of(sites, long_sites),
    domains,
    st.one_of(names, long_names),
)


@st.composite
def near_misses(draw: st.DrawFn) -> str:
    """A valid URI with one edit (insert, replace or delete a character), often at a boundary."""
    uri = draw(uris)
    slashes = [i for i, c in enumerate(uri) if c == "/"]
    edges = sorted({0, len(uri)} | {j for i in slashes for j in (i - 1, i, i + 1)})
    pos = draw(st.sampled_from(edges) | st.integers(0, len(uri)))
    char = draw(st.sampled_from("aA0_.-/:\n \x00\u00e9\u212a"))
    kind = draw(st.sampled_from(["insert", "replace", "delete", "upper"]))
    if kind == "upper":
        return uri[:pos] + uri[pos : pos + 1].upper() + uri[pos + 1 :]
    if kind == "insert":
        return uri[:pos] + char + uri[pos:]
    if kind == "replace":
        return uri[:pos] + char + uri[pos + 1 :]
    return uri[:pos] + uri[pos + 1 :]


@given(sites, domains, names)
def test_identity_round_trips(site: str, domain: str, name: str) -> None:
    ident = Identity(site, domain, name)
    assert Identity.parse(ident.uri) == ident
    assert Identity.check_site(site) == site and Identity.check_name(name) == name


@settings(max_examples=500)
@given(st.one_of(st.text(), uris, near_misses()))
@example("spiffe://Usm/trusted/x")
@example("spiffe://usm/trusted/X")
@example("spiffe://usm/trusted/x\n")
@example("spiffe://usm/trusted/x/")
@example("spiffe://usm//trusted/x")
@example("spiffe://a/b/trusted/x")
@example("spiffe:/usm/trusted/x")
@example("spiffe://_usm/trusted/x")
@example("spiffe://usm/trusted/9x")
@example("spiffe://usm/trusted/-x")
@example("spiffe://usm/trusted/x.y")
@example("spiffe://usm/trusted/xY")
@example("spiffe://usm/trusted/x y")
@example("spiffe://uSm/trusted/x")
@example("spiffe://u sm/trusted/x")
@example("spiffe://usm/Trusted/x")
@example("spiffe://usm/trusted/\u212a")
@example("spiffe://" + "s" * 63 + "/trusted/x")
@example("spiffe://" + "s" * 64 + "/trusted/x")
@example("spiffe://usm/untrusted/" + "n" * 32)
@example("spiffe://usm/untrusted/" + "n" * 33)
def test_identity_parse_accepts_exactly_the_grammar(uri: str) -> None:
    expected = oracle(uri)
    try:
        got = Identity.parse(uri)
    except IdentityError:
        got = None
    assert got == expected
