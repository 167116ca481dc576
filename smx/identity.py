"""Client identity: exactly one URI SAN `spiffe://<site>/<domain>/<name>` per certificate."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smx.names import DEVICE_ID

if TYPE_CHECKING:  # the parsing side (the core) has cryptography loaded already
    from cryptography import x509

__all__ = [
    "DOMAINS",
    "SCHEME",
    "SERVER_NAME",
    "Identity",
    "IdentityError",
    "identity_from_certificate",
    "site_uri",
]

DOMAINS = ("trusted", "untrusted")
SCHEME = "spiffe://"
# The core's name: the DNS name of its server certificate (clients name it explicitly, as over
# a Unix socket the target name would be the socket path) and its own identity's name,
# spiffe://<site>/trusted/smxcore, so no client certificate may be issued under it.
SERVER_NAME = "smxcore"
# Site and client names share the device-id grammar of docs/DATA-MODEL.md, so a client name can be
# used as the device prefix of the points it owns.
_NAME = DEVICE_ID
_SITE = r"[a-z0-9][a-z0-9_.-]{0,62}"
_URI = re.compile(rf"{re.escape(SCHEME)}({_SITE})/(trusted|untrusted)/({_NAME})")


def site_uri(site: str) -> str:
    """`spiffe://<site>`: the site CA's URI; every identity of the site (and every wildcard
    `.../<domain>/*` of a policy) is below it."""
    return f"{SCHEME}{site}"


class IdentityError(ValueError):
    """A certificate or URI that does not carry exactly one valid identity."""


@dataclass(frozen=True, slots=True)
class Identity:
    site: str
    domain: str
    name: str

    @property
    def uri(self) -> str:
        return f"{site_uri(self.site)}/{self.domain}/{self.name}"

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, uri: str) -> Identity:
        m = _URI.fullmatch(uri)
        if m is None:
            raise IdentityError(
                f"not an SMX identity: {uri!r} (expected spiffe://<site>/trusted|untrusted/<name>)"
            )
        return cls(*m.groups())

    @classmethod
    def check_name(cls, name: str) -> str:
        if re.fullmatch(_NAME, name) is None:
            raise IdentityError(f"invalid client name {name!r}: use {DEVICE_ID}")
        return name

    @classmethod
    def check_site(cls, site: str) -> str:
        if re.fullmatch(_SITE, site) is None:
            raise IdentityError(f"invalid site id {site!r}: use [a-z0-9][a-z0-9_.-]{{0,62}}")
        return site


def identity_from_certificate(cert: x509.Certificate) -> Identity:
    """The identity of a certificate; refuses zero or several URI SANs."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if len(uris) != 1:
        raise IdentityError(f"certificate must carry exactly one URI SAN, found {len(uris)}")
    return Identity.parse(uris[0])
