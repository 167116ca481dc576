"""`smx policy`: write and check the site's RBAC policy file (<home>/policy.toml)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smx.cli.connect import site_home
from smx.identity import DOMAINS, Identity, IdentityError
from smx.toml_text import toml_list, toml_str
from trusted.core.site_files import write_private
from trusted.policy import Policy, PolicyError, default_policy_text

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
    q.set_defaults(func=_guard(check))


def _guard(fn):
    def run(args: argparse.Namespace) -> int:
        from trusted.pki import PkiError  # loads cryptography: only when used

        try:
            return fn(args)
        except (PolicyError, PkiError, IdentityError, OSError) as err:
            print(f"smx policy: {err}", file=sys.stderr)
            return 2

    return run


def _site(home: Path) -> str:
    from trusted.pki import SiteCA

    return SiteCA.load(home / "pki").site


def init(args: argparse.Namespace) -> int:
    home = site_home(args)
    path = home / "policy.toml"
    if path.exists() and not args.force:
        raise PolicyError(str(path), "", "exists already (use --force to overwrite)")
    site = _site(home)
    write_private(path, default_policy_text(site, [("trusted/admin", ["admin"])]).encode())
    print(f"wrote {path}: default roles, trusted/admin bound to admin")
    return 0


def bind(args: argparse.Namespace) -> int:
    home = site_home(args)
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


def check(args: argparse.Namespace) -> int:
    path = site_home(args) / "policy.toml"
    policy = Policy.load(path)
    print(f"{path}: {policy.roles_count} roles, {policy.bindings_count} bindings")
    for b in policy.bindings:
        print(f"  {b.identity}: {', '.join(b.roles)}")
    return 0
