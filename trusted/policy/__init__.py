"""The core's RBAC policy: roles grant verbs on point patterns, bindings give roles to identities.

The file format, the verbs and the default roles are specified in docs/POLICY.md; which verb
each RPC needs is the one table `METHOD_VERBS` (trusted.policy.model).

A site's policy is two files, loaded together by `Policy.load`: `policy.toml` (on a site run by
`smx run`, generated from site.toml at every start) and, when present, the operator's
`policy.local.toml` next to it (`local_policy_path`), which nothing generates or rewrites.

A Policy is immutable; reloading means loading a new one and swapping it in. Decisions are
cached per (identity, verb, point) in a bounded dict, because allows() runs on every write. The
caches are meant for one event loop (the grpc.aio server), not for concurrent threads.

The value types (Rule, Role, Binding, PolicyError) live in trusted.policy.model and the file
validation in trusted.policy.parser; both are re-exported here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from smx.identity import SCHEME, Identity, IdentityError, site_uri
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
from trusted.policy.parser import parse_bindings, parse_policy, parse_roles, parse_toml

__all__ = [
    "BILLING_SNAPSHOTS",
    "METHOD_VERBS",
    "NO_VERB",
    "VERBS",
    "Binding",
    "PointFilter",
    "Policy",
    "PolicyError",
    "Role",
    "Rule",
    "default_policy_text",
    "default_roles_text",
    "local_policy_path",
    "read_policy_text",
    "toml_list",
    "toml_str",
    "with_appended",
]

log = logging.getLogger(__name__)


_MAX_DECISIONS = 65536
_MAX_IDENTITIES = 1024

# Billing snapshots (docs/DATA-MODEL.md) are the meter owner's: the untrusted-agent role reads
# none of them (its `except` in default_policy.toml), nor do an agent's generated extra reads.
BILLING_SNAPSHOTS = "**/*.bill*"


class PointFilter:
    """The points one identity may use one verb on: a name matched by a rule's `points` and by
    none of that rule's `except` patterns. Rules without exclusions share one GlobSet."""

    __slots__ = ("_granting", "_plain", "_narrowed")

    def __init__(
        self,
        plain: Sequence[str] = (),
        narrowed: Sequence[tuple[Sequence[str], Sequence[str]]] = (),
        granting: Sequence[str] | None = None,
    ) -> None:
        self._plain = GlobSet(plain)
        self._narrowed = tuple((GlobSet(p), GlobSet(x)) for p, x in narrowed if p)
        # Every granting pattern, in file order (what WhoAmI shows), exclusions not applied.
        self._granting = GlobSet(
            granting if granting is not None else [*plain, *(q for p, _ in narrowed for q in p)]
        )

    @property
    def patterns(self) -> tuple[str, ...]:
        """The granting patterns; a name they match may still be excluded (use `match`)."""
        return self._granting.patterns

    @property
    def excluded(self) -> tuple[str, ...]:
        """Every `except` pattern of the rules that grant the verb."""
        return tuple(dict.fromkeys(x for _, ex in self._narrowed for x in ex.patterns))

    def match(self, name: str) -> bool:
        if self._plain.match(name):
            return True
        return any(p.match(name) and not x.match(name) for p, x in self._narrowed)

    def __bool__(self) -> bool:
        return bool(self._granting)

    def __repr__(self) -> str:
        return f"PointFilter({list(self.patterns)!r}, except={list(self.excluded)!r})"


@dataclass(slots=True)
class _Grants:
    """What one identity may do, after substitution of its name and site."""

    roles: list[str]
    rules: list[tuple[tuple[str, ...], tuple[str, ...]]]
    sets: dict[str, PointFilter]
    admin: bool
    # Each rule's `except` patterns, in the order of `rules`.
    excluded: list[tuple[str, ...]] = field(default_factory=list)


_NO_GRANTS_SET = PointFilter()
_ALL = PointFilter(["**"])


