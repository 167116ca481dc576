"""`smx pki`: create the site CA, issue, revoke and list client certificates."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from smx.cli.connect import require_site, site_home
from smx.cli.errors import CliError
from smx.cli.output import add_json_option, print_json, print_table
from smx.identity import DOMAINS

__all__ = ["register"]


def _pki_dir(args: argparse.Namespace) -> Path:
    """The site's pki directory; for every command but `init`, only if a site is there."""
    if getattr(args, "pki_command", "") == "init":
        return site_home(args) / "pki"
    return require_site(args) / "pki"


def _cmd_init(args: argparse.Namespace) -> int:
    from trusted.core.site_files import SHARED_DIR_MODE, private_dir
    from trusted.pki import SiteCA

    pki = _pki_dir(args)
    # A new home is born with the mode the core wants of it (it would otherwise warn at its
    # first start, and correct it, as if the user had done something wrong).
    private_dir(pki.parent, SHARED_DIR_MODE)
    ca = SiteCA.init(pki, args.site, days=args.days)
    not_after = ca.ca_certificate.not_valid_after_utc
    print(f"site CA for {ca.site} created in {ca.pki_dir} (valid until {not_after:%Y-%m-%d})")
    print(f"  CA certificate:     {ca.ca_cert_path}")
    print(f"  CA key (keep safe): {ca.ca_key_path}")
    print(f"  CRL:                {ca.crl_path}")
    print(f"  core certificate:   {ca.server_cert_path}")
    print(f"  core key:           {ca.server_key_path}")
    return 0


def _cmd_issue(args: argparse.Namespace) -> int:
    from trusted.pki import SiteCA

    ca = SiteCA.load(_pki_dir(args))
    live = [c for c in ca.list() if c.name == args.name and not c.revoked]
    issued = ca.issue(args.name, args.domain, days=args.days, replace=args.replace, by_hand=True)
    for old in live:
        print(f"revoked {old.identity} serial {old.serial:x} (replaced)")
    print(f"issued {issued.identity} serial {issued.serial:x} valid until {issued.not_after:%F}")
    print(f"  certificate: {issued.cert_path}")
    print(f"  key:         {issued.key_path}")
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    from trusted.pki import SiteCA

    ca = SiteCA.load(_pki_dir(args))
    revoked = ca.revoke(args.name)
    print(f"revoked {revoked.identity} serial {revoked.serial:x}")
    print(f"  CRL updated: {ca.crl_path} (a running core picks it up within a second)")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from trusted.pki import SiteCA

    ca = SiteCA.load(_pki_dir(args))
    certs = ca.list()
    if args.json:
        for c in certs:
            print_json(
                {
                    "name": c.name,
                    "domain": c.domain,
                    "identity": c.identity,
                    "serial": f"{c.serial:x}",
                    "not_after": c.not_after.isoformat(),
                    "status": c.status,
                    "certificate": str(c.cert_path),
                    "key": str(c.key_path),
                }
            )
        return 0
    print_table(
        ("NAME", "DOMAIN", "IDENTITY", "SERIAL", "NOT AFTER (UTC)", "STATUS"),
        [
            (
                c.name,
                c.domain,
                c.identity,
                f"{c.serial:x}",
                f"{c.not_after:%Y-%m-%d %H:%M}",
                c.status,
            )
            for c in certs
        ],
    )
    if not certs:
        print(f"(no client certificates issued yet in {ca.pki_dir})")
    return 0


Handler = Callable[[argparse.Namespace], int]


def _guarded(func: Handler) -> Handler:
    """Turn PKI and file errors into one `smx pki: <message>` line and exit status 2."""

    def run(args: argparse.Namespace) -> int:
        # cryptography costs memory: only commands that need it load it (`smx run` does not).
        from trusted.pki import PkiError

        try:
            return func(args)
        except PkiError as err:
            raise CliError(str(err)) from None
        except BrokenPipeError:
            raise  # the reader of the output went away: not a PKI problem
        except OSError as err:
            where = f" {err.filename}" if err.filename else ""
            raise CliError(f"{err.strerror or err}{where}") from None

    return run


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 day, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add `smx pki init|issue|revoke|list` to the top-level sub-command parsers."""
    pki = sub.add_parser("pki", help="site CA and client certificates")
    actions = pki.add_subparsers(dest="pki_command", required=True, metavar="ACTION")

    p = actions.add_parser("init", help="create the site CA and the core's certificate")
    p.add_argument("--site", required=True, help="site id, e.g. usm-0017")
    p.add_argument("--days", type=_positive, default=3650, help="CA lifetime (default 3650)")
    p.set_defaults(func=_guarded(_cmd_init))

    p = actions.add_parser("issue", help="issue a client certificate")
    p.add_argument("name", help="client name, e.g. fronius")
    p.add_argument("--domain", required=True, choices=DOMAINS, help="trust domain")
    p.add_argument("--days", type=_positive, default=365, help="lifetime (default 365)")
    p.add_argument(
        "--replace", action="store_true", help="revoke the current certificate of NAME first"
    )
    p.set_defaults(func=_guarded(_cmd_issue))

    p = actions.add_parser("revoke", help="revoke the current certificate of a client")
    p.add_argument("name", help="client name")
    p.set_defaults(func=_guarded(_cmd_revoke))

    p = actions.add_parser("list", aliases=["ls"], help="list issued client certificates")
    add_json_option(p, "one certificate per line")
    p.set_defaults(func=_guarded(_cmd_list))
