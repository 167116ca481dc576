"""`smx core`: run the trusted core in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from smx.cli.connect import site_home
from trusted.core.config import ConfigError, load_core_config
from trusted.policy import PolicyError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("core", help="run the trusted core (smxcore) in the foreground")
    p.add_argument("--config", type=Path, help="core TOML file (default: <home>/core.toml if any)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from trusted.core.server import run_core  # grpc server imports only when serving
    from trusted.pki import PkiError

    home = site_home(args)
    path = args.config or (home / "core.toml" if (home / "core.toml").exists() else None)
    try:
        config = load_core_config(path, home=home)
        if not config.policy.exists():
            raise ConfigError(
                f"policy file {config.policy} not found: create it with `smx policy init`"
            )
        asyncio.run(
            run_core(
                config,
                on_ready=lambda core: print(
                    f"smxcore ready: site {core.state.site}, socket {config.socket}", flush=True
                ),
            )
        )
    except (ConfigError, PkiError, PolicyError, RuntimeError, OSError) as err:
        print(f"smx core: {err}", file=sys.stderr)
        return 2
    return 0