class Policy:
    """A loaded, validated policy; see the module docstring for the file format."""

    def __init__(
        self, roles: Mapping[str, Role], bindings: Sequence[Binding], source: str = "<policy>"
    ) -> None:
        self.source = source
        self._roles: dict[str, Role] = dict(roles)
        self._bindings: tuple[Binding, ...] = tuple(bindings)
        # Lists: an identity bound in both files of a site gets the union of its bindings.
        self._exact: dict[str, list[Binding]] = {}
        self._wild: dict[tuple[str, str], list[Binding]] = {}
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
                self._wild.setdefault((m.group(1), m.group(2)), []).append(binding)
            else:
                self._exact.setdefault(binding.identity, []).append(binding)
        self._decisions: dict[tuple[Identity, str, str | None], bool] = {}
        self._grants: dict[Identity, _Grants] = {}

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls, path: Path | str, *, text: str | None = None, local_text: str | None = None
    ) -> Policy:
        """The site's policy: the file `path` and, when present, the operator's file next to it
        (`local_policy_path`), merged: the roles and the bindings of both (an identity bound in
        both gets the union); a role defined in both is refused. `text` and `local_text` stand
        for the files' content, to check a change before writing it. Every problem is a
        PolicyError naming the file and the key."""
        path = Path(path)
        data = parse_toml(read_policy_text(path) if text is None else text, str(path))
        roles = parse_roles(data, str(path))
        local = local_policy_path(path)
        if local_text is None and local.exists():
            local_text = read_policy_text(local)
        local_data = parse_toml(local_text, str(local)) if local_text else {}
        for name, role in parse_roles(local_data, str(local)).items():
            if name in roles:
                raise PolicyError(
                    str(local),
                    f"roles.{name}",
                    f"already defined in {path}: a role is defined in one file only (give "
                    "this one another name)",
                )
            roles[name] = role
        bindings = parse_bindings(data, str(path), roles)
        bindings += parse_bindings(local_data, str(local), roles)
        source = f"{path} + {local.name}" if local_text else str(path)
        policy = cls(roles, bindings, source)
        log.info(
            "loaded policy %s: %d roles, %d bindings",
            source,
            policy.roles_count,
            policy.bindings_count,
        )
        return policy

    @classmethod
    def from_toml(cls, text: str, source: str = "<string>") -> Policy:
        """One policy document on its own (no operator file)."""
        roles, bindings = parse_policy(parse_toml(text, source), source)
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

    def filter_for(self, identity: Identity, verb: str) -> PointFilter:
        """The points `identity` may use `verb` on (empty: none), rules' exclusions applied by
        its `match`. For admin: `**` or nothing."""
        _check_verb(verb)
        grants = self._grants_for(identity)
        if verb == "admin":
            return _ALL if grants.admin else _NO_GRANTS_SET
        return grants.sets.get(verb, _NO_GRANTS_SET)

    def roles_for(self, identity: Identity) -> list[str]:
        return list(self._grants_for(identity).roles)

    def rules_for(self, identity: Identity) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        """Effective (verbs, patterns) for `identity`, in file order, placeholders substituted.

        A rule's `except` patterns are not in it: `exceptions_for` gives them, in the same
        order; `allows` decides a point."""
        return list(self._grants_for(identity).rules)

    def exceptions_for(self, identity: Identity) -> list[tuple[str, ...]]:
        """Each rule's `except` patterns, placeholders substituted, in `rules_for`'s order."""
        return list(self._grants_for(identity).excluded)

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
            *self._exact.get(identity.uri, ()),
            *self._wild.get((identity.site, identity.domain), ()),
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
        exceptions: list[tuple[str, ...]] = []
        granting: dict[str, list[str]] = {}
        plain: dict[str, list[str]] = {}
        narrowed: dict[str, list[tuple[list[str], list[str]]]] = {}
        admin = False
        for rule in raw_rules:
            points = self._substituted(rule.points, identity)
            excluded = self._substituted(rule.excluded, identity)
            if len(excluded) < len(rule.excluded):
                # A dropped exclusion would widen the rule: drop the rule's points instead.
                points = []
            rules.append((rule.verbs, tuple(points)))
            exceptions.append(tuple(excluded))
            for verb in rule.verbs:
                if verb == "admin":
                    admin = True
                elif points:
                    granting.setdefault(verb, []).extend(points)
                    if excluded:
                        narrowed.setdefault(verb, []).append((points, excluded))
                    else:
                        plain.setdefault(verb, []).extend(points)
        sets = {
            verb: PointFilter(plain.get(verb, ()), narrowed.get(verb, ()), granting=p)
            for verb, p in granting.items()
        }
        return _Grants(roles=roles, rules=rules, sets=sets, admin=admin, excluded=exceptions)

    def _substituted(self, patterns: Sequence[str], identity: Identity) -> list[str]:
        """`patterns` with `{name}` / `{site}` of `identity`; a pattern that cannot be is left
        out (only reachable with an Identity built around the grammar), with a WARNING line."""
        out: list[str] = []
        for raw in patterns:
            try:
                pattern = substitute(raw, name=identity.name, site=identity.site)
                Glob(pattern)
            except InvalidName as err:
                log.warning("policy %s: skipping pattern for %s: %s", self.source, identity, err)
                continue
            out.append(pattern)
        return out


