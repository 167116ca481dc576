"""`smx core`: run the trusted core in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import struct
from pathlib import Path

from smx.cli.connect import require_site, site_home
from smx.cli.errors import EXIT_FAILED, CliError
from smx.process_env import ENV_HEALTH_FILE
from trusted.core.config import ConfigError, load_core_config
from trusted.policy import PolicyError

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("core", help="run the trusted core (smxcore) in the foreground")
    p.add_argument("--config", type=Path, help="core TOML file (default: <home>/core.toml if any)")
    p.set_defaults(func=run)


def serving_pid(path: Path) -> int | None:
    """None when no process accepts connections on the Unix socket `path`; else the pid of the
    one that does (0 where the OS does not say)."""
    if not path.exists():
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        try:
            s.connect(str(path))
        except OSError:
            return None  # left over from a core that stopped: the core replaces it
        if not hasattr(socket, "SO_PEERCRED"):
            return 0
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[0])


def run(args: argparse.Namespace) -> int:
    from trusted.core.audit_record import AuditError
    from trusted.core.history_db import HistoryError
    from trusted.core.server import (  # grpc server imports only when serving
        run_core,
        run_on_fast_loop,
    )
    from trusted.pki import PkiError

    home = site_home(args)
    path = args.config or (home / "core.toml" if (home / "core.toml").exists() else None)
    try:
        config = load_core_config(path, home=home)
    except ConfigError as err:
        raise CliError(str(err)) from None
    if config.pki_dir == home / "pki":
        require_site(args)
    elif not (config.pki_dir / "ca.crt").is_file():
        raise CliError(f"no site CA in {config.pki_dir} (pki_dir of {path}): ca.crt not found")
    if not config.policy.exists():
        raise CliError(f"policy file {config.policy} not found: create it with `smx policy init`")
    pid = serving_pid(config.socket)
    if pid is not None:
        who = f"another core (pid {pid})" if pid else "another core"
        raise CliError(
            f"{who} is already serving this site on {config.socket}: one core per site; stop "
            "that one first, or give another site with --home",
            EXIT_FAILED,
        )
    if os.geteuid() == 0:
        log.warning(
            "smx core runs as root: nothing isolates it from the rest of the machine; run the "
            "site with `smx run` (each process as its own user) or the systemd unit "
            "(docs/SECURITY.md)"
        )
    try:
        run_on_fast_loop(
            run_core(
                config,
                on_ready=lambda core: print(
                    f"smxcore ready: site {core.state.site}, socket {config.socket}", flush=True
                ),
                # Under `smx run`; a core started by hand keeps no heartbeat unless told to.
                health_file=Path(os.environ[ENV_HEALTH_FILE])
                if os.environ.get(ENV_HEALTH_FILE)
                else None,
            )
        )
    except (ConfigError, PkiError, PolicyError) as err:
        raise CliError(str(err)) from None
    except AuditError as err:
        if "in use" in str(err):  # another core holds it, still starting (no socket yet)
            raise CliError(
                f"another core is starting on this site ({err}): one core per site",
                EXIT_FAILED,
            ) from None
        raise CliError(str(err), EXIT_FAILED) from None
    except (HistoryError, RuntimeError, OSError) as err:
        raise CliError(str(err), EXIT_FAILED) from None
    return 0
