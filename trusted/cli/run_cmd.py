"""`smx run`: run a whole site from its site.toml; `smx status`: what a running site is doing."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from smx.cli.connect import site_home
from smx.cli.errors import EXIT_FAILED, EXIT_USAGE, CliError
from smx.cli.output import add_json_option
from trusted.supervisor.site_config import SiteConfigError, load_site_config
from trusted.supervisor.status import (
    RunPaths,
    add_memory,
    format_status,
    pid_alive,
    read_status,
)

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
    add_json_option(s, "supervisor.json as one object")
    s.set_defaults(func=status)


def _site_file(args: argparse.Namespace) -> Path:
    return args.config if args.config is not None else site_home(args) / "site.toml"


def run(args: argparse.Namespace) -> int:
    from trusted.supervisor.runner import Supervisor, SupervisorError
    from trusted.supervisor.status import ProvisionError

    class CliSupervisor(Supervisor):
        """Remembers a stop asked for before the site was up (Ctrl-C reaches the provisioning
        child too, which then fails for that reason only)."""

        stopped_starting = False

        def request_stop(self) -> None:
            if self.state == "starting":
                self.stopped_starting = True
            super().request_stop()

    path = _site_file(args)
    try:
        cfg = load_site_config(path)
    except SiteConfigError as err:
        fix = ""
        if not path.exists():
            fix = (
                "; give the site file with --config or the site directory with --home "
                "(docs/SITE.md describes the file; `smx demo --keep` leaves a complete example)"
            )
        raise CliError(f"{err}{fix}") from None
    supervisor = CliSupervisor(cfg, reap_strays=True)
    try:
        asyncio.run(supervisor.run())
    except (ProvisionError, SupervisorError, OSError) as err:
        if supervisor.stopped_starting:
            return _stopped_starting()
        code = EXIT_USAGE if isinstance(err, ProvisionError) else EXIT_FAILED
        raise CliError(str(err), code) from None
    if supervisor.stopped_starting:
        return _stopped_starting()
    return 0


def _stopped_starting() -> int:
    print("smx run: stopped during start-up; nothing left running", file=sys.stderr)
    return 0


def status(args: argparse.Namespace) -> int:
    if args.config is not None:
        try:
            home = load_site_config(args.config).home
        except SiteConfigError as err:
            raise CliError(str(err)) from None
    else:
        home = site_home(args)
        if not home.is_dir():
            raise CliError(
                f"no site at {home}: no such directory; give the site directory with --home or "
                "$SMX_HOME, or the site file with --config"
            )
    path = RunPaths(home).status
    data = read_status(path)
    if data is None:
        raise CliError(
            f"no supervisor has run the site in {home} ({path} not found or unreadable); start "
            "it with `smx run --config <its site.toml>`",
            EXIT_FAILED,
        )
    running = pid_alive(data.get("pid"), data.get("pid_created"))
    if running:
        add_memory(data)
    if args.json:
        print(json.dumps(data, sort_keys=True))
    else:
        print(format_status(data, running))
    return 0 if running else EXIT_FAILED
