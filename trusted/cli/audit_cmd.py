"""`smx audit`: page through the core's audit log through the API, or verify its hash chain."""

from __future__ import annotations

import argparse
import json
import sys
import time

from google.protobuf.json_format import MessageToDict

from smx.cli.client_cmd import _client, format_time
from smx.cli.connect import connect, site_home
from smx.timestamps import seconds_to_ts
from smx.v1 import admin_service_pb2 as admin_pb
from trusted.core.audit import AuditError
from trusted.core.audit_checkpoint import load_verifier, verify_log
from trusted.core.config import ConfigError, load_core_config, parse_duration
from trusted.pki import SERVER_NAME

__all__ = ["register"]

# Records per ListAuditRecords call (the core's maximum page size).
PAGE_SIZE = 1000


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit", help="list audit records, oldest first (needs the admin role), or verify the log"
    )
    p.add_argument(
        "--kind",
        default="",
        help="write, setpoint_request, setpoint_report, "
        "setpoint_expired, setpoint_superseded, denied, policy_reload",
    )
    p.add_argument("--identity", default="", help="exact identity URI")
    p.add_argument("--point", default="", help="glob over point names")
    p.add_argument("--since", default="", help="e.g. 10m, 1d (default: everything)")
    p.add_argument("--limit", type=int, default=0, help="stop after N records (default: all)")
    p.add_argument("--json", action="store_true", help="one JSON object per record and line")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check the local audit file instead of querying: its hash chain, every signed "
        "checkpoint against the core's certificate, and that it reaches the latest checkpoint",
    )
    _client(p, run)


def run(args: argparse.Namespace) -> int:
    if args.verify:
        return verify(args)
    req = admin_pb.ListAuditRecordsRequest(
        kind=args.kind, identity=args.identity, point_pattern=args.point, page_size=PAGE_SIZE
    )
    if args.since:
        since_s = parse_duration(args.since, "--since")
        req.start_time.CopyFrom(seconds_to_ts(time.time() - since_s))
    stubs, shown = connect(args), 0
    while True:
        resp = stubs.admin.ListAuditRecords(req)
        for r in resp.audit_records:
            _print(r, args.json)
            shown += 1
            if shown == args.limit:
                return 0
        if not resp.next_page_token:
            return 0
        req.page_token = resp.next_page_token


def _print(r: admin_pb.AuditRecord, as_json: bool) -> None:
    if as_json:
        obj = MessageToDict(r, preserving_proto_field_name=True)
        obj["detail"] = json.loads(r.detail or "{}")  # nested JSON, not a string to re-parse
        print(json.dumps(obj, sort_keys=True))
        return
    point = f" {r.point}" if r.point else ""
    reason = f" {r.reason}" if r.reason else ""
    method = f" {r.method}" if r.method else ""
    print(
        f"{r.seq:>7} {format_time(r.record_time)} {r.kind:<19} {r.identity}{method}{point}"
        f"{reason} {r.detail}"
    )


def verify(args: argparse.Namespace) -> int:
    """One line: ``audit log intact: ...`` (exit 0) or ``audit log BROKEN: ...`` (exit 1)."""
    home = site_home(args)
    try:
        config = load_core_config(
            home / "core.toml" if (home / "core.toml").exists() else None, home=home
        )
    except ConfigError as err:
        print(f"smx audit: {err}", file=sys.stderr)
        return 1
    try:
        key = load_verifier(config.pki_dir / "server" / f"{SERVER_NAME}.crt")
        report = verify_log(config.audit_path, key)
    except AuditError as err:
        print(f"audit log BROKEN: {config.audit_path}: {err}")
        return 1
    breaks = f"; {report.breaks} earlier break(s) recorded as audit_break" if report.breaks else ""
    print(
        f"audit log intact: {report.records} records, last signed checkpoint at seq "
        f"{report.last_checkpoint} (hash chain intact, signatures valid){breaks}"
    )
    return 0
