"""The vocabulary of the RBAC policy: verbs, rules, roles, bindings and PolicyError.

Plain immutable values shared by the parser (trusted.policy.parser) and the evaluator
(trusted.policy, which also documents the file format).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from smx.identity import SCHEME
from smx.toml_text import toml_list, toml_str

__all__ = [
    "METHOD_VERBS",
    "NO_VERB",
    "VERBS",
    "WILDCARD_IDENTITY",
    "Binding",
    "PolicyError",
    "Role",
    "Rule",
]

VERBS: tuple[str, ...] = ("read", "write", "request", "control", "admin")

# The entry of a method any authenticated caller may use: it needs no verb.
NO_VERB = "none"

# The verb each RPC needs, keyed by full gRPC method name: the one table the core's RPC edge
# authorizes every call with (trusted.core.rpc). A method missing here is refused to everyone,
# so a new RPC is closed until someone decides which right it needs. The caller must hold the
# verb on at least one point (admin: at all) before the handler runs; the handler then checks
# each point it touches against the same verb.
METHOD_VERBS: Mapping[str, str] = {
    "/smx.v1.PointService/GetPoints": "read",
    "/smx.v1.PointService/ListPoints": "read",
    "/smx.v1.PointService/WatchPoints": "read",
    "/smx.v1.PointService/ReadHistory": "read",
    "/smx.v1.PointService/DeclarePoints": "write",
    "/smx.v1.PointService/WritePoints": "write",
    "/smx.v1.PointService/StreamWritePoints": "write",
    # With read on some point, a requester also sees its own requests on points it may not
    # read; a requester holding only `request` follows its setpoints on WatchSetpointOutcomes.
    "/smx.v1.ControlService/GetSetpoint": "read",
    "/smx.v1.ControlService/RequestSetpoint": "request",
    "/smx.v1.ControlService/WatchSetpointOutcomes": "request",
    "/smx.v1.ControlService/WatchSetpoints": "control",
    "/smx.v1.ControlService/ReportSetpoint": "control",
    "/smx.v1.IdentityService/WhoAmI": NO_VERB,
    "/smx.v1.AdminService/ListAuditRecords": "admin",
    "/smx.v1.AdminService/ReloadPolicy": "admin",
    "/smx.v1.AdminService/ListClients": "admin",
}

# The one wildcard binding form, `spiffe://<site>/<domain>/*`; groups: site, domain.
WILDCARD_IDENTITY = re.compile(re.escape(SCHEME) + r"([^/]+)/([^/]+)/\*")


class PolicyError(ValueError):
    """An invalid policy file; the message names the file and the offending key."""

    def __init__(self, source: str, path: str, message: str) -> None:
        self.source = source
        self.path = path
        super().__init__(f"{source}: {path}: {message}" if path else f"{source}: {message}")


@dataclass(frozen=True, slots=True)
class Rule:
    """Verbs granted on the names matching `points` and none of `excluded` (the rule's
    `except` key); patterns may still hold `{name}` / `{site}` placeholders. An exclusion
    narrows its own rule only: another rule may still grant what it leaves out."""

    verbs: tuple[str, ...]
    points: tuple[str, ...]
    excluded: tuple[str, ...] = ()

    def toml(self) -> str:
        """The rule as an inline TOML table, as the policy file holds it."""
        points = f", points = {toml_list(self.points)}" if self.points else ""
        but = f", except = {toml_list(self.excluded)}" if self.excluded else ""
        return f"{{ verbs = {toml_list(self.verbs)}{points}{but} }}"


def _rules_toml(rules: tuple[Rule, ...]) -> list[str]:
    return ["rules = [", *(f"  {r.toml()}," for r in rules), "]"] if rules else []


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    description: str
    rules: tuple[Rule, ...]
    source: str = field(default="", compare=False)  # the file that defines it

    def toml(self) -> str:
        """The role as a `[roles.NAME]` table of a policy file."""
        lines = [f"[roles.{self.name}]"]
        if self.description:
            lines.append(f"description = {toml_str(self.description)}")
        return "\n".join([*lines, *_rules_toml(self.rules)]) + "\n"


@dataclass(frozen=True, slots=True)
class Binding:
    """Roles and extra rules for one identity URI, or for `spiffe://<site>/<domain>/*`."""

    identity: str
    roles: tuple[str, ...]
    rules: tuple[Rule, ...]
    description: str = ""
    source: str = field(default="", compare=False)  # the file that holds it

    @property
    def is_wildcard(self) -> bool:
        return self.identity.endswith("/*")

    def toml(self) -> str:
        """The binding as a `[[bindings]]` table of a policy file."""
        lines = ["[[bindings]]", f"identity = {toml_str(self.identity)}"]
        lines.append(f"roles = {toml_list(self.roles)}")
        lines += _rules_toml(self.rules)
        if self.description:
            lines.append(f"description = {toml_str(self.description)}")
        return "\n".join(lines) + "\n"
