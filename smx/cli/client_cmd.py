"""`smx points|setpoint|whoami|admin`: inspect and drive a running core through its API."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import grpc
from google.protobuf.json_format import MessageToJson
from google.protobuf.timestamp_pb2 import Timestamp

from smx.cli.connect import add_connection_options, connect
from smx.client import error_reason
from smx.quality import quality_name
from smx.setpoint_status import status_name
from smx.settings import ConfigError, parse_duration
from smx.timestamps import iso_time, seconds_to_duration, seconds_to_ts
from smx.v1 import admin_service_pb2 as admin_pb
from smx.v1 import control_service_pb2 as control_pb
from smx.v1 import identity_service_pb2 as identity_pb
from smx.v1 import point_pb2
from smx.v1 import point_service_pb2 as points_pb
from smx.values import KINDS

__all__ = ["register", "parse_value", "format_value", "format_time"]

AGG = {
    "min": points_pb.AGGREGATION_MIN,
    "max": points_pb.AGGREGATION_MAX,
    "avg": points_pb.AGGREGATION_AVG,
    "last": points_pb.AGGREGATION_LAST,
}


def register(sub: argparse._SubParsersAction) -> None:
    points = sub.add_parser("points", help="read, watch, write and query points")
    psub = points.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = psub.add_parser("ls", help="list points (metadata) matching a glob")
    p.add_argument("pattern", nargs="?", default="**")
    _client(p, points_ls)
    p = psub.add_parser("get", help="current values")
    p.add_argument("names", nargs="+")
    p.add_argument("--json", action="store_true")
    _client(p, points_get)
    p = psub.add_parser("watch", help="follow changes (Ctrl-C to stop)")
    p.add_argument("patterns", nargs="*")
    p.add_argument("--from", dest="start", type=int, default=0, help="resume after revision")
    p.add_argument("--count", type=int, default=0, help="stop after N changes (0: never)")
    _client(p, points_watch)
    p = psub.add_parser("write", help="write NAME=VALUE samples as one batch")
    p.add_argument("samples", nargs="+", metavar="NAME=VALUE")
    p.add_argument("--kind", choices=["double", "int", "bool", "string"])
    _client(p, points_write)
    p = psub.add_parser("declare", help="declare a point's metadata (as its owner)")
    p.add_argument("name")
    p.add_argument("--unit", default="")
    p.add_argument("--kind", choices=["double", "int", "bool", "string"])
    p.add_argument("--period", help="expected refresh period, e.g. 1s (STALE after 2x)")
    p.add_argument("--description", default="")
    _client(p, points_declare)
    p = psub.add_parser("history", help="samples from the high-resolution log")
    p.add_argument("names", nargs="+")
    p.add_argument("--since", default="1h", help="how far back, e.g. 15m, 2h, 7d (default 1h)")
    p.add_argument("--bucket", help="downsample into buckets of this width, e.g. 1m")
    p.add_argument("--agg", choices=sorted(AGG), default="avg")
    _client(p, points_history)

    sp = sub.add_parser("setpoint", help="request setpoints and follow their status")
    ssub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = ssub.add_parser("request", help="request NAME to take VALUE for a while")
    p.add_argument("name")
    p.add_argument("value")
    p.add_argument("--valid-for", default="15m", help="e.g. 30s, 15m (default 15m)")
    p.add_argument("--kind", choices=["double", "int", "bool", "string"])
    _client(p, setpoint_request)
    p = ssub.add_parser("status", help="the latest setpoint of NAME, or --id")
    p.add_argument("name", nargs="?", default="")
    p.add_argument("--id", default="")
    _client(p, setpoint_status)
    p = ssub.add_parser(
        "watch", help="follow the outcome of the setpoints you requested (Ctrl-C to stop)"
    )
    p.add_argument("patterns", nargs="*")
    p.add_argument("--from", dest="start", type=int, default=0, help="resume after revision")
    p.add_argument("--count", type=int, default=0, help="stop after N changes (0: never)")
    _client(p, setpoint_watch)

    p = sub.add_parser("whoami", help="identity and rights the core sees for a certificate")
    _client(p, whoami)

    adm = sub.add_parser("admin", help="core administration (needs the admin role)")
    asub = adm.add_subparsers(dest="action", required=True, metavar="ACTION")
    _client(asub.add_parser("clients", help="connected clients"), admin_clients)
    _client(asub.add_parser("reload", help="reload the policy file"), admin_reload)


def _client(p: argparse.ArgumentParser, fn: Callable[[argparse.Namespace], int]) -> None:
    add_connection_options(p)
    p.set_defaults(func=lambda args: _guarded(fn, args))


def _guarded(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return fn(args)
    except grpc.RpcError as err:
        reason = error_reason(err)
        tag = f" [{reason}]" if reason else ""
        print(f"smx: {err.code().name}{tag}: {err.details()}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, ConfigError) as err:
        print(f"smx: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def parse_value(text: str, kind: str | None = None) -> point_pb2.Value:
    """CLI text to a typed value: numbers are doubles unless --kind int; true/false are bools."""
    if kind == "string":
        return point_pb2.Value(string_value=text)
    if kind == "bool" or (kind is None and text.lower() in ("true", "false")):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"not a bool: {text!r}")
        return point_pb2.Value(bool_value=text.lower() in ("true", "1"))
    if kind == "int":
        return point_pb2.Value(int_value=int(text))
    try:
        return point_pb2.Value(double_value=float(text))
    except ValueError:
        if kind == "double":
            raise
        return point_pb2.Value(string_value=text)


def format_value(v: point_pb2.Value) -> str:
    field = v.WhichOneof("kind")
    if field is None:
        return "-"
    value = getattr(v, field)
    if field == "double_value":
        return f"{value:.6g}"
    return str(value).lower() if field == "bool_value" else str(value)


def format_time(ts: Timestamp) -> str:
    return iso_time(ts)


def _print_point(p: point_pb2.Point) -> None:
    print(
        f"{p.name:<28} {format_value(p.value):>14} {p.unit:<6} {quality_name(p.quality):<9} "
        f"{format_time(p.source_time)}  rev {p.revision}  by {p.writer}"
    )


def points_ls(args: argparse.Namespace) -> int:
    stubs, token = connect(args), ""
    while True:
        resp = stubs.points.ListPoints(
            points_pb.ListPointsRequest(pattern=args.pattern, page_size=1000, page_token=token)
        )
        for m in resp.points:
            kind = point_pb2.ValueKind.Name(m.kind).removeprefix("VALUE_KIND_").lower()
            period = (
                f"{m.expected_period.ToTimedelta().total_seconds():g}s"
                if m.HasField("expected_period")
                else "-"
            )
            print(
                f"{m.name:<28} {m.unit:<6} {kind:<11} {period:>6}  {m.owner or '-'}  "
                f"{m.description}"
            )
        token = resp.next_page_token
        if not token:
            return 0


def points_get(args: argparse.Namespace) -> int:
    resp = connect(args).points.GetPoints(points_pb.GetPointsRequest(names=args.names))
    if args.json:
        print(MessageToJson(resp))
        return 0
    for p in resp.points:
        _print_point(p)
    return 0


def points_watch(args: argparse.Namespace) -> int:
    stream = connect(args).points.WatchPoints(
        points_pb.WatchPointsRequest(patterns=args.patterns, start_revision=args.start)
    )
    seen = 0
    for msg in stream:
        if msg.snapshot:
            print(f"-- snapshot at revision {msg.revision}: {len(msg.points)} points")
        for p in msg.points:
            _print_point(p)
            seen += 1
        if args.count and seen >= args.count:
            stream.cancel()
            return 0
    return 0


def points_write(args: argparse.Namespace) -> int:
    samples = []
    for item in args.samples:
        name, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"expected NAME=VALUE, got {item!r}")
        samples.append(point_pb2.PointSample(name=name, value=parse_value(text, args.kind)))
    resp = connect(args).points.WritePoints(points_pb.WritePointsRequest(samples=samples))
    print(f"written at revision {resp.revision}")
    return 0


def points_declare(args: argparse.Namespace) -> int:
    kind = KINDS[args.kind] if args.kind else point_pb2.VALUE_KIND_UNSPECIFIED
    meta = point_pb2.PointMetadata(
        name=args.name, unit=args.unit, kind=kind, description=args.description
    )
    if args.period:
        meta.expected_period.CopyFrom(seconds_to_duration(parse_duration(args.period, "--period")))
    connect(args).points.DeclarePoints(points_pb.DeclarePointsRequest(points=[meta]))
    print(f"declared {args.name}")
    return 0


def points_history(args: argparse.Namespace) -> int:
    start = seconds_to_ts(time.time() - parse_duration(args.since, "--since"))
    req = points_pb.ReadHistoryRequest(names=args.names, start_time=start)
    if args.bucket:
        req.bucket.CopyFrom(seconds_to_duration(parse_duration(args.bucket, "--bucket")))
        req.aggregation = AGG[args.agg]
    for chunk in connect(args).points.ReadHistory(req):
        for s in chunk.samples:
            extra = f"  ({s.count} samples)" if s.count > 1 else ""
            print(
                f"{chunk.name:<28} {format_time(s.sample_time)} {format_value(s.value):>14} "
                f"{quality_name(s.quality)}{extra}"
            )
    return 0


def _print_setpoint(sp: control_pb.Setpoint) -> None:
    status = status_name(sp.status)
    applied = f" applied {format_value(sp.applied_value)}" if sp.HasField("applied_value") else ""
    why = f" ({sp.reason})" if sp.reason else ""
    print(f"{sp.name} = {format_value(sp.value)}: {status}{applied}{why}")
    print(
        f"  id {sp.id}, requested by {sp.requester} at {format_time(sp.request_time)}, "
        f"expires {format_time(sp.expire_time)}"
    )
    if sp.reporter:
        print(f"  reported by {sp.reporter} at {format_time(sp.report_time)}")


def setpoint_request(args: argparse.Namespace) -> int:
    valid = seconds_to_duration(parse_duration(args.valid_for, "--valid-for"))
    resp = connect(args).control.RequestSetpoint(
        control_pb.RequestSetpointRequest(
            name=args.name, value=parse_value(args.value, args.kind), valid_for=valid
        )
    )
    _print_setpoint(resp.setpoint)
    return 0


def setpoint_status(args: argparse.Namespace) -> int:
    if bool(args.name) == bool(args.id):
        raise ValueError("give either a setpoint NAME or --id")
    # name and id are a oneof: set only the one given.
    req = (
        control_pb.GetSetpointRequest(id=args.id)
        if args.id
        else control_pb.GetSetpointRequest(name=args.name)
    )
    _print_setpoint(connect(args).control.GetSetpoint(req).setpoint)
    return 0


def setpoint_watch(args: argparse.Namespace) -> int:
    stream = connect(args).control.WatchSetpointOutcomes(
        control_pb.WatchSetpointOutcomesRequest(patterns=args.patterns, start_revision=args.start)
    )
    seen = 0
    for msg in stream:
        if msg.snapshot:
            print(f"-- in force at revision {msg.revision}: {len(msg.setpoints)} setpoints")
        for sp in msg.setpoints:
            print(f"rev {sp.revision}  ", end="")
            _print_setpoint(sp)
            seen += 1
        if args.count and seen >= args.count:
            stream.cancel()
            return 0
    return 0


def whoami(args: argparse.Namespace) -> int:
    r = connect(args).identity.WhoAmI(identity_pb.WhoAmIRequest())
    print(f"identity  {r.identity}\nroles     {', '.join(r.roles) or '(none: default deny)'}")
    print(f"serial    {r.certificate_serial}\nexpires   {format_time(r.certificate_expire_time)}")
    for rule in r.rules:
        print(f"  {','.join(rule.verbs):<24} {' '.join(rule.patterns)}")
    return 0


def admin_clients(args: argparse.Namespace) -> int:
    stubs, token = connect(args), ""
    while True:
        resp = stubs.admin.ListClients(
            admin_pb.ListClientsRequest(page_size=1000, page_token=token)
        )
        for c in resp.clients:
            print(
                f"{c.identity:<48} calls {c.calls:>8}  streams {c.open_streams:>3}  "
                f"first {format_time(c.first_seen_time)}  last {format_time(c.last_seen_time)}"
            )
        token = resp.next_page_token
        if not token:
            return 0


def admin_reload(args: argparse.Namespace) -> int:
    r = connect(args).admin.ReloadPolicy(admin_pb.ReloadPolicyRequest())
    print(f"policy reloaded: {r.roles} roles, {r.bindings} bindings")
    return 0
