"""The running core's view of the site PKI: peer certificate parsing and the revocation list.

The core never writes the PKI directory (`smx pki` does, see trusted.pki); it parses each peer's
PEM and checks its serial against ``crl.pem``, which `smx pki revoke` rewrites in place.
"""

from __future__ import annotations

import functools
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

from trusted.pki.files import PkiError, read_file

__all__ = ["RevocationList", "load_certificate_pem"]

log = logging.getLogger(__name__)

# The key classes that can sign, as the installed cryptography defines them.
_SIGNING_KEY_TYPES = get_args(CertificateIssuerPublicKeyTypes)


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
    """

    def __init__(
        self,
        crl_path: Path,
        ca_cert: x509.Certificate,
        *,
        min_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = Path(crl_path)
        self._ca_cert = ca_cert
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        stamp = self._stat()
        if stamp is None:
            raise PkiError(f"CRL not found: {self._path}")
        # Raises PkiError: refuse to start on a bad CRL.
        self._number, self._serials = self._parse()
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
            self._number, self._serials = number, serials
            self._version += 1

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
