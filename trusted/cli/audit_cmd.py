"""`smx audit`: query the core's audit log through the API, or verify its hash chain."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

from google.protobuf.timestamp_pb2 import Timestamp

from smx.cli.client_cmd import _client
from smx.cli.connect import connect, site_home
from smx.v1 import admin_service_pb2 as admin_pb
from trusted.core.audit import AuditError, AuditLog
from trusted.core.config import ConfigError, load_core_config, parse_duration

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="query the audit log (needs the admin role) or verify it")
    p.add_argument(
        "--kind",
        default="",
        help="write, setpoint_request, setpoint_report, "
        "setpoint_expired, setpoint_superseded, denied, policy_reload",
    )
    p.add_argument("--identity", default="", help="exact identity URI")
    p.add_argument("--point", default="", help="glob over point names")
    p.add_argument("--since", default="", help="e.g. 10m, 1d (default: everything)")
    p.add_argument("--limit", type=int, default=100, help="newest N records (default 100)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check the hash chain of the local audit file instead of querying",
    )
    _client(p, run)


def run(args: argparse.Namespace) -> int:
    if args.verify:
        return verify(args)
    req = admin_pb.QueryAuditRequest(
        kind=args.kind, identity=args.identity, point_pattern=args.point, limit=args.limit
    )
    if args.since:
        start = Timestamp()
        start.FromMilliseconds(int((time.time() - parse_duration(args.since, "--since")) * 1000))
        req.start_time.CopyFrom(start)
    for r in connect(args).admin.QueryAudit(req).records:
        when = r.time.ToDatetime(dt.UTC).isoformat(timespec="milliseconds")
        point = f" {r.point}" if r.point else ""
        reason = f" {r.reason}" if r.reason else ""
        method = f" {r.method}" if r.method else ""
        print(f"{r.seq:>7} {when} {r.kind:<19} {r.identity}{method}{point}{reason} {r.detail}")
    return 0


def verify(args: argparse.Namespace) -> int:
    home = site_home(args)
    try:
        config = load_core_config(
            home / "core.toml" if (home / "core.toml").exists() else None, home=home
        )
        count = AuditLog(config.audit_path).verify()
    except (AuditError, ConfigError) as err:
        print(f"smx audit: {err}", file=sys.stderr)
        return 1
    print(f"{config.audit_path}: {count} records, hash chain intact")
    return 0
