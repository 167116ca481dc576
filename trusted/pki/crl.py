"""The running core's view of the site PKI: peer certificate parsing and the revocation list.

The core never writes the PKI directory (`smx pki` does, see trusted.pki); it parses each peer's
PEM and checks its serial against ``crl.pem``, which `smx pki revoke` rewrites in place.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeGuard, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPublicKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.hazmat.primitives.serialization import Encoding

from trusted.pki.files import PkiError, read_file, write_atomic

__all__ = ["NUMBER_FILE_MODE", "RevocationList", "load_certificate_pem"]

log = logging.getLogger(__name__)

# The key classes that can sign, as the installed cryptography defines them.
_SIGNING_KEY_TYPES = get_args(CertificateIssuerPublicKeyTypes)

# The number file lives in the core's private data directory: 0600 like the history and the
# audit log there (trusted.core.site_files), written atomically (temp file, fsync, rename).
NUMBER_FILE_MODE = 0o600


@functools.lru_cache(maxsize=256)
def load_certificate_pem(data: bytes) -> x509.Certificate:
    """Parse a PEM certificate; cached since the core calls it per RPC with the peer's PEM.

    Raises ValueError (like cryptography itself) on data that is not a PEM certificate.
    """
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as err:
        raise ValueError(f"not a PEM certificate ({len(data)} bytes): {err}") from err


def _can_sign(key: CertificatePublicKeyTypes) -> TypeGuard[CertificateIssuerPublicKeyTypes]:
    """False for key-agreement keys (X25519, X448, ML-KEM): they cannot have signed a CRL."""
    return isinstance(key, _SIGNING_KEY_TYPES)


class RevocationList:
    """The revoked serials of ``crl_path``, reloaded when the file changes.

    Cheap enough to call on every RPC: at most one stat every ``min_interval`` seconds, and a
    parse only when the file's inode, mtime or size changed. A CRL that is corrupt, not signed
    by the CA, without a CRLNumber, or whose CRLNumber does not increase over the one in force
    (an older list put back, which would revive revoked certificates) is logged and ignored;
    the previous list stays in force. The first load must succeed, so a core never starts
    without knowing what is revoked.

    With ``number_file``, the highest CRLNumber accepted is also kept on disk (JSON with the
    number and the SHA-256 of the CA certificate, mode 0600, replaced atomically) before a list
    is taken into force, so the check survives a restart: the first load refuses (PkiError) a
    CRL whose number is lower than the one kept, and a number file that cannot be read. A number
    kept for another CA (the site CA was re-created) does not apply: it is replaced, with one
    WARNING line.
    """

    def __init__(
        self,
        crl_path: Path,
        ca_cert: x509.Certificate,
        *,
        min_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        number_file: Path | None = None,
    ) -> None:
        self._path = Path(crl_path)
        self._ca_cert = ca_cert
        self._ca_sha256 = hashlib.sha256(ca_cert.public_bytes(Encoding.DER)).hexdigest()
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._number_file = None if number_file is None else Path(number_file)
        stamp = self._stat()
        if stamp is None:
            raise PkiError(f"CRL not found: {self._path}")
        # Raises PkiError: refuse to start on a bad CRL.
        self._number, self._serials = self._parse()
        kept = self._read_number()
        if kept is not None and self._number < kept:
            raise PkiError(
                f"CRL {self._path} refused: its CRLNumber {self._number} is lower than "
                f"{kept}, the highest this core has accepted (kept in {self._number_file}): "
                "an older list put back would revive revoked certificates; the core does not "
                "start until the current crl.pem is put back"
            )
        if kept is None or self._number > kept:
            self._write_number(self._number)
        # Counts the lists taken into force, so a watcher can tell that the list changed.
        self._version = 0
        # None while the file is missing, so its reappearance counts as a change.
        self._stamp: tuple[int, int, int] | None = stamp
        self._next_check = clock() + min_interval

    @property
    def path(self) -> Path:
        return self._path

    @property
    def revoked_serials(self) -> frozenset[int]:
        return self._serials

    @property
    def number(self) -> int:
        """The CRLNumber of the list in force."""
        return self._number

    @property
    def version(self) -> int:
        """Incremented each time a new list is taken into force."""
        return self._version

    def is_revoked(self, serial: int) -> bool:
        self.refresh()
        return serial in self._serials

    def refresh(self, *, force: bool = False) -> None:
        """Reload the CRL if its file changed (at most once per ``min_interval`` unless forced)."""
        with self._lock:
            now = self._clock()
            if not force and now < self._next_check:
                return
            self._next_check = now + self._min_interval
            stamp = self._stat()
            if stamp is None:
                if self._stamp is not None:
                    log.error("CRL %s disappeared; keeping the previous list", self._path)
                self._stamp = None
                return
            if stamp == self._stamp:
                return
            # Remember the stamp even on failure, so one bad file logs one error, not one per RPC.
            self._stamp = stamp
            try:
                number, serials = self._parse()
            except PkiError as err:
                log.error("%s; keeping the previous revocation list", err)
                return
            if number <= self._number:
                log.error(
                    "CRL %s refused: its CRLNumber %d does not increase over %d in force "
                    "(an older list put back?); keeping the previous revocation list",
                    self._path,
                    number,
                    self._number,
                )
                return
            if serials != self._serials:
                log.info("CRL %s reloaded: %d revoked certificate(s)", self._path, len(serials))
            # Kept before it is in force; a failure is logged and the list is taken anyway: a
            # revocation must apply now, the number is kept again with the next list.
            self._write_number(number)
            self._number, self._serials = number, serials
            self._version += 1

    def _read_number(self) -> int | None:
        """The highest CRLNumber kept for this CA, None when there is none (or no file)."""
        path = self._number_file
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise PkiError(
                f"cannot read the CRL number file {path}: {err.strerror or err}; the core does "
                "not start without knowing the highest CRLNumber it accepted"
            ) from err
        try:
            kept = json.loads(data)
        except ValueError:
            kept = None
        number = kept.get("crl_number") if isinstance(kept, dict) else None
        ca = kept.get("ca_sha256") if isinstance(kept, dict) else None
        if type(number) is not int or number < 0 or not isinstance(ca, str):
            raise PkiError(
                f"CRL number file {path} is corrupt (expected JSON with crl_number and "
                "ca_sha256); the core does not start without knowing the highest CRLNumber it "
                "accepted: make sure crl.pem is the current list, then delete the file"
            )
        if ca != self._ca_sha256:
            log.warning(
                "CRL number file %s was kept for another site CA (re-created?); its number %d "
                "does not apply and is replaced",
                path,
                number,
            )
            return None
        return number

    def _write_number(self, number: int) -> None:
        if self._number_file is None:
            return
        data = json.dumps({"crl_number": number, "ca_sha256": self._ca_sha256}) + "\n"
        try:
            write_atomic(self._number_file, data.encode(), NUMBER_FILE_MODE)
        except OSError as err:
            log.error(
                "cannot keep CRLNumber %d in %s (%s): after a restart an older CRL could be taken",
                number,
                self._number_file,
                err.strerror or err,
            )

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _parse(self) -> tuple[int, frozenset[int]]:
        data = read_file(self._path, "CRL")
        try:
            crl = x509.load_pem_x509_crl(data)
        except ValueError as err:
            raise PkiError(f"CRL {self._path} is corrupt: {err}") from err
        if crl.issuer != self._ca_cert.subject:
            raise PkiError(f"CRL {self._path} was issued by {crl.issuer.rfc4514_string()}")
        ca_key = self._ca_cert.public_key()
        valid = False
        if _can_sign(ca_key):
            try:
                valid = crl.is_signature_valid(ca_key)
            except (InvalidSignature, TypeError, UnsupportedAlgorithm):
                valid = False
        if not valid:
            raise PkiError(f"CRL {self._path} is not signed by the site CA")
        try:
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound:
            in_force = getattr(self, "_number", None)
            raise PkiError(
                f"CRL {self._path} refused: it has no CRLNumber"
                + (f" (CRLNumber in force: {in_force})" if in_force is not None else "")
            ) from None
        return number, frozenset(r.serial_number for r in crl)
