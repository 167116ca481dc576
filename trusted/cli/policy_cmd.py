"""`smx policy`: write and check the site's RBAC policy file (<home>/policy.toml)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smx.cli.connect import require_site
from smx.cli.errors import CliError
from smx.cli.output import add_json_option, print_json, print_table
from smx.identity import DOMAINS, Identity, IdentityError
from smx.toml_text import toml_list, toml_str
from trusted.core.site_files import write_private
from trusted.policy import Policy, PolicyError, default_policy_text
from trusted.policy.model import Rule

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy", help="the site's RBAC policy file")
    psub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = psub.add_parser("init", help="write policy.toml: the default roles, `admin` bound to admin")
    q.add_argument("--force", action="store_true", help="overwrite an existing policy.toml")
    q.set_defaults(func=_guard(init))
    q = psub.add_parser("bind", help="give a client roles (and extra read rules)")
    q.add_argument("name")
    q.add_argument("roles", nargs="+")
    q.add_argument("--domain", choices=DOMAINS, default="trusted")
    q.add_argument(
        "--read",
        action="append",
        default=[],
        metavar="PATTERN",
        help="extra points this client may read (repeatable)",
    )
    q.set_defaults(func=_guard(bind))
    q = psub.add_parser("check", help="validate policy.toml and print its bindings")
    add_json_option(q, "the policy as one object, as `policy show --json`")
    q.set_defaults(func=_guard(check))
    q = psub.add_parser("show", help="the roles and bindings of policy.toml")
    add_json_option(q, "the policy as one object")
    q.set_defaults(func=_guard(show))


Handler = Callable[[argparse.Namespace], int]


def _guard(fn: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        from trusted.pki import PkiError  # loads cryptography: only when used

        try:
            return fn(args)
        except BrokenPipeError:
            raise  # the reader of the output went away: not a policy problem
        except (PolicyError, PkiError, IdentityError, OSError) as err:
            raise CliError(str(err)) from None

    return run


def _site(home: Path) -> str:
    from trusted.pki import SiteCA

    return SiteCA.load(home / "pki").site


def init(args: argparse.Namespace) -> int:
    home = require_site(args)
    path = home / "policy.toml"
    if path.exists() and not args.force:
        raise PolicyError(str(path), "", "exists already (use --force to overwrite)")
    site = _site(home)
    write_private(path, default_policy_text(site, [("trusted/admin", ["admin"])]).encode())
    print(f"wrote {path}: default roles, trusted/admin bound to admin")
    return 0


def bind(args: argparse.Namespace) -> int:
    home = require_site(args)
    path = home / "policy.toml"
    site = _site(home)
    uri = Identity(site, args.domain, Identity.check_name(args.name)).uri
    block = [
        "",
        "[[bindings]]",
        f"identity = {toml_str(uri)}",
        f"roles = {toml_list(args.roles)}",
    ]
    if args.read:
        block.append(f'rules = [ {{ verbs = ["read"], points = {toml_list(args.read)} }} ]')
    text = path.read_text() + "\n".join(block) + "\n"
    Policy.from_toml(text, str(path))  # refuse to write a policy the core would refuse
    write_private(path, text.encode())
    print(f"bound {uri} to {', '.join(args.roles)}; reload with `smx admin reload` or SIGHUP")
    return 0


def _rules(rules: tuple[Rule, ...]) -> str:
    return "; ".join(f"{','.join(r.verbs)}: {' '.join(r.points)}" for r in rules)


def _as_json(path: Path, policy: Policy) -> dict[str, Any]:
    def rules(rs: tuple[Rule, ...]) -> list[dict[str, list[str]]]:
        return [{"verbs": list(r.verbs), "points": list(r.points)} for r in rs]

    return {
        "path": str(path),
        "roles": [
            {"name": r.name, "description": r.description, "rules": rules(r.rules)}
            for r in policy.roles.values()
        ],
        "bindings": [
            {
                "identity": b.identity,
                "roles": list(b.roles),
                "rules": rules(b.rules),
                "description": b.description,
            }
            for b in policy.bindings
        ],
    }


def _load(args: argparse.Namespace) -> tuple[Path, Policy]:
    path = require_site(args) / "policy.toml"
    if not path.exists():
        raise CliError(f"no policy file {path}: create it with `smx policy init`")
    return path, Policy.load(path)


def _bindings_table(policy: Policy) -> None:
    print_table(
        ("IDENTITY", "ROLES", "EXTRA RULES"),
        [(b.identity, ", ".join(b.roles), _rules(b.rules)) for b in policy.bindings],
    )


def check(args: argparse.Namespace) -> int:
    path, policy = _load(args)
    if args.json:
        print_json(_as_json(path, policy))
        return 0
    print(f"{path}: {policy.roles_count} roles, {policy.bindings_count} bindings")
    _bindings_table(policy)
    return 0


def show(args: argparse.Namespace) -> int:
    path, policy = _load(args)
    if args.json:
        print_json(_as_json(path, policy))
        return 0
    print(f"{path}: {policy.roles_count} roles, {policy.bindings_count} bindings")
    print_table(
        ("ROLE", "RULES", "DESCRIPTION"),
        [(r.name, _rules(r.rules), r.description) for r in policy.roles.values()],
    )
    print()
    _bindings_table(policy)
    return 0
