"""The vocabulary of the RBAC policy: verbs, rules, roles, bindings and PolicyError.

Plain immutable values shared by the parser (trusted.policy.parser) and the evaluator
(trusted.policy, which also documents the file format).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "METHOD_VERBS",
    "VERBS",
    "WILDCARD_IDENTITY",
    "Binding",
    "PolicyError",
    "Role",
    "Rule",
]

VERBS: tuple[str, ...] = ("read", "write", "request", "control", "admin")

# Which verb each RPC needs (IdentityService.WhoAmI needs none: any authenticated caller).
METHOD_VERBS: Mapping[str, str] = {
    "GetPoints": "read",
    "ListPoints": "read",
    "WatchPoints": "read",
    "ReadHistory": "read",
    "GetSetpoint": "read",
    "WritePoints": "write",
    "DeclarePoints": "write",
    "RequestSetpoint": "request",
    "WatchSetpoints": "control",
    "ReportSetpoint": "control",
    "QueryAudit": "admin",
    "ReloadPolicy": "admin",
    "ListClients": "admin",
}

# The one wildcard binding form, `spiffe://<site>/<domain>/*`; groups: site, domain.
WILDCARD_IDENTITY = re.compile(r"spiffe://([^/]+)/([^/]+)/\*")


class PolicyError(ValueError):
    """An invalid policy file; the message names the file and the offending key."""

    def __init__(self, source: str, path: str, message: str) -> None:
        self.source = source
        self.path = path
        super().__init__(f"{source}: {path}: {message}" if path else f"{source}: {message}")


@dataclass(frozen=True, slots=True)
class Rule:
    """Verbs granted on patterns; patterns may still hold `{name}` / `{site}` placeholders."""

    verbs: tuple[str, ...]
    points: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    description: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class Binding:
    """Roles and extra rules for one identity URI, or for `spiffe://<site>/<domain>/*`."""

    identity: str
    roles: tuple[str, ...]
    rules: tuple[Rule, ...]
    description: str = ""

    @property
    def is_wildcard(self) -> bool:
        return self.identity.endswith("/*")
