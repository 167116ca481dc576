"""Who is calling, and may they: certificate checks on every call, then the RBAC policy.

The TLS handshake already refuses clients without a certificate or from another CA. What the
handshake cannot know is checked here, on every call, so it takes effect on open connections:
revocation (the CRL is re-read when `smx pki revoke` rewrites it), expiry during a long-lived
connection, and exactly one well-formed URI SAN of this site.

Authorization has two steps, so that no handler can forget the first: the RPC edge
(trusted.core.rpc) resolves the method's verb in the one table (`METHOD_VERBS`) and
`Gate.admit` refuses a caller that holds that verb on nothing; the handler then receives a
`Caller` bound to that verb and checks each point it touches with `Caller.require` / `may`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from smx.identity import Identity, IdentityError, identity_from_certificate
from trusted.core.audit import AuditLog
from trusted.core.errors import CoreError
from trusted.core.refusal_log import RefusalLog
from trusted.core.stream_registry import StreamRegistry
from trusted.pki import CORE_NAMES, RevocationList, load_certificate_pem
from trusted.policy import NO_VERB, Policy

__all__ = ["Caller", "Gate", "ClientStats", "Peer"]


@dataclass(frozen=True, slots=True)
class Peer:
    """What a client certificate proves (cached per certificate)."""

    identity: Identity
    uri: str
    serial: int
    not_after: float  # unix seconds


@dataclass(frozen=True, slots=True)
class Caller:
    """One admitted call: who, which method, and the verb the method needs, with the per-point
    checks bound to them. Handlers never name a verb or a method themselves."""

    peer: Peer
    method: str
    verb: str
    gate: Gate = field(repr=False, compare=False)

    @property
    def identity(self) -> Identity:
        return self.peer.identity

    @property
    def uri(self) -> str:
        return self.peer.uri

    def may(self, point: str) -> bool:
        """Does the caller hold the method's verb on `point`? Reads the policy in force now,
        so a reload applies to open streams."""
        return self.verb == NO_VERB or self.gate.policy.allows(self.peer.identity, self.verb, point)

    def require(self, point: str) -> None:
        """Refuse the call (PERMISSION_NOT_GRANTED, audited by the edge) unless `may(point)`."""
        if not self.may(point):
            raise self.gate.not_granted(self.peer, self.method, self.verb, point)


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
    # peer PEM -> Peer or the CoreError it raises; certificates are few and long-lived.
    _certs: dict[bytes, Peer | CoreError] = field(default_factory=dict)
    # Refusals reach the core's log as rate-limited summaries per (identity, reason).
    refusal_log: RefusalLog = field(default_factory=RefusalLog)
    # Open streams by caller, re-checked on a timer (trusted.core.stream_registry).
    streams: StreamRegistry = field(default_factory=StreamRegistry)

    def admit(self, context: grpc.aio.ServicerContext, method: str, verb: str | None) -> Caller:
        """Authenticate, then the coarse right: the caller must hold `verb` on at least one
        point (admin: at all). `verb` None means the method has no entry in the table: it is
        refused to everyone rather than served unchecked."""
        peer = self.authenticate(context, method)
        if verb is None:
            err = CoreError(
                "METHOD_UNGUARDED", f"{method} has no authorization entry; refused to everyone"
            )
            raise self._deny(peer.uri, method, "", err)
        self._authorize(peer, method, verb)
        return Caller(peer, method, verb, self)

    def readmit(self, caller: Caller) -> None:
        """One more call on an admitted stream of calls (StreamWritePoints): checked and counted
        as `admit` checks and counts a call, against the certificate and policy in force."""
        peer = caller.peer
        self.recheck(peer, caller.method)
        self._count(peer)
        self._authorize(peer, caller.method, caller.verb)

    def _authorize(self, peer: Peer, method: str, verb: str) -> None:
        if verb != NO_VERB and not self.policy.allows(peer.identity, verb, None):
            raise self.not_granted(peer, method, verb, None)

    def authenticate(self, context: grpc.aio.ServicerContext, method: str) -> Peer:
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            # Unreachable with require_client_auth, kept as a guard for a misconfigured port.
            raise self._deny("", method, "", CoreError("IDENTITY_INVALID", "no client certificate"))
        pem = pems[0]
        peer = self._certs.get(pem)
        if peer is None:
            peer = self._certs[pem] = self._parse(pem)
            if len(self._certs) > 4096:
                self._certs.clear()
        if isinstance(peer, CoreError):
            raise self._deny("", method, "", peer)
        self.recheck(peer, method)
        self._count(peer)
        return peer

    def _count(self, peer: Peer) -> None:
        now = time.time()
        stats = self.clients.get(peer.uri)
        if stats is None:
            stats = self.clients[peer.uri] = ClientStats(first_seen=now, last_seen=now)
        stats.calls += 1
        stats.last_seen = now

    def recheck(self, peer: Peer, method: str) -> None:
        """Expiry and revocation; also called before every message of a stream, and for every
        caller with open streams by the registry's watchdog (at most 0.5 s apart, at once when
        a new CRL is in force), so a revoked client's streams end even while idle."""
        if time.time() > peer.not_after:
            err = CoreError("CERTIFICATE_EXPIRED", "client certificate has expired")
            raise self._deny(peer.uri, method, "", err)
        if self.revocations.is_revoked(peer.serial):
            err = CoreError("CERTIFICATE_REVOKED", f"certificate of {peer.uri} is revoked")
            raise self._deny(peer.uri, method, "", err)

    def _parse(self, pem: bytes) -> Peer | CoreError:
        try:
            cert = load_certificate_pem(pem)
            identity = identity_from_certificate(cert)
        except (IdentityError, ValueError) as err:
            return CoreError("IDENTITY_INVALID", f"certificate refused: {err}")
        if identity.site != self.site:
            return CoreError(
                "WRONG_SITE", f"certificate is for site {identity.site!r}, this is {self.site!r}"
            )
        if identity.name in CORE_NAMES or _is_server_certificate(cert):
            # The core's own certificate (or one carrying its name) is never a client: a
            # binding such as `trusted/*` must not empower whoever holds the core's key.
            return CoreError(
                "IDENTITY_INVALID",
                f"certificate refused: {identity.uri} is the core's own identity, not a client",
            )
        not_after = cert.not_valid_after_utc.timestamp()
        return Peer(identity, identity.uri, cert.serial_number, not_after)

    def not_granted(self, peer: Peer, method: str, verb: str, point: str | None) -> CoreError:
        target = f" on {point}" if point else ""
        err = CoreError(
            "PERMISSION_NOT_GRANTED",
            f"{peer.uri} may not {verb}{target}",
            verb=verb,
            **({"point": point} if point else {}),
        )
        return self._deny(peer.uri, method, point or "", err)

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
        self.refusal_log.record(identity, err.reason, method, point)
        return err


def _is_server_certificate(cert: x509.Certificate) -> bool:
    """Client certificates of the site CA carry clientAuth only; serverAuth marks the core's."""
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.SERVER_AUTH in eku