# The first lines of a new operator file (`smx policy bind`, or bindings moved by `smx run`).
LOCAL_HEADER = """\
# The site operator's roles and bindings (same format as policy.toml, docs/POLICY.md). The core
# loads this file with policy.toml; `smx run` never writes it.
"""


def with_appended(local_text: str | None, tables: Sequence[str]) -> str:
    """The operator's file `local_text` (None: a new one) with `tables` (TOML text of roles and
    bindings, `Role.toml()`, `Binding.toml()`) appended."""
    parts = [LOCAL_HEADER if local_text is None else local_text, *tables]
    return "\n\n".join(p.strip("\n") for p in parts if p.strip()) + "\n"


def local_policy_path(path: Path | str) -> Path:
    """The operator's file next to the policy file: `policy.toml` -> `policy.local.toml`."""
    path = Path(path)
    return path.with_name(f"{path.stem}.local{path.suffix}")


def read_policy_text(path: Path) -> str:
    """The text of a policy file; an unreadable one is a PolicyError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PolicyError(str(path), "", f"not UTF-8 text: {err}") from err
    except OSError as err:
        reason = err.strerror or str(err)
        if isinstance(err, PermissionError):
            reason += f" ({_give_to_me(path)})"
        raise PolicyError(str(path), "", f"cannot read policy file: {reason}") from err


def _give_to_me(path: Path) -> str:
    """How to let this process (the core, under its own user with `smx run` as root) read it."""
    import pwd

    user = pwd.getpwuid(os.geteuid()).pw_name
    return f"give it to the core's user: `chown {user} {path}; chmod 600 {path}` as root"


def _check_verb(verb: str) -> None:
    if verb not in VERBS:
        raise ValueError(f"unknown verb {verb!r} (use one of {', '.join(VERBS)})")


# --------------------------------------------------------------------------- default policy


def default_roles_text() -> str:
    """The shipped `default_policy.toml`: the default roles, no bindings."""
    # Beside this module (package data), not through importlib.resources: that would load
    # tempfile, shutil, bz2 and lzma into the core and the supervisor for this one read.
    return Path(__file__).with_name("default_policy.toml").read_text(encoding="utf-8")


def default_policy_text(
    site: str,
    bindings: list[tuple[str, list[str]]],
    *,
    extra_rules: Mapping[str, Sequence[tuple[Sequence[str], ...]]] | None = None,
    description: str = "",
) -> str:
    """The default roles plus one `[[bindings]]` entry per (identity, roles), as TOML text.

    An identity is a full URI of `site` (`spiffe://<site>/<domain>/<name>` or `.../<domain>/*`)
    or the short form `<domain>/<name>` (or `<domain>/*`), completed with `site`.
    `extra_rules` maps an identity (as given in `bindings`) to extra (verbs, patterns) or
    (verbs, patterns, except patterns) rules for that binding, e.g. the points a trusted
    extension declares it reads; `description` is every binding's. The result is parsed
    before it is returned, so an invalid role, verb, pattern or identity raises PolicyError.
    """
    source = "<default policy>"
    try:
        Identity.check_site(site)
    except IdentityError as err:
        raise PolicyError(source, "site", str(err)) from err
    extra = dict(extra_rules or {})
    lines = [default_roles_text().rstrip("\n"), "", f"# Bindings for site {site}."]
    ours = f"{site_uri(site)}/"
    for i, (given, roles) in enumerate(bindings):
        uri = given if given.startswith(SCHEME) else ours + given
        if not uri.startswith(ours):
            raise PolicyError(
                source, f"bindings[{i}].identity", f"{given!r} is not an identity of site {site!r}"
            )
        rules = tuple(
            Rule(tuple(verbs), tuple(points), tuple(excluded[0]) if excluded else ())
            for verbs, points, *excluded in extra.pop(given, ())
        )
        lines += ["", Binding(uri, tuple(roles), rules, description).toml().rstrip("\n")]
    if extra:
        raise PolicyError(
            source,
            "extra_rules",
            f"rules for identities without a binding: {', '.join(sorted(extra))}",
        )
    text = "\n".join(lines) + "\n"
    Policy.from_toml(text, source)  # refuse to hand out a policy the core would refuse
    return text
