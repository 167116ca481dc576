"""`smx run`: run a whole site from its site.toml; `smx status`: what a running site is doing."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from smx.cli.connect import site_home
from trusted.supervisor.site_config import SiteConfigError, load_site_config
from trusted.supervisor.status import RunPaths, format_status, pid_alive, read_status

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a site: the core, its extensions, agents and simulators (site.toml)",
        description="Provision the site on first start (CA, certificates, policy), start the "
        "core and every process of site.toml, restart what crashes; SIGTERM or Ctrl-C stops "
        "everything. The format of site.toml is documented in docs/SITE.md.",
    )
    p.add_argument("--config", type=Path, help="site file (default: <home>/site.toml)")
    p.set_defaults(func=run)

    s = sub.add_parser("status", help="the processes of a site run by `smx run`")
    where = s.add_mutually_exclusive_group()
    # SUPPRESS: an absent sub-command option must not reset a global `smx --home H status`.
    where.add_argument(
        "--home", default=argparse.SUPPRESS, help="site home (default: $SMX_HOME or ./site)"
    )
    where.add_argument("--config", type=Path, help="site file; its home is used")
    s.add_argument("--json", action="store_true", help="print supervisor.json as it is")
    s.set_defaults(func=status)


def _site_file(args: argparse.Namespace) -> Path:
    return args.config if args.config is not None else site_home(args) / "site.toml"


def run(args: argparse.Namespace) -> int:
    from trusted.supervisor.runner import Supervisor, SupervisorError  # grpc only when running
    from trusted.supervisor.status import ProvisionError

    try:
        cfg = load_site_config(_site_file(args))
    except SiteConfigError as err:
        print(f"smx run: {err}", file=sys.stderr)
        return 2
    try:
        asyncio.run(Supervisor(cfg, reap_strays=True).run())
    except ProvisionError as err:
        print(f"smx run: {err}", file=sys.stderr)
        return 2
    except (SupervisorError, OSError) as err:
        print(f"smx run: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the signal handlers were in place
        return 130
    return 0


def status(args: argparse.Namespace) -> int:
    if args.config is not None:
        try:
            home = load_site_config(args.config).home
        except SiteConfigError as err:
            print(f"smx status: {err}", file=sys.stderr)
            return 2
    else:
        home = site_home(args)
    path = RunPaths(home).status
    data = read_status(path)
    if data is None:
        print(f"supervisor not running ({path} not found or unreadable)")
        return 1
    running = pid_alive(data.get("pid"), data.get("pid_created"))
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(format_status(data, running))
    return 0 if running else 1
