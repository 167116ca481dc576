"""The core's RBAC policy: roles grant verbs on point patterns, bindings give roles to identities.

The file format, the verbs and the default roles are specified in docs/POLICY.md; which verb
each RPC needs is the one table `METHOD_VERBS` (trusted.policy.model).

A Policy is immutable; reloading means loading a new one and swapping it in. Decisions are
cached per (identity, verb, point) in a bounded dict, because allows() runs on every write. The
caches are meant for one event loop (the grpc.aio server), not for concurrent threads.

The value types (Rule, Role, Binding, PolicyError) live in trusted.policy.model and the file
validation in trusted.policy.parser; both are re-exported here.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from smx.identity import Identity, IdentityError
from smx.names import Glob, GlobSet, InvalidName, substitute
from smx.toml_text import toml_list, toml_str
from trusted.policy.model import (
    METHOD_VERBS,
    NO_VERB,
    VERBS,
    WILDCARD_IDENTITY,
    Binding,
    PolicyError,
    Role,
    Rule,
)
from trusted.policy.parser import parse_policy

__all__ = [
    "METHOD_VERBS",
    "NO_VERB",
    "VERBS",
    "Binding",
    "Policy",
    "PolicyError",
    "Role",
    "Rule",
    "default_policy_text",
    "default_roles_text",
    "toml_list",
    "toml_str",
]

log = logging.getLogger(__name__)


_MAX_DECISIONS = 65536
_MAX_IDENTITIES = 1024


@dataclass(slots=True)
class _Grants:
    """What one identity may do, after substitution of its name and site."""

    roles: list[str]
    rules: list[tuple[tuple[str, ...], tuple[str, ...]]]
    sets: dict[str, GlobSet]
    admin: bool


_NO_GRANTS_SET = GlobSet()
_ALL = GlobSet(["**"])


class Policy:
    """A loaded, validated policy; see the module docstring for the file format."""

    def __init__(
        self, roles: Mapping[str, Role], bindings: Sequence[Binding], source: str = "<policy>"
    ) -> None:
        self.source = source
        self._roles: dict[str, Role] = dict(roles)
        self._bindings: tuple[Binding, ...] = tuple(bindings)
        self._exact: dict[str, Binding] = {}
        self._wild: dict[tuple[str, str], Binding] = {}
        for binding in self._bindings:
            undefined = [r for r in binding.roles if r not in self._roles]
            if undefined:
                raise PolicyError(
                    source,
                    "bindings",
                    f"{binding.identity!r} is bound to "
                    f"undefined roles {', '.join(map(repr, undefined))}",
                )
            m = WILDCARD_IDENTITY.fullmatch(binding.identity)
            if m is not None:
                self._wild[(m.group(1), m.group(2))] = binding
            else:
                self._exact[binding.identity] = binding
        self._decisions: dict[tuple[Identity, str, str | None], bool] = {}
        self._grants: dict[Identity, _Grants] = {}

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: Path | str) -> Policy:
        """Load and validate a policy file; every problem is a PolicyError naming the file."""
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise PolicyError(source, "", f"not UTF-8 text: {err}") from err
        except OSError as err:
            reason = err.strerror or str(err)
            raise PolicyError(source, "", f"cannot read policy file: {reason}") from err
        policy = cls.from_toml(text, source)
        log.info(
            "loaded policy %s: %d roles, %d bindings",
            source,
            policy.roles_count,
            policy.bindings_count,
        )
        return policy

    @classmethod
    def from_toml(cls, text: str, source: str = "<string>") -> Policy:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise PolicyError(source, "", f"TOML syntax error: {err}") from err
        except RecursionError as err:  # absurdly deep nesting
            raise PolicyError(source, "", "TOML nesting too deep") from err
        roles, bindings = parse_policy(data, source)
        return cls(roles, bindings, source)

    # ------------------------------------------------------------------ queries

    @property
    def roles_count(self) -> int:
        return len(self._roles)

    @property
    def bindings_count(self) -> int:
        return len(self._bindings)

    @property
    def roles(self) -> Mapping[str, Role]:
        return dict(self._roles)

    @property
    def bindings(self) -> tuple[Binding, ...]:
        return self._bindings

    def allows(self, identity: Identity, verb: str, point: str | None = None) -> bool:
        """May `identity` use `verb` on `point`?

        For `admin` the point is ignored. For another verb with `point=None` the answer is
        whether the verb is granted on at least one pattern (may the caller use the RPC at all;
        filter individual points with `filter_for` or further `allows` calls).
        Raises ValueError for an unknown verb.
        """
        key = (identity, verb, point)
        decision = self._decisions.get(key)
        if decision is not None:
            return decision
        decision = self._decide(identity, verb, point)
        decisions = self._decisions
        if len(decisions) >= _MAX_DECISIONS:
            # Evict the oldest entry (dicts keep insertion order): cheap and bounded.
            decisions.pop(next(iter(decisions)), None)
        decisions[key] = decision
        return decision

    def filter_for(self, identity: Identity, verb: str) -> GlobSet:
        """The patterns `identity` may use `verb` on (empty: none). For admin: `**` or nothing."""
        _check_verb(verb)
        grants = self._grants_for(identity)
        if verb == "admin":
            return _ALL if grants.admin else _NO_GRANTS_SET
        return grants.sets.get(verb, _NO_GRANTS_SET)

    def roles_for(self, identity: Identity) -> list[str]:
        return list(self._grants_for(identity).roles)

    def rules_for(self, identity: Identity) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        """Effective (verbs, patterns) for `identity`, in file order, placeholders substituted."""
        return list(self._grants_for(identity).rules)

    def __repr__(self) -> str:
        return (
            f"Policy(source={self.source!r}, roles={self.roles_count}, "
            f"bindings={self.bindings_count})"
        )

    # ------------------------------------------------------------------ internals

    def _decide(self, identity: Identity, verb: str, point: str | None) -> bool:
        _check_verb(verb)
        grants = self._grants_for(identity)
        if verb == "admin":
            return grants.admin
        globs = grants.sets.get(verb)
        if globs is None:
            return False
        if point is None:
            return True
        return globs.match(point)

    def _grants_for(self, identity: Identity) -> _Grants:
        grants = self._grants.get(identity)
        if grants is None:
            grants = self._compute_grants(identity)
            if len(self._grants) >= _MAX_IDENTITIES:
                self._grants.pop(next(iter(self._grants)), None)
            self._grants[identity] = grants
        return grants

    def _compute_grants(self, identity: Identity) -> _Grants:
        bindings = [
            b
            for b in (
                self._exact.get(identity.uri),
                self._wild.get((identity.site, identity.domain)),
            )
            if b is not None
        ]
        roles: list[str] = []
        raw_rules: list[Rule] = []
        for binding in bindings:
            for role_name in binding.roles:
                if role_name not in roles:
                    roles.append(role_name)
                raw_rules.extend(self._roles[role_name].rules)
            raw_rules.extend(binding.rules)
        rules: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
        patterns: dict[str, list[str]] = {}
        admin = False
        for rule in raw_rules:
            points: list[str] = []
            for raw in rule.points:
                try:
                    pattern = substitute(raw, name=identity.name, site=identity.site)
                    Glob(pattern)
                except InvalidName as err:
                    # Only reachable with an Identity built around the grammar: deny, loudly.
                    log.warning(
                        "policy %s: skipping pattern for %s: %s", self.source, identity, err
                    )
                    continue
                points.append(pattern)
            rules.append((rule.verbs, tuple(points)))
            for verb in rule.verbs:
                if verb == "admin":
                    admin = True
                elif points:
                    patterns.setdefault(verb, []).extend(points)
        sets = {verb: GlobSet(p) for verb, p in patterns.items()}
        return _Grants(roles=roles, rules=rules, sets=sets, admin=admin)


def _check_verb(verb: str) -> None:
    if verb not in VERBS:
        raise ValueError(f"unknown verb {verb!r} (use one of {', '.join(VERBS)})")


# --------------------------------------------------------------------------- default policy


def default_roles_text() -> str:
    """The shipped `default_policy.toml`: the default roles, no bindings."""
    package = resources.files(__package__ or "trusted")
    return package.joinpath("default_policy.toml").read_text(encoding="utf-8")


def default_policy_text(
    site: str,
    bindings: list[tuple[str, list[str]]],
    *,
    extra_rules: Mapping[str, Sequence[tuple[Sequence[str], Sequence[str]]]] | None = None,
) -> str:
    """The default roles plus one `[[bindings]]` entry per (identity, roles), as TOML text.

    An identity is a full URI of `site` (`spiffe://<site>/<domain>/<name>` or `.../<domain>/*`)
    or the short form `<domain>/<name>` (or `<domain>/*`), completed with `site`.
    `extra_rules` maps an identity (as given in `bindings`) to extra (verbs, patterns) rules for
    that binding, e.g. the points a trusted extension declares it reads. The result is parsed
    before it is returned, so an invalid role, verb, pattern or identity raises PolicyError.
    """
    source = "<default policy>"
    try:
        Identity.check_site(site)
    except IdentityError as err:
        raise PolicyError(source, "site", str(err)) from err
    extra = dict(extra_rules or {})
    lines = [default_roles_text().rstrip("\n"), "", f"# Bindings for site {site}."]
    for i, (given, roles) in enumerate(bindings):
        uri = given if given.startswith("spiffe://") else f"spiffe://{site}/{given}"
        if not uri.startswith(f"spiffe://{site}/"):
            raise PolicyError(
                source, f"bindings[{i}].identity", f"{given!r} is not an identity of site {site!r}"
            )
        lines += [
            "",
            "[[bindings]]",
            f"identity = {toml_str(uri)}",
            f"roles = {toml_list(roles)}",
        ]
        rules = extra.pop(given, ())
        if rules:
            lines.append("rules = [")
            lines += [
                f"  {{ verbs = {toml_list(verbs)}, points = {toml_list(points)} }},"
                for verbs, points in rules
            ]
            lines.append("]")
    if extra:
        raise PolicyError(
            source,
            "extra_rules",
            f"rules for identities without a binding: {', '.join(sorted(extra))}",
        )
    text = "\n".join(lines) + "\n"
    Policy.from_toml(text, source)  # refuse to hand out a policy the core would refuse
    return text
