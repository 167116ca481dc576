"""Where an extension finds its core, its certificate and its settings.

The supervisor (`smx run`) starts every extension with these environment variables:
SMX_SITE, SMX_NAME, SMX_DOMAIN, SMX_TARGET, SMX_CA, SMX_CERT, SMX_KEY, SMX_DEVICES, SMX_CONFIG
(a JSON file with the extension's `config` table) and SMX_HEALTH_FILE. An extension started by
hand can be given the same variables, or an `ExtensionEnv` built in code (tests do that).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from smx.client import Credentials

__all__ = ["ExtensionEnv", "SetupError"]

REQUIRED = ("SMX_NAME", "SMX_TARGET", "SMX_CA", "SMX_CERT", "SMX_KEY")


class SetupError(Exception):
    """The extension cannot start: a missing variable or file, or a certificate that cannot
    work. The message says what to do."""


@dataclass(frozen=True)
class ExtensionEnv:
    name: str
    target: str
    credentials: Credentials
    site: str = ""
    domain: str = "trusted"
    devices: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    health_file: Path | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> ExtensionEnv:
        env = os.environ if environ is None else environ
        missing = [k for k in REQUIRED if not env.get(k)]
        if missing:
            raise SetupError(
                f"missing environment variables {', '.join(missing)}: start the extension with "
                "`smx run` (which sets them), or set them by hand (see docs/EXTENSIONS.md)"
            )
        config: dict[str, Any] = {}
        if env.get("SMX_CONFIG"):
            path = Path(env["SMX_CONFIG"])
            try:
                config = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise SetupError(f"SMX_CONFIG {path}: cannot read the JSON config: {err}") from err
            if not isinstance(config, dict):
                raise SetupError(f"SMX_CONFIG {path}: expected a JSON object")
        name = env["SMX_NAME"]
        devices = tuple(d for d in env.get("SMX_DEVICES", "").split(",") if d) or (name,)
        return cls(
            name=name,
            target=env["SMX_TARGET"],
            credentials=Credentials(
                Path(env["SMX_CA"]), Path(env["SMX_CERT"]), Path(env["SMX_KEY"])
            ),
            site=env.get("SMX_SITE", ""),
            domain=env.get("SMX_DOMAIN", "trusted"),
            devices=devices,
            config=config,
            health_file=Path(env["SMX_HEALTH_FILE"]) if env.get("SMX_HEALTH_FILE") else None,
        )

    def check_certificate(self, now: dt.datetime | None = None) -> x509.Certificate:
        """Catch what the TLS handshake would only report as "unavailable": missing files, an
        expired certificate, or one not issued by the site CA."""
        creds = self.credentials
        try:
            creds.check()
        except FileNotFoundError as err:
            raise SetupError(
                f"{err}; provision it with `smx pki issue {self.name} --domain {self.domain}`"
            ) from err
        try:
            cert = x509.load_pem_x509_certificate(creds.cert.read_bytes())
            ca = x509.load_pem_x509_certificate(creds.ca.read_bytes())
        except ValueError as err:
            raise SetupError(f"{creds.cert} or {creds.ca} is not a PEM certificate") from err
        now = now or dt.datetime.now(dt.UTC)
        if now > cert.not_valid_after_utc:
            raise SetupError(
                f"certificate {creds.cert} expired on {cert.not_valid_after_utc:%Y-%m-%d}: "
                f"re-issue it with `smx pki issue {self.name} --domain {self.domain} --replace`"
            )
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as err:
            raise SetupError(
                f"certificate {creds.cert} was not issued by the site CA {creds.ca}: "
                "the core would refuse it"
            ) from err
        return cert
