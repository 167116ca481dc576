"""`smx audit`: page through the core's audit log through the API, or verify its hash chain."""

from __future__ import annotations

import argparse
import json
import time

from smx.cli.client_cmd import format_time, non_negative
from smx.cli.connect import client_command, connect, require_site
from smx.cli.errors import EXIT_FAILED, CliError
from smx.cli.output import Table, add_json_option, print_json, proto_json
from smx.identity import Identity, IdentityError
from smx.names import Glob, InvalidName
from smx.settings import parse_duration_option
from smx.timestamps import seconds_to_ts
from smx.v1 import admin_service_pb2 as admin_pb
from trusted.core.audit import KINDS, AuditError
from trusted.core.audit_checkpoint import load_verifier, verify_log
from trusted.core.config import ConfigError, load_core_config
from trusted.pki import SERVER_NAME

__all__ = ["register"]

# Records per ListAuditRecords call (the core's maximum page size).
PAGE_SIZE = 1000
# The kinds of record --kind may ask for.
AUDIT_KINDS = sorted(KINDS)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit", help="list audit records, oldest first (needs the admin role), or verify the log"
    )
    p.add_argument("--kind", default="", metavar="KIND", help=f"one of {', '.join(AUDIT_KINDS)}")
    p.add_argument("--identity", default="", help="exact identity URI, spiffe://SITE/DOMAIN/NAME")
    p.add_argument("--point", default="", help="glob over point names, e.g. 'meter/*'")
    p.add_argument("--since", default="", help="e.g. 10m, 1d (default: everything)")
    p.add_argument(
        "--limit", type=non_negative, default=0, help="stop after N records (default: all)"
    )
    add_json_option(p, "one record per line; with --verify, the result as one object")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check the local audit file instead of querying: its hash chain, every signed "
        "checkpoint against the core's certificate, and that it reaches the latest checkpoint",
    )
    client_command(p, run)


def check_filters(args: argparse.Namespace) -> None:
    """Refuse a filter the core would silently match nothing with, naming the valid values."""
    if args.kind and args.kind not in AUDIT_KINDS:
        raise CliError(f"unknown --kind {args.kind!r}: use one of {', '.join(AUDIT_KINDS)}")
    if args.identity:
        try:
            Identity.parse(args.identity)
        except IdentityError as err:
            raise CliError(f"--identity: {err}") from None
    if args.point:
        try:
            Glob(args.point)
        except InvalidName as err:
            raise CliError(f"--point: {err}") from None


def run(args: argparse.Namespace) -> int:
    check_filters(args)
    if args.verify:
        return verify(args)
    req = admin_pb.ListAuditRecordsRequest(
        kind=args.kind, identity=args.identity, point_pattern=args.point, page_size=PAGE_SIZE
    )
    if args.since:
        since_s = parse_duration_option(args.since, "--since")
        req.start_time.CopyFrom(seconds_to_ts(time.time() - since_s))
    stubs, shown = connect(args), 0
    table = Table(
        ("SEQ", "TIME", "KIND", "IDENTITY", "METHOD", "POINT", "REASON", "DETAIL"),
        (7, 24, 19, 36, 32, 20, 22, 0),
        (0,),
    )
    if not args.json:
        table.start()
    while True:
        resp = stubs.admin.ListAuditRecords(req)
        for r in resp.audit_records:
            if args.json:
                obj = proto_json(r)
                obj["detail"] = json.loads(r.detail or "{}")  # nested JSON, not a string
                print_json(obj)
            else:
                table.row(
                    r.seq,
                    format_time(r.record_time),
                    r.kind,
                    r.identity,
                    r.method,
                    r.point,
                    r.reason,
                    r.detail,
                )
            shown += 1
            if shown == args.limit:
                return 0
        if not resp.next_page_token:
            return 0
        req.page_token = resp.next_page_token


def verify(args: argparse.Namespace) -> int:
    """One line: ``audit log intact: ...`` (exit 0) or ``audit log BROKEN: ...`` (exit 1); the
    local file, so the filters of a query do not apply."""
    used = [f"--{k}" for k in ("kind", "identity", "point", "since", "limit") if getattr(args, k)]
    if used:
        raise CliError(f"--verify checks the whole log: {', '.join(used)} cannot go with it")
    home = require_site(args)
    try:
        config = load_core_config(
            home / "core.toml" if (home / "core.toml").exists() else None, home=home
        )
    except ConfigError as err:
        raise CliError(str(err)) from None
    try:
        key = load_verifier(config.pki_dir / "server" / f"{SERVER_NAME}.crt")
        report = verify_log(config.audit_path, key)
    except AuditError as err:
        if args.json:
            print_json({"intact": False, "path": str(config.audit_path), "error": str(err)})
        else:
            print(f"audit log BROKEN: {config.audit_path}: {err}")
        return EXIT_FAILED
    if args.json:
        print_json(
            {
                "intact": True,
                "path": str(config.audit_path),
                "records": report.records,
                "last_checkpoint": report.last_checkpoint,
                "breaks": report.breaks,
            }
        )
        return 0
    breaks = f"; {report.breaks} earlier break(s) recorded as audit_break" if report.breaks else ""
    print(
        f"audit log intact: {report.records} records, last signed checkpoint at seq "
        f"{report.last_checkpoint} (hash chain intact, signatures valid){breaks}"
    )
    return 0
