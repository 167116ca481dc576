"""Validation of a parsed policy document (the dict tomllib returns) into roles and bindings.

The file format is documented in docs/POLICY.md. Any unknown key, unknown verb, bad pattern,
undefined role or wrong type is a PolicyError naming the file and the key path, e.g.
`policy.toml: roles.gui.rules[0]: unknown key 'verb'`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from typing import Any

from smx.identity import DOMAINS, Identity, IdentityError
from smx.names import Glob, InvalidName, substitute
from smx.toml_text import toml_str
from trusted.policy.model import VERBS, WILDCARD_IDENTITY, Binding, PolicyError, Role, Rule

__all__ = ["parse_bindings", "parse_policy", "parse_roles", "parse_toml"]

_ROLE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Sample values used to check, at load time, that patterns with placeholders are valid.
_SAMPLE = {"name": "x", "site": "s"}


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """The TOML document `text`; a syntax error is a PolicyError naming `source`."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(source, "", f"TOML syntax error: {err}") from err
    except RecursionError as err:  # absurdly deep nesting
        raise PolicyError(source, "", "TOML nesting too deep") from err


def parse_policy(data: dict[str, Any], source: str) -> tuple[dict[str, Role], list[Binding]]:
    """The roles and bindings of a parsed policy document; PolicyError names `source`."""
    roles = parse_roles(data, source)
    return roles, parse_bindings(data, source, roles)


def parse_roles(data: dict[str, Any], source: str) -> dict[str, Role]:
    """The roles of a parsed policy document (its top-level keys checked too)."""
    return _Parser(source).roles(data)


def parse_bindings(data: dict[str, Any], source: str, roles: Mapping[str, Role]) -> list[Binding]:
    """The bindings of a parsed policy document, whose roles must be among `roles`."""
    return _Parser(source).bindings(data, roles)


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return "date/time"


def _key(path: str, key: str) -> str:
    shown = key if _BARE_KEY.fullmatch(key) else toml_str(key)
    return f"{path}.{shown}" if path else shown


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, path: str, message: str) -> PolicyError:
        return PolicyError(self.source, path, message)

    def keys(
        self, table: dict[str, Any], path: str, allowed: tuple[str, ...], required: tuple[str, ...]
    ) -> None:
        for key in table:
            if key not in allowed:
                raise self.error(path, f"unknown key {key!r} (allowed: {', '.join(allowed)})")
        for key in required:
            if key not in table:
                raise self.error(path, f"missing key {key!r}")

    def table(self, value: object, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(path, f"expected a table, got {_type_name(value)}")
        return value

    def array(self, value: object, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.error(path, f"expected an array, got {_type_name(value)}")
        return value

    def string(self, value: object, path: str) -> str:
        if not isinstance(value, str):
            raise self.error(path, f"expected a string, got {_type_name(value)}")
        return value

    def strings(self, value: object, path: str) -> list[str]:
        return [self.string(v, f"{path}[{i}]") for i, v in enumerate(self.array(value, path))]

    def roles(self, data: dict[str, Any]) -> dict[str, Role]:
        self.keys(data, "", ("roles", "bindings"), ())
        roles: dict[str, Role] = {}
        for name, raw in self.table(data.get("roles", {}), "roles").items():
            path = _key("roles", name)
            if _ROLE_NAME.fullmatch(name) is None:
                raise self.error(path, f"invalid role name {name!r}: use [a-z][a-z0-9_-]{{0,63}}")
            roles[name] = self.role(name, raw, path)
        return roles

    def bindings(self, data: dict[str, Any], roles: Mapping[str, Role]) -> list[Binding]:
        bindings: list[Binding] = []
        seen: dict[str, int] = {}
        for i, raw in enumerate(self.array(data.get("bindings", []), "bindings")):
            path = f"bindings[{i}]"
            binding = self.binding(raw, path, roles)
            if binding.identity in seen:
                raise self.error(
                    f"{path}.identity",
                    f"{binding.identity!r} is already bound by bindings[{seen[binding.identity]}]"
                    " (give one binding several roles instead)",
                )
            seen[binding.identity] = i
            bindings.append(binding)
        return bindings

    def role(self, name: str, raw: object, path: str) -> Role:
        table = self.table(raw, path)
        self.keys(table, path, ("description", "rules"), ())
        description = self.string(table.get("description", ""), f"{path}.description")
        rules = self.rules(table.get("rules", []), f"{path}.rules")
        return Role(name, description, rules, self.source)

    def rules(self, raw: object, path: str) -> tuple[Rule, ...]:
        return tuple(self.rule(r, f"{path}[{i}]") for i, r in enumerate(self.array(raw, path)))

    def rule(self, raw: object, path: str) -> Rule:
        table = self.table(raw, path)
        self.keys(table, path, ("verbs", "points", "except"), ("verbs",))
        verbs = self.strings(table["verbs"], f"{path}.verbs")
        if not verbs:
            raise self.error(f"{path}.verbs", "empty: name at least one verb")
        for i, verb in enumerate(verbs):
            if verb not in VERBS:
                raise self.error(
                    f"{path}.verbs[{i}]", f"unknown verb {verb!r} (use one of {', '.join(VERBS)})"
                )
        points = self.strings(table.get("points", []), f"{path}.points")
        if not points and any(v != "admin" for v in verbs):
            raise self.error(
                f"{path}.points" if "points" in table else path,
                "no point patterns: a rule needs 'points' unless its only verb is 'admin'",
            )
        excluded = self.strings(table.get("except", []), f"{path}.except")
        if excluded and not points:
            raise self.error(
                f"{path}.except", "an exclusion needs 'points' to narrow (admin ignores patterns)"
            )
        for key, patterns in (("points", points), ("except", excluded)):
            for i, pattern in enumerate(patterns):
                try:
                    Glob(substitute(pattern, **_SAMPLE))
                except InvalidName as err:
                    raise self.error(f"{path}.{key}[{i}]", str(err)) from err
        return Rule(
            tuple(dict.fromkeys(verbs)),
            tuple(dict.fromkeys(points)),
            tuple(dict.fromkeys(excluded)),
        )

    def binding(self, raw: object, path: str, roles: Mapping[str, Role]) -> Binding:
        table = self.table(raw, path)
        self.keys(table, path, ("identity", "roles", "rules", "description"), ("identity",))
        identity = self.identity(table["identity"], f"{path}.identity")
        role_names = self.strings(table.get("roles", []), f"{path}.roles")
        for i, name in enumerate(role_names):
            if name not in roles:
                defined = ", ".join(sorted(roles)) or "none"
                raise self.error(
                    f"{path}.roles[{i}]", f"undefined role {name!r} (defined: {defined})"
                )
        rules = self.rules(table.get("rules", []), f"{path}.rules")
        description = self.string(table.get("description", ""), f"{path}.description")
        return Binding(identity, tuple(dict.fromkeys(role_names)), rules, description, self.source)

    def identity(self, raw: object, path: str) -> str:
        uri = self.string(raw, path)
        m = WILDCARD_IDENTITY.fullmatch(uri)
        try:
            if m is None:
                return Identity.parse(uri).uri
            Identity.check_site(m.group(1))
        except IdentityError as err:
            raise self.error(
                path, f"{err}; the only wildcard form is spiffe://<site>/<domain>/*"
            ) from err
        if m.group(2) not in DOMAINS:
            raise self.error(
                path, f"unknown domain {m.group(2)!r} in {uri!r} (use {' or '.join(DOMAINS)})"
            )
        return uri
