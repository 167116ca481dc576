"""What ``smx run`` sets up before it starts anything: the site CA (first start only), one
certificate per process, the RBAC policy that follows from site.toml, core.toml, and each
process's config file.

- The CA is created in the core's ``pki_dir`` when there is none; an existing CA must be for
  the same site.
- Certificates: ``admin`` (the operator's CLI), ``supervisor`` (the supervisor's own health
  checks, bound to ``gui``) and one per enabled extension/agent, issued when missing, re-issued
  (``replace=True``) when they expire within 30 days, when their files are gone or when the
  process moved between trusted and untrusted. Names of removed processes are left alone. A
  certificate the operator revoked is NOT silently re-issued: that process is not started and
  ``smx status`` says why (the supervisor's own certificate excepted).
- ``policy.toml`` is rewritten on every start (the default roles plus the site's bindings):
  each extension bound to its role, plus read/write/control on ``<dev>/**`` for every device it
  owns beyond its own name, plus read on its ``reads``; each agent bound to its role plus read on
  its ``reads``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trusted.core.config import CoreConfig
from trusted.core.site_files import (
    CONFIG_FILE_MODE,
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    SHARED_DIR_MODE,
    private_dir,
    write_private,
)
from trusted.pki import IssuedCert, PkiError, SiteCA
from trusted.pki.files import write_atomic
from trusted.policy import BILLING_SNAPSHOTS, PolicyError, default_policy_text
from trusted.supervisor.isolation import (
    SOCKET_DIR,
    IsolationError,
    apply_ownership,
    ensure_accounts,
)
from trusted.supervisor.site_config import ProcessSpec, SiteConfig, render_core_toml
from trusted.supervisor.status import ADMIN_NAME, SUPERVISOR_NAME, ProvisionError, RunPaths

__all__ = [
    "ADMIN_NAME",
    "RENEW_BEFORE",
    "SUPERVISOR_NAME",
    "ProvisionError",
    "Provisioned",
    "provision",
    "site_policy_text",
]

log = logging.getLogger(__name__)

RENEW_BEFORE = dt.timedelta(days=30)
CERT_DAYS = 365
# The role of trusted/policy/default_policy.toml that already grants "{name}/**".
_OWN_DEVICE_ROLE = "trusted-extension"


@dataclass
class Provisioned:
    ca: SiteCA
    issued: list[str] = field(default_factory=list)  # names given a (new) certificate now
    refused: dict[str, str] = field(default_factory=dict)  # name -> why it must not start


BILLING_SNAPSHOTS_HINT = ".bill"  # a read naming a snapshot itself


def site_policy_text(cfg: SiteConfig) -> str:
    """The policy the site's config implies (least privilege), as policy.toml text."""
    bindings: list[tuple[str, list[str]]] = [
        (f"trusted/{ADMIN_NAME}", ["admin"]),
        (f"trusted/{SUPERVISOR_NAME}", ["gui"]),
    ]
    extra: dict[str, list[tuple[Sequence[str], ...]]] = {}
    for spec in cfg.clients:
        assert spec.role is not None
        ident = f"{spec.domain}/{spec.name}"
        bindings.append((ident, [spec.role]))
        rules: list[tuple[Sequence[str], ...]] = []
        if spec.kind == "extension":
            devices = [
                d for d in spec.devices if not (d == spec.name and spec.role == _OWN_DEVICE_ROLE)
            ]
            if devices:
                rules.append((["read", "write", "control"], [f"{d}/**" for d in devices]))
        if spec.reads and spec.domain == "untrusted":
            # As the untrusted role: billing snapshots are the meter owner's, unless a read
            # names them itself (docs/POLICY.md).
            named = [r for r in spec.reads if BILLING_SNAPSHOTS_HINT in r]
            broad = [r for r in spec.reads if BILLING_SNAPSHOTS_HINT not in r]
            if broad:
                rules.append((["read"], broad, [BILLING_SNAPSHOTS]))
            if named:
                rules.append((["read"], named))
        elif spec.reads:
            rules.append((["read"], list(spec.reads)))
        if rules:
            extra[ident] = rules
    return default_policy_text(cfg.site, bindings, extra_rules=extra)


def _latest(ca: SiteCA) -> dict[str, IssuedCert]:
    latest: dict[str, IssuedCert] = {}
    for cert in ca.list():  # oldest first: the last one per name is its current certificate
        latest[cert.name] = cert
    return latest


def _ensure_cert(
    ca: SiteCA, name: str, domain: str, current: IssuedCert | None, *, own: bool, out: Provisioned
) -> None:
    if current is None:
        ca.issue(name, domain, CERT_DAYS)
        out.issued.append(name)
        return
    if current.revoked and not own:
        out.refused[name] = (
            f"certificate revoked: issue a new one with `smx pki issue {name} --domain {domain}`"
        )
        log.warning("not starting %s: %s", name, out.refused[name])
        return
    cert_path, key_path = ca.client_paths(name)
    now = dt.datetime.now(dt.UTC)
    reason = None
    if current.revoked:
        reason = "it was revoked"
    elif current.domain != domain:
        reason = f"it moved from the {current.domain} to the {domain} domain"
    elif current.not_after - now < RENEW_BEFORE:
        reason = f"it expires {current.not_after:%Y-%m-%d}"
    elif not (cert_path.exists() and key_path.exists()):
        reason = "its files are missing"
    if reason is not None:
        log.info("re-issuing the certificate of %s: %s", name, reason)
        ca.issue(name, domain, CERT_DAYS, replace=not current.revoked)
        out.issued.append(name)


