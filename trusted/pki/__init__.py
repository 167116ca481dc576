"""The site PKI: one private CA per site, client certificates, and the revocation list.

Layout of the PKI directory (``<site home>/pki``)::

    ca.crt  ca.key (0600)  crl.pem  index.json (0600)
    server/smxcore.crt  server/smxcore.key (0600)
    clients/<name>.crt  clients/<name>.key (0600)

``index.json`` is the ledger of every client certificate ever issued (a replaced certificate
stays in it, marked revoked), and the CRL is always rebuilt from it. Only the ``smx pki``
commands write here; the running core reads ``ca.crt``, the server pair and ``crl.pem``
(trusted.pki.crl). Certificates are built in trusted.pki.cert_build, files handled in
trusted.pki.files.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from smx.identity import DOMAINS, SCHEME, SERVER_NAME, Identity, IdentityError
from trusted.pki.cert_build import BACKDATE, build_ca, build_leaf, new_key
from trusted.pki.crl import RevocationList, load_certificate_pem
from trusted.pki.files import (
    KEY_MODE,
    PUBLIC_MODE,
    PkiError,
    cert_pem,
    key_pem,
    load_cert_file,
    read_file,
    write_atomic,
)

__all__ = [
    "CORE_NAMES",
    "RESERVED_NAMES",
    "SERVER_NAME",
    "IssuedCert",
    "PkiError",
    "RevocationList",
    "SiteCA",
    "load_certificate_pem",
]

log = logging.getLogger(__name__)

# The core's own names: never a client certificate, and the core refuses a client presenting one.
CORE_NAMES = (SERVER_NAME, "core")
# Names only provisioning (`smx run`) may issue: `smx pki issue` refuses them (by_hand=True).
RESERVED_NAMES = (*CORE_NAMES, "supervisor")

_INDEX_VERSION = 1


@dataclass(frozen=True)
class IssuedCert:
    """One client certificate as recorded in ``index.json``."""

    name: str
    domain: str
    identity: str
    serial: int
    not_after: dt.datetime
    revoked: bool
    cert_path: Path
    key_path: Path

    @property
    def expired(self) -> bool:
        return self.not_after <= _now()

    @property
    def status(self) -> str:
        """``revoked``, ``expired`` or ``valid``: what the core would make of it now."""
        if self.revoked:
            return "revoked"
        return "expired" if self.expired else "valid"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- index records ------------------------------------------------------------------------------


def _record_to_json(rec: dict[str, Any]) -> dict[str, Any]:
    out = dict(rec)
    out["serial"] = format(rec["serial"], "x")
    return out


def _record_from_json(raw: dict[str, Any]) -> dict[str, Any]:
    rec = dict(raw)
    rec["serial"] = int(raw["serial"], 16)
    # Validate the timestamps now so a bad index fails at load time, naming the file.
    dt.datetime.fromisoformat(raw["not_after"])
    if raw.get("revoked_at"):
        dt.datetime.fromisoformat(raw["revoked_at"])
    if raw["domain"] not in DOMAINS or not isinstance(raw["revoked"], bool):
        raise ValueError(f"bad record for {raw.get('name')!r}")
    return rec


class SiteCA:
    """The site CA in a PKI directory. Create with :meth:`init`, open with :meth:`load`."""

    def __init__(self, pki_dir: Path, site: str, ca_cert: x509.Certificate) -> None:
        self._dir = Path(pki_dir)
        self._site = site
        self._ca_cert = ca_cert
        self._ca_key: ec.EllipticCurvePrivateKey | None = None
        self._verify_only = False

    # --- paths and properties

    @property
    def site(self) -> str:
        return self._site

    @property
    def pki_dir(self) -> Path:
        return self._dir

    @property
    def ca_cert_path(self) -> Path:
        return self._dir / "ca.crt"

    @property
    def ca_key_path(self) -> Path:
        return self._dir / "ca.key"

    @property
    def crl_path(self) -> Path:
        return self._dir / "crl.pem"

    @property
    def index_path(self) -> Path:
        return self._dir / "index.json"

    @property
    def server_cert_path(self) -> Path:
        return self._dir / "server" / f"{SERVER_NAME}.crt"

    @property
    def server_key_path(self) -> Path:
        return self._dir / "server" / f"{SERVER_NAME}.key"

    @property
    def ca_certificate(self) -> x509.Certificate:
        return self._ca_cert

    def client_paths(self, name: str) -> tuple[Path, Path]:
        """(certificate, key) paths of client ``name``, whether issued or not."""
        clients = self._dir / "clients"
        return clients / f"{name}.crt", clients / f"{name}.key"

    # --- creation and loading

    @classmethod
    def init(cls, pki_dir: Path, site: str, days: int = 3650) -> SiteCA:
        """Create the site CA, an empty CRL, the index and the core's server certificate."""
        pki_dir = Path(pki_dir)
        try:
            Identity.check_site(site)
        except IdentityError as err:
            raise PkiError(str(err)) from err
        if days < 1:
            raise PkiError(f"days must be at least 1, got {days}")
        try:
            (pki_dir / "server").mkdir(parents=True, exist_ok=True)
            (pki_dir / "clients").mkdir(exist_ok=True)
        except OSError as err:
            raise PkiError(f"cannot create PKI directory {pki_dir}: {err.strerror}") from err

        cert, key = build_ca(site, days)
        ca = cls(pki_dir, site, cert)
        ca._ca_key = key
        with ca._locked():
            for existing in (ca.ca_cert_path, ca.ca_key_path, ca.index_path):
                if existing.exists():
                    raise PkiError(f"a site CA already exists in {pki_dir} ({existing.name} found)")
            # The key goes first: a ca.crt without its key would be a CA that can never sign.
            write_atomic(ca.ca_key_path, key_pem(key), KEY_MODE)
            write_atomic(ca.ca_cert_path, cert_pem(cert), PUBLIC_MODE)
            index: dict[str, Any] = {
                "version": _INDEX_VERSION,
                "site": site,
                "crl_number": 0,
                "certificates": [],
            }
            ca._write_crl(index)
            ca._issue_server(index)
            ca._save_index(index)
        log.debug("site CA for %s created in %s", site, pki_dir)
        return ca

    @classmethod
    def load(cls, pki_dir: Path, *, ledger: bool = True) -> SiteCA:
        """Open an existing site CA; the CA key is only read when something must be signed.
        ``ledger=False`` opens it for verifying only (the core): ``index.json``, private to the
        CA's owner, is not read, and nothing may be issued or revoked through it."""
        pki_dir = Path(pki_dir)
        cert_path = pki_dir / "ca.crt"
        if not cert_path.exists():
            raise PkiError(f"no site CA in {pki_dir}: {cert_path} not found (run `smx pki init`)")
        cert = load_cert_file(cert_path, "CA certificate")
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        if len(uris) != 1 or not uris[0].startswith(SCHEME):
            raise PkiError(f"CA certificate {cert_path} has no spiffe://<site> URI SAN")
        site = uris[0].removeprefix(SCHEME)
        ca = cls(pki_dir, site, cert)
        if not ledger:
            ca._verify_only = True
            return ca
        index = ca._load_index()
        if index["site"] != site:
            raise PkiError(
                f"{ca.index_path} is for site {index['site']!r} but {cert_path} is for {site!r}"
            )
        return ca

    # --- client certificates

    def issue(
        self,
        name: str,
        domain: str,
        days: int = 365,
        *,
        replace: bool = False,
        by_hand: bool = False,
    ) -> IssuedCert:
        """Issue a client certificate with the single identity spiffe://<site>/<domain>/<name>.

        A name that already has a live certificate is refused unless ``replace``, which revokes
        the old serial first. A name whose certificate was revoked may be issued again.
        The core's names (`CORE_NAMES`) are never issued; ``by_hand`` (``smx pki issue``) also
        refuses the other `RESERVED_NAMES`, which only provisioning issues.
        """
        try:
            Identity.check_name(name)
        except IdentityError as err:
            raise PkiError(str(err)) from err
        if domain not in DOMAINS:
            raise PkiError(f"invalid domain {domain!r}: use one of {', '.join(DOMAINS)}")
        if name in CORE_NAMES:
            raise PkiError(f"client name {name!r} is reserved for the core's own certificate")
        if by_hand and name in RESERVED_NAMES:
            raise PkiError(
                f"client name {name!r} is reserved ({', '.join(RESERVED_NAMES)}): "
                "only `smx run` provisioning issues it"
            )
        if days < 1:
            raise PkiError(f"days must be at least 1, got {days}")

        with self._locked():
            index = self._load_index()
            ca_key = self._key()  # before any change: a bad CA key must not half-replace
            current = self._current(index, name)
            if current is not None and not current["revoked"]:
                if not replace:
                    raise PkiError(
                        f"client {name!r} already has certificate serial {current['serial']:x}; "
                        "use --replace to revoke it and issue a new one"
                    )
                # Revoke first: if anything below fails, the old key is already dead.
                self._mark_revoked(current)
                self._write_crl(index)
                self._save_index(index)

            ident = Identity(self._site, domain, name)
            not_after = _now() + dt.timedelta(days=days)
            ca_end = self._ca_cert.not_valid_after_utc
            if not_after > ca_end:
                log.warning("certificate for %s cut to the CA's expiry %s", name, ca_end)
                not_after = ca_end
            key = new_key()
            cert = build_leaf(
                self._ca_cert,
                ca_key,
                key,
                common_name=name,
                san=[x509.UniformResourceIdentifier(ident.uri)],
                eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
                not_after=not_after,
            )
            cert_path, key_path = self.client_paths(name)
            cert_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(key_path, key_pem(key), KEY_MODE)
            write_atomic(cert_path, cert_pem(cert), PUBLIC_MODE)
            rec = {
                "name": name,
                "domain": domain,
                "identity": ident.uri,
                "serial": cert.serial_number,
                "issued_at": _now().isoformat(),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "revoked": False,
                "revoked_at": None,
            }
            index["certificates"].append(rec)
            self._save_index(index)
        log.debug("issued %s serial %x", ident.uri, cert.serial_number)
        return self._to_issued(rec)

    def revoke(self, name: str) -> IssuedCert:
        """Revoke the current certificate of ``name``; the running core sees it via the CRL."""
        with self._locked():
            index = self._load_index()
            current = self._current(index, name)
            if current is None:
                raise PkiError(f"no certificate was issued to {name!r}")
            if current["revoked"]:
                raise PkiError(
                    f"certificate of {name!r} (serial {current['serial']:x}) is already revoked"
                )
            self._mark_revoked(current)
            # CRL before index: a crash in between leaves the certificate dead, not alive.
            self._write_crl(index)
            self._save_index(index)
        log.debug("revoked %s serial %x", name, current["serial"])
        return self._to_issued(current)

    def list(self) -> list[IssuedCert]:
        """Every client certificate ever issued, oldest first (replaced ones show as revoked)."""
        return [self._to_issued(rec) for rec in self._load_index()["certificates"]]

    # --- internals

    def _issue_server(self, index: dict[str, Any]) -> None:
        # The core's certificate lives as long as the CA: an expired server cert would silently
        # lock every client out of the box.
        key = new_key()
        cert = build_leaf(
            self._ca_cert,
            self._key(),
            key,
            common_name=SERVER_NAME,
            san=[
                x509.DNSName(SERVER_NAME),
                x509.UniformResourceIdentifier(Identity(self._site, "trusted", SERVER_NAME).uri),
            ],
            eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            not_after=self._ca_cert.not_valid_after_utc,
        )
        write_atomic(self.server_key_path, key_pem(key), KEY_MODE)
        write_atomic(self.server_cert_path, cert_pem(cert), PUBLIC_MODE)
        index["server"] = {
            "serial": format(cert.serial_number, "x"),
            "not_after": cert.not_valid_after_utc.isoformat(),
        }

    def _key(self) -> ec.EllipticCurvePrivateKey:
        if self._ca_key is None:
            data = read_file(self.ca_key_path, "CA key")
            try:
                key = serialization.load_pem_private_key(data, password=None)
            except (ValueError, TypeError, UnsupportedAlgorithm) as err:
                raise PkiError(f"CA key {self.ca_key_path} is corrupt: {err}") from err
            if not isinstance(key, ec.EllipticCurvePrivateKey) or (
                key.public_key() != self._ca_cert.public_key()
            ):
                raise PkiError(f"CA key {self.ca_key_path} does not match {self.ca_cert_path}")
            self._ca_key = key
        return self._ca_key

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Two `smx pki` commands at once must not lose each other's index or CRL update.
        try:
            fd = os.open(self._dir / ".lock", os.O_WRONLY | os.O_CREAT, KEY_MODE)
        except OSError as err:
            raise PkiError(f"cannot lock PKI directory {self._dir}: {err.strerror}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _load_index(self) -> dict[str, Any]:
        path = self.index_path
        if self._verify_only:
            raise PkiError(f"the site CA in {self._dir} was opened for verifying only")
        try:
            raw = json.loads(read_file(path, "PKI index"))
            index = {
                "version": raw["version"],
                "site": raw["site"],
                "crl_number": int(raw["crl_number"]),
                "certificates": [_record_from_json(r) for r in raw["certificates"]],
            }
            if "server" in raw:
                index["server"] = raw["server"]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise PkiError(f"PKI index {path} is corrupt: {err!r}") from err
        if index["version"] != _INDEX_VERSION:
            raise PkiError(f"PKI index {path} has unsupported version {index['version']!r}")
        return index

    def _save_index(self, index: dict[str, Any]) -> None:
        out = dict(index)
        out["certificates"] = [_record_to_json(r) for r in index["certificates"]]
        data = json.dumps(out, indent=2, sort_keys=True).encode() + b"\n"
        write_atomic(self.index_path, data, KEY_MODE)  # who holds which name: the CA's own

    @staticmethod
    def _current(index: dict[str, Any], name: str) -> dict[str, Any] | None:
        for rec in reversed(index["certificates"]):
            if rec["name"] == name:
                return rec
        return None

    @staticmethod
    def _mark_revoked(rec: dict[str, Any]) -> None:
        rec["revoked"] = True
        rec["revoked_at"] = _now().isoformat()

    def _write_crl(self, index: dict[str, Any]) -> None:
        """Rebuild, sign and atomically replace crl.pem from every revoked record of the index."""
        index["crl_number"] += 1
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._ca_cert.subject)
            .last_update(now - BACKDATE)
            # Revocation is pushed by rewriting the file, not by expiry; the core does not
            # require a fresh CRL, so nextUpdate is simply the end of the CA's life.
            .next_update(max(self._ca_cert.not_valid_after_utc, now + dt.timedelta(days=1)))
            .add_extension(x509.CRLNumber(index["crl_number"]), critical=False)
        )
        for rec in index["certificates"]:
            if rec["revoked"]:
                revoked_at = dt.datetime.fromisoformat(rec["revoked_at"] or now.isoformat())
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(rec["serial"])
                    .revocation_date(revoked_at)
                    .build()
                )
        crl = builder.sign(self._key(), hashes.SHA256())
        write_atomic(self.crl_path, crl.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)

    def _to_issued(self, rec: dict[str, Any]) -> IssuedCert:
        cert_path, key_path = self.client_paths(rec["name"])
        return IssuedCert(
            name=rec["name"],
            domain=rec["domain"],
            identity=rec["identity"],
            serial=rec["serial"],
            not_after=dt.datetime.fromisoformat(rec["not_after"]).astimezone(dt.UTC),
            revoked=rec["revoked"],
            cert_path=cert_path,
            key_path=key_path,
        )
