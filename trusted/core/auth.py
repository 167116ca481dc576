"""Who is calling, and may they: certificate checks on every call, then the RBAC policy.

The TLS handshake already refuses clients without a certificate or from another CA. What the
handshake cannot know is checked here, on every call, so it takes effect on open connections:
revocation (the CRL is re-read when `smx pki revoke` rewrites it), expiry during a long-lived
connection, and exactly one well-formed URI SAN of this site.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import grpc

from smx.identity import Identity, IdentityError, identity_from_certificate
from trusted.core.audit import AuditLog
from trusted.core.errors import CoreError
from trusted.pki import RevocationList, load_certificate_pem
from trusted.policy import Policy

__all__ = ["Caller", "Gate", "ClientStats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Caller:
    identity: Identity
    uri: str
    serial: int
    not_after: float  # unix seconds


@dataclass(slots=True)
class ClientStats:
    first_seen: float
    last_seen: float
    calls: int = 0
    open_streams: int = 0


@dataclass
class Gate:
    site: str
    policy: Policy
    revocations: RevocationList
    audit: AuditLog
    clients: dict[str, ClientStats] = field(default_factory=dict)
    # peer PEM -> Caller or the CoreError it raises; certificates are few and long-lived.
    _certs: dict[bytes, Caller | CoreError] = field(default_factory=dict)

    def authenticate(self, context: grpc.aio.ServicerContext, method: str) -> Caller:
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            # Unreachable with require_client_auth, kept as a guard for a misconfigured port.
            raise self._deny("", method, "", CoreError("IDENTITY_INVALID", "no client certificate"))
        pem = pems[0]
        caller = self._certs.get(pem)
        if caller is None:
            caller = self._certs[pem] = self._parse(pem)
            if len(self._certs) > 4096:
                self._certs.clear()
        if isinstance(caller, CoreError):
            raise self._deny("", method, "", caller)
        self.recheck(caller, method)
        now = time.time()
        stats = self.clients.get(caller.uri)
        if stats is None:
            stats = self.clients[caller.uri] = ClientStats(first_seen=now, last_seen=now)
        stats.calls += 1
        stats.last_seen = now
        return caller

    def recheck(self, caller: Caller, method: str) -> None:
        """Expiry and revocation; also called while a stream is open, so a revoked client's
        watch ends instead of flowing on."""
        if time.time() > caller.not_after:
            err = CoreError("CERTIFICATE_EXPIRED", "client certificate has expired")
            raise self._deny(caller.uri, method, "", err)
        if self.revocations.is_revoked(caller.serial):
            err = CoreError("CERTIFICATE_REVOKED", f"certificate of {caller.uri} is revoked")
            raise self._deny(caller.uri, method, "", err)

    def _parse(self, pem: bytes) -> Caller | CoreError:
        try:
            cert = load_certificate_pem(pem)
            identity = identity_from_certificate(cert)
        except (IdentityError, ValueError) as err:
            return CoreError("IDENTITY_INVALID", f"certificate refused: {err}")
        if identity.site != self.site:
            return CoreError(
                "WRONG_SITE", f"certificate is for site {identity.site!r}, this is {self.site!r}"
            )
        not_after = cert.not_valid_after_utc.timestamp()
        return Caller(identity, identity.uri, cert.serial_number, not_after)

    def check(self, caller: Caller, verb: str, method: str, point: str | None = None) -> None:
        if not self.policy.allows(caller.identity, verb, point):
            target = f" on {point}" if point else ""
            err = CoreError(
                "PERMISSION_NOT_GRANTED",
                f"{caller.uri} may not {verb}{target}",
                verb=verb,
                **({"point": point} if point else {}),
            )
            raise self._deny(caller.uri, method, point or "", err)

    def refused(self, err: CoreError, identity: str, method: str) -> None:
        """Audit a refusal (called once per refused call, by rpc.py)."""
        self.audit.append(
            "denied",
            identity or err.identity,
            method=method,
            point=err.metadata.get("point", ""),
            reason=err.reason,
            detail={"message": err.message},
        )

    def _deny(self, identity: str, method: str, point: str, err: CoreError) -> CoreError:
        err.identity = identity
        if point:
            err.metadata.setdefault("point", point)
        log.warning(
            "denied identity=%s method=%s point=%s reason=%s",
            identity or "-",
            method,
            point or "-",
            err.reason,
        )
        return err
