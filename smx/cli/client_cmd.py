"""`smx points|setpoint|whoami|admin`: inspect and drive a running core through its API."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from smx.aggregation import AGGREGATIONS
from smx.cli.connect import client_command, connect
from smx.cli.errors import EXIT_FAILED, EXIT_INTERRUPTED
from smx.cli.output import Table, add_json_option, print_json, print_table, proto_json
from smx.client import Stubs
from smx.quality import quality_name
from smx.setpoint_status import ANSWERED, APPLIED_NOW, MAX_VALID_S, status_name
from smx.settings import parse_duration_option
from smx.timestamps import iso_time, seconds_to_duration, seconds_to_ts
from smx.v1 import admin_service_pb2 as admin_pb
from smx.v1 import control_service_pb2 as control_pb
from smx.v1 import identity_service_pb2 as identity_pb
from smx.v1 import point_pb2
from smx.v1 import point_service_pb2 as points_pb
from smx.values import KINDS

__all__ = ["register", "parse_value", "format_value", "format_time", "non_negative"]

KIND_NAMES = list(KINDS)
# The columns of a point, in `points get` and `points watch`.
POINT_HEADER = ("NAME", "VALUE", "UNIT", "QUALITY", "SOURCE TIME", "REVISION", "WRITER")
POINT_WIDTHS = (28, 14, 6, 9, 24, 8, 0)
POINT_RIGHT = (1, 5)


def register(sub: argparse._SubParsersAction) -> None:
    points = sub.add_parser("points", help="read, watch, write and query points")
    psub = points.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = psub.add_parser("ls", aliases=["list"], help="list points (metadata) matching a glob")
    p.add_argument("pattern", nargs="?", default="**", help="glob, e.g. 'meter/*' (default **)")
    add_json_option(p, "one point's metadata per line")
    client_command(p, points_ls)
    p = psub.add_parser("get", help="current values")
    p.add_argument("names", nargs="+")
    add_json_option(p, "one point per line")
    client_command(p, points_get)
    p = psub.add_parser("watch", help="follow changes (Ctrl-C to stop)")
    p.add_argument("patterns", nargs="*")
    _watch_options(p)
    client_command(p, points_watch)
    p = psub.add_parser("write", help="write NAME=VALUE samples as one batch")
    p.add_argument("samples", nargs="+", metavar="NAME=VALUE")
    p.add_argument("--kind", choices=KIND_NAMES)
    client_command(p, points_write)
    p = psub.add_parser("declare", help="declare a point's metadata (as its owner)")
    p.add_argument("name")
    p.add_argument("--unit", default="")
    p.add_argument("--kind", choices=KIND_NAMES)
    p.add_argument("--period", help="expected refresh period, e.g. 1s (STALE after 2x)")
    p.add_argument("--description", default="")
    client_command(p, points_declare)
    p = psub.add_parser("history", help="samples from the high-resolution log")
    p.add_argument("names", nargs="+")
    p.add_argument("--since", default="1h", help="how far back, e.g. 15m, 2h, 7d (default 1h)")
    p.add_argument("--bucket", help="downsample into buckets of this width, e.g. 1m")
    p.add_argument(
        "--agg",
        choices=sorted(AGGREGATIONS),
        default="avg",
        help="what each --bucket holds of its samples (default avg)",
    )
    add_json_option(p, "one sample per line")
    client_command(p, points_history)

    sp = sub.add_parser("setpoint", help="request setpoints and follow their status")
    ssub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = ssub.add_parser("request", help="request NAME to take VALUE for a while")
    p.add_argument("name")
    p.add_argument("value")
    p.add_argument("--valid-for", default="15m", help="e.g. 30s, 15m (default 15m)")
    p.add_argument("--kind", choices=KIND_NAMES)
    p.add_argument(
        "--wait",
        nargs="?",
        const="10s",
        metavar="DURATION",
        help="wait up to DURATION (default 10s) for the outcome; exit 1 unless APPLIED or CLAMPED",
    )
    add_json_option(p, "the setpoint as one JSON object")
    client_command(p, setpoint_request)
    p = ssub.add_parser("status", help="the latest setpoint of NAME, or --id")
    p.add_argument("name", nargs="?", default="")
    p.add_argument("--id", default="")
    add_json_option(p, "the setpoint as one JSON object")
    client_command(p, setpoint_status)
    p = ssub.add_parser(
        "watch", help="follow the outcome of the setpoints you requested (Ctrl-C to stop)"
    )
    p.add_argument("patterns", nargs="*")
    _watch_options(p)
    client_command(p, setpoint_watch)

    p = sub.add_parser("whoami", help="identity and rights the core sees for a certificate")
    add_json_option(p, "the core's answer as one JSON object")
    client_command(p, whoami)

    adm = sub.add_parser("admin", help="core administration (needs the admin role)")
    asub = adm.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = asub.add_parser("clients", help="connected clients")
    add_json_option(p, "one client per line")
    client_command(p, admin_clients)
    client_command(asub.add_parser("reload", help="reload the policy file"), admin_reload)


def _watch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="start", type=non_negative, default=0, help="resume after REV")
    p.add_argument("--count", type=non_negative, default=0, help="stop after N changes (0: never)")
    add_json_option(p, "each message of the stream as the API sends it")


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def parse_value(text: str, kind: str | None = None) -> point_pb2.Value:
    """CLI text to a typed value: numbers are doubles unless --kind int; true/false are bools."""
    if kind == "string":
        return point_pb2.Value(string_value=text)
    if kind == "bool" or (kind is None and text.lower() in ("true", "false")):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"not a bool: {text!r}")
        return point_pb2.Value(bool_value=text.lower() in ("true", "1"))
    if kind == "int":
        try:
            return point_pb2.Value(int_value=int(text))
        except ValueError:
            raise ValueError(f"not a whole number (--kind int): {text!r}") from None
    try:
        return point_pb2.Value(double_value=float(text))
    except ValueError:
        if kind == "double":
            raise ValueError(f"not a number (--kind double): {text!r}") from None
        return point_pb2.Value(string_value=text)


def format_value(v: point_pb2.Value) -> str:
    field = v.WhichOneof("kind")
    if field is None:
        return "-"
    value = getattr(v, field)
    if field == "double_value":
        # 15 significant digits: every decimal a meter sends, exactly (billing arithmetic is
        # done on these), without binary noise or a trailing ".0".
        return f"{value:.15g}"
    return str(value).lower() if field == "bool_value" else str(value)


# A table shows at most this much of a string value; --json shows it whole.
TABLE_VALUE_CHARS = 60


def table_value(v: point_pb2.Value) -> str:
    """`format_value`, a long string cut to fit a table row, with its full length."""
    text = format_value(v)
    if v.WhichOneof("kind") != "string_value" or len(text) <= TABLE_VALUE_CHARS:
        return text
    return f"{text[: TABLE_VALUE_CHARS - 20]}... ({len(v.string_value.encode())} bytes)"


def format_time(ts: Timestamp) -> str:
    return iso_time(ts)


def _point_row(p: point_pb2.Point) -> tuple[str, ...]:
    return (
        p.name,
        table_value(p.value),
        p.unit,
        quality_name(p.quality),
        format_time(p.source_time),
        str(p.revision),
        p.writer,
    )


def _kind_name(kind: int) -> str:
    return point_pb2.ValueKind.Name(kind).removeprefix("VALUE_KIND_").lower()


def points_ls(args: argparse.Namespace) -> int:
    stubs, token = connect(args), ""
    found: list[point_pb2.PointMetadata] = []
    while True:
        resp = stubs.points.ListPoints(
            points_pb.ListPointsRequest(pattern=args.pattern, page_size=1000, page_token=token)
        )
        for m in resp.points:
            if args.json:
                print_json(proto_json(m))
            found.append(m)
        token = resp.next_page_token
        if not token:
            break
    if not args.json:
        print_table(
            ("NAME", "UNIT", "KIND", "PERIOD", "OWNER", "DESCRIPTION"),
            [
                (
                    m.name,
                    m.unit,
                    _kind_name(m.kind),
                    f"{m.expected_period.ToTimedelta().total_seconds():g}s"
                    if m.HasField("expected_period")
                    else "",
                    m.owner,
                    m.description,
                )
                for m in found
            ],
        )
    return 0


def points_get(args: argparse.Namespace) -> int:
    resp = connect(args).points.GetPoints(points_pb.GetPointsRequest(names=args.names))
    if args.json:
        for p in resp.points:
            print_json(proto_json(p))
    else:
        print_table(POINT_HEADER, [_point_row(p) for p in resp.points], POINT_RIGHT)
    found = {p.name for p in resp.points}
    missing = [n for n in dict.fromkeys(args.names) if n not in found]
    if missing:
        sys.stdout.flush()  # the table first, then the line about what is not in it
        print(
            f"smx points: no such point, or not yours to read: {', '.join(missing)} "
            "(`smx points ls` lists what you may read)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


def _follow(stream: Any, args: argparse.Namespace, show: Callable[[Any], int]) -> int:
    """Print a watch stream until --count items, or Ctrl-C (the usual end of a watch: exit 130
    without a message)."""
    seen = 0
    try:
        for msg in stream:
            if args.json:
                print_json(proto_json(msg))
            seen += show(msg)
            sys.stdout.flush()  # a watch is read as it comes, through a pipe too
            if args.count and seen >= args.count:
                stream.cancel()
                return 0
    except KeyboardInterrupt:
        stream.cancel()
        return EXIT_INTERRUPTED
    return 0


def points_watch(args: argparse.Namespace) -> int:
    stream = connect(args).points.WatchPoints(
        points_pb.WatchPointsRequest(patterns=args.patterns, start_revision=args.start)
    )
    table = Table(POINT_HEADER, POINT_WIDTHS, POINT_RIGHT)
    # Points so far of a snapshot that comes in several messages; None: no such snapshot open.
    counted: int | None = None

    def show(msg: points_pb.WatchPointsResponse) -> int:
        nonlocal counted
        if args.json:
            return len(msg.points)
        if msg.snapshot:
            if msg.snapshot_complete:
                n = len(msg.points)
                print(f"-- snapshot at revision {msg.revision}: {n} point{'s' * (n != 1)}")
            else:  # more messages follow (a core before snapshot_complete never says when)
                print("-- snapshot:")
                counted = 0
            table.start()
        for p in msg.points:
            table.row(*_point_row(p))
        if counted is not None:
            counted += len(msg.points)
            if msg.snapshot_complete:
                print(f"-- snapshot complete at revision {msg.revision}: {counted} points")
                counted = None
        return len(msg.points)

    return _follow(stream, args, show)


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
        meta.expected_period.CopyFrom(
            seconds_to_duration(parse_duration_option(args.period, "--period"))
        )
    connect(args).points.DeclarePoints(points_pb.DeclarePointsRequest(points=[meta]))
    print(f"declared {args.name}")
    return 0


def points_history(args: argparse.Namespace) -> int:
    start = seconds_to_ts(time.time() - parse_duration_option(args.since, "--since"))
    req = points_pb.ReadHistoryRequest(names=args.names, start_time=start)
    if args.bucket:
        req.bucket.CopyFrom(seconds_to_duration(parse_duration_option(args.bucket, "--bucket")))
        req.aggregation = AGGREGATIONS[args.agg]
    chunks: Iterable[points_pb.ReadHistoryResponse] = connect(args).points.ReadHistory(req)
    table = Table(("NAME", "TIME", "VALUE", "QUALITY", "SAMPLES"), (28, 24, 14, 9, 0), (2,))
    # The header once the core has answered: a refusal then prints its line alone.
    header = not args.json
    for chunk in chunks:
        if header:
            table.start()
            header = False
        for s in chunk.samples:
            if args.json:
                print_json({"name": chunk.name, **proto_json(s)})
                continue
            table.row(
                chunk.name,
                format_time(s.sample_time),
                table_value(s.value),
                quality_name(s.quality),
                s.count or 1,
            )
    if header:  # nothing stored yet: the header alone
        table.start()
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
    valid = seconds_to_duration(parse_duration_option(args.valid_for, "--valid-for"))
    request = control_pb.RequestSetpointRequest(
        name=args.name, value=parse_value(args.value, args.kind), valid_for=valid
    )
    wait_s = None if args.wait is None else parse_duration_option(args.wait, "--wait")
    if wait_s is not None and wait_s > MAX_VALID_S:
        raise ValueError(f"--wait: at most 24h, a setpoint's longest validity (got {args.wait})")
    stubs = connect(args)
    if wait_s is None:
        sp = stubs.control.RequestSetpoint(request).setpoint
    else:
        sp = _request_and_wait(stubs, request, wait_s)
    if args.json:
        print_json(proto_json(sp))
    else:
        _print_setpoint(sp)
    status = status_name(sp.status)
    if args.wait is None or status in APPLIED_NOW:
        return 0
    if status in ANSWERED:
        why = f" ({sp.reason})" if sp.reason else ""
        print(f"smx setpoint: {sp.name} not applied: {status}{why}", file=sys.stderr)
    else:
        print(
            f"smx setpoint: no outcome within {args.wait}: still {status} (is the extension "
            f"that owns {sp.name} running? `smx status` shows it)",
            file=sys.stderr,
        )
    return EXIT_FAILED


def _request_and_wait(
    stubs: Stubs, request: control_pb.RequestSetpointRequest, wait_s: float
) -> control_pb.Setpoint:
    """Request, then follow the setpoint on WatchSetpointOutcomes until its outcome is known
    (ANSWERED) or `wait_s` passed: the latest state either way. The stream is open (its
    snapshot received) before the request, so no change is missed."""
    watch = control_pb.WatchSetpointOutcomesRequest(
        patterns=[request.name],
        # A heartbeat at least every second brings the loop back to its deadline.
        heartbeat_interval=seconds_to_duration(min(max(wait_s, 0.1), 1.0)),
    )
    stream = stubs.control.WatchSetpointOutcomes(watch, timeout=wait_s + 10)
    sp = None
    try:
        next(stream)  # the snapshot: the watch is in place
        sp = stubs.control.RequestSetpoint(request).setpoint
        deadline = time.monotonic() + wait_s
        while status_name(sp.status) not in ANSWERED and time.monotonic() < deadline:
            for change in next(stream).setpoints:  # oldest first
                if change.id == sp.id:
                    sp = change
        return sp
    except BaseException:
        if sp is not None:  # requested, and in force for --valid-for: say which one it is
            print(
                f"smx setpoint: requested as id {sp.id} ({status_name(sp.status)} when the wait "
                f"ended): `smx setpoint status --id {sp.id}` follows it",
                file=sys.stderr,
            )
        raise
    finally:
        stream.cancel()


def setpoint_status(args: argparse.Namespace) -> int:
    if bool(args.name) == bool(args.id):
        raise ValueError("give either a setpoint NAME or --id")
    # name and id are a oneof: set only the one given.
    req = (
        control_pb.GetSetpointRequest(id=args.id)
        if args.id
        else control_pb.GetSetpointRequest(name=args.name)
    )
    sp = connect(args).control.GetSetpoint(req).setpoint
    if args.json:
        print_json(proto_json(sp))
    else:
        _print_setpoint(sp)
    return 0


def setpoint_watch(args: argparse.Namespace) -> int:
    stream = connect(args).control.WatchSetpointOutcomes(
        control_pb.WatchSetpointOutcomesRequest(patterns=args.patterns, start_revision=args.start)
    )
    table = Table(
        ("REVISION", "NAME", "VALUE", "STATUS", "APPLIED", "EXPIRES", "ID", "REASON"),
        (8, 20, 10, 10, 10, 24, 36, 0),
        (0, 2, 4),
    )

    def show(msg: control_pb.WatchSetpointOutcomesResponse) -> int:
        if args.json:
            return len(msg.setpoints)
        if msg.snapshot:
            print(f"-- in force at revision {msg.revision}: {len(msg.setpoints)} setpoints")
            table.start()
        for sp in msg.setpoints:
            applied = format_value(sp.applied_value) if sp.HasField("applied_value") else ""
            table.row(
                sp.revision,
                sp.name,
                format_value(sp.value),
                status_name(sp.status),
                applied,
                format_time(sp.expire_time),
                sp.id,
                sp.reason,
            )
        return len(msg.setpoints)

    return _follow(stream, args, show)


def whoami(args: argparse.Namespace) -> int:
    r = connect(args).identity.WhoAmI(identity_pb.WhoAmIRequest())
    if args.json:
        print_json(proto_json(r))
        return 0
    print(f"identity  {r.identity}\nroles     {', '.join(r.roles) or '(none: default deny)'}")
    print(f"serial    {r.certificate_serial}\nexpires   {format_time(r.certificate_expire_time)}")
    print_table(("VERBS", "POINTS"), [(",".join(x.verbs), " ".join(x.patterns)) for x in r.rules])
    return 0


def admin_clients(args: argparse.Namespace) -> int:
    stubs, token = connect(args), ""
    rows = []
    while True:
        resp = stubs.admin.ListClients(
            admin_pb.ListClientsRequest(page_size=1000, page_token=token)
        )
        for c in resp.clients:
            if args.json:
                print_json(proto_json(c))
            rows.append(
                (
                    c.identity,
                    c.calls,
                    c.open_streams,
                    format_time(c.first_seen_time),
                    format_time(c.last_seen_time),
                )
            )
        token = resp.next_page_token
        if not token:
            break
    if not args.json:
        print_table(("IDENTITY", "CALLS", "STREAMS", "FIRST SEEN", "LAST SEEN"), rows, (1, 2))
    return 0


def admin_reload(args: argparse.Namespace) -> int:
    r = connect(args).admin.ReloadPolicy(admin_pb.ReloadPolicyRequest())
    print(f"policy reloaded: {r.roles} roles, {r.bindings} bindings")
    return 0