def _ca(core: CoreConfig, site: str) -> SiteCA:
    if not (core.pki_dir / "ca.crt").exists():
        log.info("creating the site CA for %s in %s", site, core.pki_dir)
        return SiteCA.init(core.pki_dir, site)
    ca = SiteCA.load(core.pki_dir)
    if ca.site != site:
        raise ProvisionError(
            f"{core.pki_dir / 'ca.crt'} is the CA of site {ca.site!r}, but the site file says "
            f"{site!r}"
        )
    return ca


def _write_config(paths: RunPaths, spec: ProcessSpec) -> None:
    data = json.dumps(dict(spec.config), indent=2, sort_keys=True, allow_nan=False) + "\n"
    write_atomic(paths.config_file(spec.name), data.encode(), 0o600)


def provision(cfg: SiteConfig, *, isolate: bool = False) -> Provisioned:
    """Set the site up for a start (see the module docstring); safe to run on every start.
    ``isolate`` (``smx run`` as root): also create the OS users of the site and give every path
    to its owner (trusted.supervisor.isolation)."""
    paths = RunPaths(cfg.home)
    try:
        # Modes set explicitly, whatever the umask (the core checks them again at start).
        private_dir(cfg.home, SHARED_DIR_MODE)  # the socket's group reaches core.sock
        private_dir(cfg.home / "data", PRIVATE_DIR_MODE)  # history and audit: the core's alone
        private_dir(paths.logs, SHARED_DIR_MODE)
        os.chmod(paths.run, SHARED_DIR_MODE)  # config files may hold device passwords
        ca = _ca(cfg.core, cfg.site)
        out = Provisioned(ca)
        latest = _latest(ca)
        wanted = [(ADMIN_NAME, "trusted", False), (SUPERVISOR_NAME, "trusted", True)]
        wanted += [(s.name, s.domain or "", False) for s in cfg.clients]
        for name, domain, own in wanted:
            _ensure_cert(ca, name, domain, latest.get(name), own=own, out=out)
        policy = site_policy_text(cfg)
        write_private(cfg.core.policy, policy.encode(), PRIVATE_FILE_MODE)
        core_toml = render_core_toml(cfg.site, _core_table(cfg, isolate), str(cfg.source))
        write_private(cfg.home / "core.toml", core_toml.encode(), CONFIG_FILE_MODE)
        for spec in cfg.processes:
            if spec.enabled:
                _write_config(paths, spec)
        if isolate:
            _isolate(cfg)
    except IsolationError as err:
        raise ProvisionError(f"isolation of {cfg.home}: {err}") from err
    except PkiError as err:
        raise ProvisionError(f"PKI {cfg.core.pki_dir}: {err}") from err
    except PolicyError as err:
        raise ProvisionError(f"policy for {cfg.source}: {err}") from err
    except OSError as err:
        where = err.filename or cfg.home
        raise ProvisionError(f"cannot set up the site in {where}: {err.strerror or err}") from err
    if out.issued:
        log.info("issued certificates: %s", ", ".join(out.issued))
    return out


def _socket_moves(cfg: SiteConfig, isolate: bool) -> bool:
    """Isolated, the home is root's: a socket configured directly in it is created in
    ``sock/`` instead, and the configured path becomes a link to it."""
    return isolate and cfg.core.socket.parent.resolve() == cfg.home.resolve()


def _core_table(cfg: SiteConfig, isolate: bool) -> dict[str, Any]:
    table = dict(cfg.core_table)
    if _socket_moves(cfg, isolate):
        table["socket"] = f"{SOCKET_DIR}/{cfg.core.socket.name}"
    return table


def _isolate(cfg: SiteConfig) -> None:
    _keep_site_file_private(cfg.source)
    enabled = [s for s in cfg.processes if s.enabled]
    clients = [s.name for s in enabled if s.kind != "simulator"]
    others = [s.name for s in enabled if s.kind == "simulator"]
    accounts = ensure_accounts(cfg.site, cfg.home, [*clients, *others])
    history = cfg.core.history.path
    audit = cfg.core.audit_path
    apply_ownership(
        cfg.home,
        site=cfg.site,
        accounts=accounts,
        clients=clients,
        others=others,
        pki_dir=cfg.core.pki_dir,
        data_paths={cfg.home / "data", history.parent, audit.parent},
        socket_link=cfg.core.socket if _socket_moves(cfg, True) else None,
        core_files=[
            cfg.core.policy,
            cfg.home / "core.toml",
            *(Path(f"{history}{s}") for s in ("", "-wal", "-shm")),
            audit,
        ],
    )


def _keep_site_file_private(path: Path) -> None:
    """site.toml holds every process's config table (device passwords among them): the isolated
    processes must not read it, so others' bits are cleared, with one warning."""
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            path.chmod(mode & 0o700)
            log.warning(
                "%s: mode %04o let other users read every process's config; changed to %04o",
                path,
                mode,
                mode & 0o700,
            )
    except OSError as err:
        log.warning("%s: cannot keep it private: %s", path, err.strerror or err)


def main(argv: list[str] | None = None) -> int:
    """`python -m trusted.supervisor.provision SITE_TOML`: provision in a child process, so the
    long-running supervisor never loads cryptography nor holds the CA key. Prints
    {"issued": [...], "refused": {...}} as JSON; exit 2 with the reason on stderr."""
    import argparse
    import json
    import sys

    from trusted.supervisor.site_config import SiteConfigError, load_site_config

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("site_toml")
    parser.add_argument("--isolate", action="store_true", help="create users, set owners")
    args = parser.parse_args(argv)
    try:
        out = provision(load_site_config(args.site_toml), isolate=args.isolate)
    except (ProvisionError, SiteConfigError) as err:
        print(err, file=sys.stderr)
        return 2
    print(json.dumps({"issued": out.issued, "refused": out.refused}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
