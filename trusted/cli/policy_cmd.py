"""`smx policy`: write and check the site's RBAC policy: <home>/policy.toml and the operator's
policy.local.toml next to it (paths from core.toml's `policy`), loaded together as the core does
(`Policy.load`). `bind` writes the operator's file only, and reloads a running core."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smx.cli.connect import require_site
from smx.cli.errors import CliError
from smx.cli.output import add_json_option, print_json, print_table
from smx.identity import DOMAINS, Identity, IdentityError
from trusted.core.config import ConfigError, CoreConfig, load_core_config
from trusted.core.site_files import write_private
from trusted.policy import (
    Binding,
    Policy,
    PolicyError,
    Role,
    Rule,
    default_policy_text,
    local_policy_path,
    read_policy_text,
    with_appended,
)

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy", help="the site's RBAC policy file")
    psub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = psub.add_parser("init", help="write policy.toml: the default roles, `admin` bound to admin")
    q.add_argument("--force", action="store_true", help="overwrite an existing policy.toml")
    q.set_defaults(func=_guard(init))
    q = psub.add_parser(
        "bind",
        help="give a client roles (and extra read rules) in policy.local.toml; a running core "
        "applies it at once",
    )
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
    q = psub.add_parser(
        "check", help="validate policy.toml with policy.local.toml and print their bindings"
    )
    add_json_option(q, "the policy as one object, as `policy show --json`")
    q.set_defaults(func=_guard(check))
    q = psub.add_parser("show", help="the roles and bindings of policy.toml and policy.local.toml")
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
        except (PolicyError, PkiError, IdentityError, ConfigError, OSError) as err:
            raise CliError(str(err)) from None

    return run


def _site(home: Path) -> str:
    from trusted.pki import SiteCA

    return SiteCA.load(home / "pki").site


def _config(home: Path) -> CoreConfig:
    """The core's settings: where its policy file and socket are."""
    path = home / "core.toml"
    return load_core_config(path if path.exists() else None, home=home)


def init(args: argparse.Namespace) -> int:
    home = require_site(args)
    path = _config(home).policy
    if path.exists() and not args.force:
        raise PolicyError(str(path), "", "exists already (use --force to overwrite)")
    site = _site(home)
    write_private(path, default_policy_text(site, [("trusted/admin", ["admin"])]).encode())
    print(f"wrote {path}: default roles, trusted/admin bound to admin")
    return 0


def bind(args: argparse.Namespace) -> int:
    home = require_site(args)
    config = _config(home)
    local = local_policy_path(config.policy)
    uri = Identity(_site(home), args.domain, Identity.check_name(args.name)).uri
    rules = (Rule(("read",), tuple(args.read)),) if args.read else ()
    binding = Binding(uri, tuple(args.roles), rules)
    old = read_policy_text(local) if local.exists() else None
    text = with_appended(old, [binding.toml()])
    Policy.load(config.policy, local_text=text)  # refuse to write what the core would refuse
    write_private(local, text.encode())
    if os.geteuid() == 0:
        # Root writes for a core that may run as its own user (isolation): give the file the
        # owner of policy.toml, so the reload below (and the next start) can read it.
        st = config.policy.stat()
        os.chown(local, st.st_uid, st.st_gid)
    done = f"bound {uri} to {', '.join(args.roles)} in {local}"
    from trusted.cli.core_cmd import serving_pid

    if serving_pid(config.socket) is None:
        print(f"{done}; no core runs: in force at its next start")
        return 0
    try:
        reloaded = _reload(home, config.socket)
    except CliError as err:
        raise CliError(
            f"{done}, but the running core did not reload it (it keeps its previous policy): {err}",
            err.code,
        ) from None
    print(f"{done}; in force now ({reloaded})")
    return 0


def _reload(home: Path, socket: Path) -> str:
    """`smx admin reload` with the site's admin certificate, on the core's socket."""
    import grpc

    from smx.cli.connect import connect, explain_rpc_error, resolve
    from smx.v1 import admin_service_pb2 as admin_pb

    args = argparse.Namespace(
        home=str(home), as_name="admin", socket=socket, target=None, cert=None, key=None, ca=None
    )
    try:
        r = connect(args).admin.ReloadPolicy(admin_pb.ReloadPolicyRequest(), timeout=10)
    except grpc.RpcError as err:
        raise explain_rpc_error(err, resolve(args)) from None
    return f"policy reloaded: {r.roles} roles, {r.bindings} bindings"


def _rules(rules: tuple[Rule, ...]) -> str:
    return "; ".join(f"{','.join(r.verbs)}: {' '.join(r.points)}" for r in rules)


def _as_json(path: Path, local: Path | None, policy: Policy) -> dict[str, Any]:
    def rules(rs: tuple[Rule, ...]) -> list[dict[str, list[str]]]:
        return [{"verbs": list(r.verbs), "points": list(r.points)} for r in rs]

    return {
        "path": str(path),
        "local": str(local) if local else None,
        "roles": [
            {
                "name": r.name,
                "description": r.description,
                "rules": rules(r.rules),
                "file": r.source,
            }
            for r in policy.roles.values()
        ],
        "bindings": [
            {
                "identity": b.identity,
                "roles": list(b.roles),
                "rules": rules(b.rules),
                "description": b.description,
                "file": b.source,
            }
            for b in policy.bindings
        ],
    }


def _load(args: argparse.Namespace) -> tuple[Path, Path | None, Policy]:
    """The policy file, the operator's file (None when there is none) and both loaded."""
    path = _config(require_site(args)).policy
    if not path.exists():
        raise CliError(f"no policy file {path}: create it with `smx policy init`")
    local = local_policy_path(path)
    return path, local if local.exists() else None, Policy.load(path)


def _print(policy: Policy, files: list[Path], *, roles: bool) -> None:
    """Per file: its counts, its roles (with `roles`) and its bindings."""
    for i, f in enumerate(files):
        its_roles = [r for r in policy.roles.values() if r.source == str(f)]
        its_bindings = [b for b in policy.bindings if b.source == str(f)]
        if i:
            print()
        print(f"{f}: {len(its_roles)} roles, {len(its_bindings)} bindings")
        if roles and its_roles:
            _roles_table(its_roles)
            if its_bindings:
                print()
        if its_bindings:
            _bindings_table(its_bindings)


def _roles_table(roles: list[Role]) -> None:
    print_table(
        ("ROLE", "RULES", "DESCRIPTION"), [(r.name, _rules(r.rules), r.description) for r in roles]
    )


def _bindings_table(bindings: list[Binding]) -> None:
    print_table(
        ("IDENTITY", "ROLES", "EXTRA RULES"),
        [(b.identity, ", ".join(b.roles), _rules(b.rules)) for b in bindings],
    )


def check(args: argparse.Namespace) -> int:
    return _show(args, roles=False)


def show(args: argparse.Namespace) -> int:
    return _show(args, roles=True)


def _show(args: argparse.Namespace, *, roles: bool) -> int:
    path, local, policy = _load(args)
    if args.json:
        print_json(_as_json(path, local, policy))
    else:
        _print(policy, [path, *([local] if local else [])], roles=roles)
    return 0
