"""Watch latency and cost per message: write -> subscriber latency at 1,000 points/s with 0, 1
and 20 subscribers, against a bare grpc.aio server-streaming relay and (when `mosquitto` is
installed) the Mosquitto MQTT broker, measured in the same run on the same transport: a Unix
socket with TLS and client certificates, the same serialized payload.

- writer: this process, grpc.aio, 10 points every 10 ms, each with source_time = now (with
  `--native`, the C++ `bench/native/writer`, same schedule and payload).
- subscribers: separate processes (spawned), each holding one or more streams, each stream on
  its own connection (as separate clients); latency = receive time - source_time, per point,
  on the same machine clock.
- core: WritePoints (meter) -> WatchPoints(["meter/w*"]) (gui).
- baseline: Publish(the same serialized WritePointsRequest) -> bare server -> Subscribe stream
  of those bytes, parsed by the subscriber; same processes, streams and credentials.
- mqtt: the same bytes published with QoS 1 to Mosquitto (started by the bench on a Unix socket
  with the site's server certificate, client certificates required), subscribers at QoS 1.
- server CPU per write: the server process's CPU time during a case / the writes of the case
  (with 0 subscribers: the cost of one write; with 20: including the fan-out).

Run: `python bench/watch_latency.py [--quick] [--seconds 6] [--procs 4] [--one-point] [--native]
[--streamed-writer]` (`--one-point`: 1,000 one-point writes/s instead of 100 writes of 10 points;
`--streamed-writer`: the core's writes are requests on one StreamWritePoints stream instead of
unary WritePoints calls, same schedule and writes in flight; the bare relay and Mosquitto are
written to as before)

`--native`: the subscribers of every case are `bench/native/watcher` (C++: gRPC, protobuf,
libmosquitto), one process per stream, instead of Python processes, and the writer is
`bench/native/writer` (`--python-writer` keeps the Python one): on 2 cores, 20 Python
subscribers at 1,000 messages/s each saturate the CPU by themselves, and the Python writer's own
CPU per write is several times the C++ one's (both printed), so the servers are no longer what
is measured. `bench/native/build` builds them first (as root it apt-get installs the compiler,
protoc, the gRPC/protobuf/libmosquitto -dev packages when missing).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing as mp
import os
import pwd
import queue
import resource
import select
import shutil
import subprocess
import threading
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import harness
from harness import BareServer, BenchCore, Site, fmt_table, percentile, target_line

from smx.client import Credentials
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as pb
from trusted.supervisor.site_config import SupervisorSettings

__all__ = ["main"]

POINTS_PER_WRITE = 10
WRITE_PERIOD = 0.010  # 10 points every 10 ms: 1,000 points/s (`--one-point`: 1 every 1 ms)
WARMUP = 0.5  # seconds of samples discarded at the start
TARGETS_P99_MS = {1: 10.0, 20: 25.0}
TARGETS_P99_MS_ONE_POINT = {1: 10.0, 20: 10.0}
MAX_IN_FLIGHT = 64  # writes the writer keeps open when the schedule is faster than a round trip
TOPIC = "meter/w"
NATIVE = Path(__file__).resolve().parent / "native"


def _configure(one_point: bool) -> None:
    global POINTS_PER_WRITE, WRITE_PERIOD
    POINTS_PER_WRITE, WRITE_PERIOD = (1, 0.001) if one_point else (10, 0.010)


# -- subscriber process ---------------------------------------------------------------------------


def subscriber_main(
    kind: str,
    home: str,
    target: str,
    streams: int,
    ready: mp.Queue,
    stop: mp.Event,
    results: mp.Queue,
) -> None:
    """One subscriber process: `streams` streams; sends back (source_ms, latency_ms) pairs."""
    if kind == "mqtt":
        results.put(_subscribe_mqtt(Path(home), target, streams, ready, stop))
        return
    results.put(asyncio.run(_subscribe(kind, Path(home), target, streams, ready, stop)))


def _mqtt_client(home: Path, name: str, client_id: str, socket: str) -> Any:
    """A connected paho client with `name`'s certificate, its network loop running."""
    import paho.mqtt.client as mqtt

    creds = Credentials.from_site(home, name)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, transport="unix")
    client.tls_set(ca_certs=str(creds.ca), certfile=str(creds.cert), keyfile=str(creds.key))
    client.tls_insecure_set(True)  # a socket path is no host name; the chain is still verified
    client.max_inflight_messages_set(MAX_IN_FLIGHT)
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        connected.set()

    client.on_connect = on_connect
    client.connect(socket)
    client.loop_start()
    if not connected.wait(15) or refused:
        client.loop_stop()
        raise RuntimeError(f"MQTT connect as {name}: {refused or 'no CONNACK'}")
    return client


def _subscribe_mqtt(
    home: Path, socket: str, streams: int, ready: mp.Queue, stop: mp.Event
) -> list[tuple[float, float]]:
    samples: list[tuple[float, float]] = []
    lock = threading.Lock()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        now = time.time()
        got = []
        for s in pb.WritePointsRequest.FromString(msg.payload).samples:
            src = s.source_time.seconds + s.source_time.nanos / 1e9
            got.append((src, (now - src) * 1000))
        with lock:
            samples.extend(got)

    clients = []
    for i in range(streams):
        client = _mqtt_client(home, "gui", f"sub-{os.getpid()}-{i}", socket)
        subscribed = threading.Event()
        client.on_message = on_message
        client.on_subscribe = lambda *_, ev=subscribed: ev.set()
        client.subscribe(TOPIC, qos=1)
        if not subscribed.wait(15):
            raise TimeoutError("no SUBACK from the broker")
        clients.append(client)
    ready.put(streams)
    while not stop.is_set():
        time.sleep(0.05)
    for client in clients:
        client.disconnect()
        client.loop_stop()
    return samples


async def _subscribe(
    kind: str, home: Path, target: str, streams: int, ready: mp.Queue, stop: mp.Event
) -> list[tuple[float, float]]:
    creds = Credentials.from_site(home, "gui")
    samples: list[tuple[float, float]] = []
    channels = [harness.aio_channel(creds, target, own_connection=True) for _ in range(streams)]
    calls = []
    for ch in channels:
        if kind == "core":
            call = pb_stub(ch)(pb.WatchPointsRequest(patterns=["meter/w*"]))
        else:
            call = ch.unary_stream(harness.SUBSCRIBE)(b"")
        await call.read()  # the snapshot (core) or the "subscribed" marker (bare)
        calls.append(call)
    ready.put(streams)

    async def read(call: object) -> None:
        while True:
            msg = await call.read()  # type: ignore[attr-defined]
            now = time.time()
            if kind == "core":
                for p in msg.points:
                    src = p.source_time.seconds + p.source_time.nanos / 1e9
                    samples.append((src, (now - src) * 1000))
            else:
                for s in pb.WritePointsRequest.FromString(msg).samples:
                    src = s.source_time.seconds + s.source_time.nanos / 1e9
                    samples.append((src, (now - src) * 1000))

    tasks = [asyncio.create_task(read(c)) for c in calls]
    while not stop.is_set():
        await asyncio.sleep(0.05)
    for t in tasks:
        t.cancel()
    for c in calls:
        c.cancel()  # type: ignore[attr-defined]
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()
    return samples


def pb_stub(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamMultiCallable:
    from smx.v1 import point_service_pb2_grpc

    return point_service_pb2_grpc.PointServiceStub(channel).WatchPoints


# -- native subscribers ----------------------------------------------------------------------------


def build_native() -> Path:
    """The directory of the built `watcher` and `writer`."""
    subprocess.run([str(NATIVE / "build")], check=True)
    return NATIVE / "out"


def _native_write_for(
    binary: Path, kind: str, site: Site, target: str, seconds: float, streamed: bool = False
) -> tuple[int, int, float]:
    """`_write_for` by the C++ writer: the same schedule, payload and writes kept open."""
    creds = site.creds("meter")
    done = subprocess.run(
        [str(binary), "--kind", kind, "--target", target, "--ca", str(creds.ca)]
        + ["--cert", str(creds.cert), "--key", str(creds.key), "--seconds", str(seconds)]
        + ["--period-us", str(round(WRITE_PERIOD * 1e6)), "--points", str(POINTS_PER_WRITE)]
        + ["--max-in-flight", str(MAX_IN_FLIGHT)]
        + (["--streamed", "1"] if streamed and kind == "core" else []),
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        start_new_session=True,
    )
    words = done.stdout.split()
    if done.returncode or len(words) != 4 or words[0] != "done":
        raise RuntimeError(f"native writer: {done.stderr.strip() or done.stdout.strip()}")
    time.sleep(0.2)  # let the last changes reach the subscribers, as the Python writer does
    return int(words[1]), int(words[2]), float(words[3])


class NativeWatchers:
    """One `watcher` process per stream (each its own client), live once all printed `ready`."""

    def __init__(self, binary: Path, kind: str, site: Site, target: str, subs: int) -> None:
        creds = site.creds("gui")
        self.outs = [site.home / f"native-{kind}-{subs}-{i}.bin" for i in range(subs)]
        self.procs = []
        for out in self.outs:
            with open(out.with_suffix(".log"), "wb") as log:  # a pipe could fill up and block it
                self.procs.append(
                    subprocess.Popen(
                        [str(binary), "--kind", kind, "--target", target, "--ca", str(creds.ca)]
                        + ["--cert", str(creds.cert), "--key", str(creds.key), "--out", str(out)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log,
                        start_new_session=True,  # each client its own, as a site's processes
                    )
                )
        self.ps = [harness.psutil.Process(p.pid) for p in self.procs]
        deadline = time.monotonic() + 30
        for p, out in zip(self.procs, self.outs, strict=True):
            assert p.stdout is not None
            ok = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]
            if not (ok and p.stdout.readline().startswith(b"ready")):
                for q in self.procs:
                    q.kill()
                    q.wait(5)
                raise RuntimeError(f"native {kind} watcher not ready: {self._error(out)}")

    def cpu_seconds(self) -> float:
        return sum(t.user + t.system for t in (ps.cpu_times() for ps in self.ps))

    @staticmethod
    def _error(out: Path) -> str:
        lines = out.with_suffix(".log").read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no answer"

    def stop(self) -> list[tuple[float, float]]:
        """Close their stdin (they stop and write their samples) and read the samples."""
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.close()
        samples: list[tuple[float, float]] = []
        for p, out in zip(self.procs, self.outs, strict=True):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            if p.returncode:
                raise RuntimeError(f"native watcher exit {p.returncode}: {self._error(out)}")
            values = array("d", out.read_bytes())
            samples += zip(values[0::2], values[1::2], strict=True)
        return samples


# -- writer and coordination -----------------------------------------------------------------------


@dataclass
class Result:
    server: str
    subscribers: int
    p50: float
    p99: float
    max: float
    delivered: float  # points received / points written x subscribers, in the window
    writes: int
    late_writes: int  # writes started more than one period behind schedule
    cpu_per_write_us: float  # the server's CPU during the case / writes
    writer_cpu_per_write_us: float  # the writer's CPU during the case / writes
    sub_cpu_per_msg_us: float = float("nan")  # native subscribers' CPU / points received


def _request(count: int) -> pb.WritePointsRequest:
    ns = time.time_ns()
    seconds, nanos = divmod(ns, 1_000_000_000)
    return pb.WritePointsRequest(
        samples=[
            ppb.PointSample(
                name=f"meter/w{i}",
                value=ppb.Value(double_value=count),
                source_time={"seconds": seconds, "nanos": nanos},
            )
            for i in range(POINTS_PER_WRITE)
        ]
    )


class _Schedule:
    """One write every WRITE_PERIOD for `seconds`: `ticks()` yields the wait before each
    write; `writes`, `late` (started more than a period behind) and `first` (wall time)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.writes, self.late = seconds, 0, 0
        self.first = time.time()
        self._start = self._next = time.monotonic()

    def ticks(self) -> Iterator[float]:
        while self._next - self._start < self.seconds:
            delay = self._next - time.monotonic()
            if delay < -WRITE_PERIOD:
                self.late += 1
            self.writes += 1
            yield max(0.0, delay)
            self._next += WRITE_PERIOD


async def _write_for(
    kind: str, site: Site, target: str, seconds: float, streamed: bool = False
) -> tuple[int, int, float]:
    """Write on schedule for `seconds`; returns (writes, late writes, time of the first).
    Writes overlap (at most MAX_IN_FLIGHT) when the schedule is faster than a round trip."""
    if kind == "mqtt":
        return await asyncio.to_thread(_publish_for, site, target, seconds)
    if kind == "core" and streamed:
        return await _stream_write_for(site, target, seconds)
    ch = harness.aio_channel(site.creds("meter"), target)
    method = "/smx.v1.PointService/WritePoints" if kind == "core" else harness.PUBLISH
    call = ch.unary_unary(method, request_serializer=pb.WritePointsRequest.SerializeToString)
    await call(_request(0))  # connect before the clock starts
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    pending: set[asyncio.Task[Any]] = set()

    async def one(n: int) -> None:
        try:
            await call(_request(n))
        finally:
            slots.release()

    plan = _Schedule(seconds)
    for delay in plan.ticks():
        if delay:
            await asyncio.sleep(delay)
        await slots.acquire()
        task = asyncio.create_task(one(plan.writes))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    await asyncio.sleep(0.2)  # let the last changes reach the subscribers
    await ch.close()
    return plan.writes, plan.late, plan.first


async def _stream_write_for(site: Site, target: str, seconds: float) -> tuple[int, int, float]:
    """`_write_for` on one StreamWritePoints stream: each write a request, answered in order;
    at most MAX_IN_FLIGHT unanswered."""
    ch = harness.aio_channel(site.creds("meter"), target)
    call = ch.stream_stream(
        "/smx.v1.PointService/StreamWritePoints",
        request_serializer=pb.WritePointsRequest.SerializeToString,
        response_deserializer=pb.WritePointsResponse.FromString,
    )()
    await call.write(_request(0))  # connect, and see the write accepted, before the clock starts
    await call.read()
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def answers() -> None:
        try:
            while await call.read() is not grpc.aio.EOF:
                slots.release()
        finally:
            for _ in range(MAX_IN_FLIGHT):  # a stream that ended leaves no writer waiting
                slots.release()

    reader = asyncio.create_task(answers())
    plan = _Schedule(seconds)
    for delay in plan.ticks():
        if delay:
            await asyncio.sleep(delay)
        await slots.acquire()
        if reader.done():  # ended before the schedule did: raise the status it ended with
            reader.result()
            raise RuntimeError("the core ended the write stream")
        await call.write(_request(plan.writes))
    await call.done_writing()
    await asyncio.wait_for(reader, 30)  # raises the status the core ended the stream with
    await asyncio.sleep(0.2)  # let the last changes reach the subscribers
    await ch.close()
    return plan.writes, plan.late, plan.first


def _publish_for(site: Site, socket: str, seconds: float) -> tuple[int, int, float]:
    """The MQTT writer: QoS 1 publishes on schedule, at most MAX_IN_FLIGHT unacknowledged."""
    client = _mqtt_client(site.home, "meter", "writer", socket)
    acked = threading.Semaphore(MAX_IN_FLIGHT)
    client.on_publish = lambda *_: acked.release()
    plan = _Schedule(seconds)
    for delay in plan.ticks():
        time.sleep(delay)
        if not acked.acquire(timeout=10):
            raise RuntimeError("the broker stopped acknowledging")
        client.publish(TOPIC, _request(plan.writes).SerializeToString(), qos=1)
    for _ in range(MAX_IN_FLIGHT):  # every publish acknowledged
        acked.acquire(timeout=5)
    time.sleep(0.2)
    client.disconnect()
    client.loop_stop()
    return plan.writes, plan.late, plan.first


class Mosquitto:
    """Mosquitto on a Unix socket of the site, with the core's server certificate and client
    certificates required (TLS 1.3), persistence off: the broker a user might pick instead."""

    def __init__(self, site: Site, nice: int) -> None:
        from trusted.pki import SiteCA

        ca = SiteCA.load(site.home / "pki")
        self.socket = site.home / "mqtt.sock"
        conf = site.home / "mosquitto.conf"
        conf.write_text(
            f"listener 0 {self.socket}\n"
            f"cafile {site.home / 'pki' / 'ca.crt'}\n"
            f"certfile {ca.server_cert_path}\nkeyfile {ca.server_key_path}\n"
            "require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.3\n"
            "persistence false\nmax_queued_messages 100000\n"
            # As root it would switch to its own user, who may not enter the site home.
            + (f"user {pwd.getpwuid(os.geteuid()).pw_name}\n" if os.geteuid() == 0 else "")
        )
        self.log = open(site.home / "mosquitto.log", "ab")  # noqa: SIM115
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen(
            [*harness.priority(nice), binary, "-c", str(conf)],
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )
        harness.group_priority(self.proc.pid, nice)
        self.ps = harness.psutil.Process(self.proc.pid)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start: {(site.home / 'mosquitto.log')}")
            time.sleep(0.05)
        self.target = str(self.socket)

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def mosquitto_available() -> bool:
    try:
        import paho.mqtt  # noqa: F401
    except ImportError:
        return False
    return bool(shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists())


def run_case(
    kind: str,
    site: Site,
    target: str,
    subs: int,
    procs: int,
    seconds: float,
    cpu: Any,
    native: Path | None = None,
    native_writer: bool = True,
    streamed: bool = False,
) -> Result:
    if native is not None:
        return _run_native_case(
            native, kind, site, target, subs, seconds, cpu, native_writer, streamed
        )
    ctx = mp.get_context("spawn")  # never fork a process that has grpc state
    ready, results, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = min(procs, subs)
    split = [subs // procs + (1 if i < subs % procs else 0) for i in range(procs)] if procs else []
    children = [
        ctx.Process(
            target=subscriber_main,
            args=(kind, str(site.home), target, n, ready, stop, results),
            daemon=True,
        )
        for n in split
    ]
    for c in children:
        c.start()
    got = 0
    while got < subs:
        got += ready.get(timeout=30)
    cpu0 = cpu()
    writer0 = _writer_cpu()
    writes, late, first = asyncio.run(_write_for(kind, site, target, seconds, streamed))
    cpu_used, writer_used = cpu() - cpu0, _writer_cpu() - writer0
    stop.set()
    samples: list[tuple[float, float]] = []
    for _ in children:
        try:
            samples += results.get(timeout=30)
        except queue.Empty:
            break
    for c in children:
        c.join(10)
    return _result(kind, subs, samples, writes, late, first, cpu_used, writer_used)


def _writer_cpu() -> float:
    """CPU seconds of this process and its reaped children: the writer's, whichever it is (the
    subscribers are reaped only after the writing)."""
    me, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _run_native_case(
    out: Path,
    kind: str,
    site: Site,
    target: str,
    subs: int,
    seconds: float,
    cpu: Any,
    native_writer: bool,
    streamed: bool = False,
) -> Result:
    watchers = NativeWatchers(out / "watcher", kind, site, target, subs)
    try:
        cpu0, sub_cpu0 = cpu(), watchers.cpu_seconds()
        writer0 = _writer_cpu()
        if native_writer:
            writes, late, first = _native_write_for(
                out / "writer", kind, site, target, seconds, streamed
            )
        else:
            writes, late, first = asyncio.run(_write_for(kind, site, target, seconds, streamed))
        writer_used = _writer_cpu() - writer0
        cpu_used, sub_cpu = cpu() - cpu0, watchers.cpu_seconds() - sub_cpu0
    finally:
        samples = watchers.stop()
    result = _result(kind, subs, samples, writes, late, first, cpu_used, writer_used)
    if samples:
        result.sub_cpu_per_msg_us = sub_cpu / len(samples) * 1e6
    return result


def _result(
    kind: str,
    subs: int,
    samples: list[tuple[float, float]],
    writes: int,
    late: int,
    first: float,
    cpu_used: float,
    writer_used: float,
) -> Result:
    cutoff = first + WARMUP
    lat = [ms for src, ms in samples if src >= cutoff]
    expected = sum(1 for i in range(writes) if i * WRITE_PERIOD >= WARMUP) * POINTS_PER_WRITE
    return Result(
        kind,
        subs,
        percentile(lat, 50),
        percentile(lat, 99),
        max(lat, default=float("nan")),
        len(lat) / (expected * subs) if expected and subs else float("nan"),
        writes,
        late,
        cpu_used / writes * 1e6 if writes else float("nan"),
        writer_used / writes * 1e6 if writes else float("nan"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write -> WatchPoints latency vs a bare relay")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--seconds", type=float, default=6.0, help="writing time per case")
    parser.add_argument(
        "--procs", type=int, default=4, help="subscriber processes for the 20-subscriber case"
    )
    parser.add_argument(
        "--one-point", action="store_true", help="1,000 one-point writes/s (default 100 x 10)"
    )
    parser.add_argument("--no-mqtt", action="store_true", help="leave Mosquitto out")
    parser.add_argument(
        "--subscribers",
        default="0,1,20",
        help="the cases' subscriber counts, comma-separated (the targets need 0, 1 and 20)",
    )
    parser.add_argument(
        "--native", action="store_true", help="C++ subscribers (bench/native), one process each"
    )
    parser.add_argument(
        "--python-writer",
        action="store_true",
        help="with --native: keep the Python writer (the C++ writer is the default there)",
    )
    parser.add_argument(
        "--streamed-writer",
        action="store_true",
        help="write to the core on one StreamWritePoints stream (Python and C++ writer alike) "
        "instead of unary WritePoints; the bare relay and Mosquitto as before",
    )
    parser.add_argument(
        "--server-nice",
        type=int,
        default=SupervisorSettings().core_nice if os.geteuid() == 0 else 0,
        help="CPU priority of every server (as `smx run` starts the core: supervisor.core_nice; "
        "default that as root, else 0)",
    )
    parser.add_argument(
        "--uvloop-baseline",
        action="store_true",
        help="also the bare relay on uvloop, the core's event loop (a like-for-like ratio)",
    )
    args = parser.parse_args(argv)
    _configure(args.one_point)
    counts = [int(n) for n in args.subscribers.split(",")]
    native_writer = not args.python_writer
    native = build_native() if args.native else None
    seconds = 1.5 if args.quick else args.seconds
    with_mqtt = not args.no_mqtt and mosquitto_available()
    site = Site()
    core = bare = bare_uv = mosq = None
    results: list[Result] = []
    try:
        # Every server at the priority `smx run` gives the core, for a like-for-like comparison;
        # each server and client in a session of its own, as the processes of a site are.
        nice = args.server_nice
        core = BenchCore(site, nice=nice)
        bare = BareServer(site, nice=nice)
        # (label, protocol, target, CPU seconds of the server)
        servers: list[tuple[str, str, str, Any]] = [
            ("bare", "bare", bare.target, lambda: sum(bare.ps.cpu_times()[:2])),
            ("core", "core", site.target, core.cpu_seconds),
        ]
        if args.uvloop_baseline:
            bare_uv = BareServer(site, "bare-uvloop.sock", uvloop=True, nice=nice)
            servers.insert(
                1, ("bare-uvloop", "bare", bare_uv.target, lambda: sum(bare_uv.ps.cpu_times()[:2]))
            )
        if with_mqtt:
            mosq = Mosquitto(site, nice)
            servers.append(("mqtt", "mqtt", mosq.target, mosq.cpu_seconds))
        rss_idle = core.rss_mb()
        cpu0 = core.cpu_seconds()
        for subs in counts:
            for label, kind, target, cpu in servers:  # interleaved: the same machine state
                r = run_case(
                    kind,
                    site,
                    target,
                    subs,
                    args.procs,
                    seconds,
                    cpu,
                    native,
                    native_writer,
                    args.streamed_writer,
                )
                results.append(dataclasses.replace(r, server=label))
        rss_after = core.rss_mb()
        core_cpu = core.cpu_seconds() - cpu0
    finally:
        for server in (mosq, bare_uv, bare, core):
            if server is not None:
                server.stop()
        site.cleanup()

    shape = (
        "1,000 one-point writes/s" if args.one_point else "1,000 points/s (10 points every 10 ms)"
    )
    print(f"watch latency and cost per message: write -> subscriber, {shape}")
    subscribers = (
        "native (C++ bench/native/watcher), one process per subscriber; writer: "
        + ("Python" if args.python_writer else "native (C++ bench/native/writer)")
        if native
        else f"Python (grpc.aio / paho) in {args.procs} process(es) for 20, 1 for 1"
    )
    if args.streamed_writer:
        print(
            "  core written on one StreamWritePoints stream (--streamed-writer), the bare relay "
            "and Mosquitto by unary calls/publishes as always: 'vs bare' compares a streamed "
            "write with a unary one"
        )
    print(
        f"  {seconds:g} s per case, first {WARMUP:g} s discarded; servers at nice "
        f"{args.server_nice}; subscribers: {subscribers}; "
        "baseline = bare grpc.aio relay"
        + (
            "; mqtt = Mosquitto, QoS 1"
            if with_mqtt
            else "; Mosquitto left out (--no-mqtt)"
            if args.no_mqtt
            else "; Mosquitto left out (not installed)"
        )
    )
    rows = []
    by = {(r.server, r.subscribers): r for r in results}
    for r in results:
        base = by[("bare", r.subscribers)]
        ratio = f"{r.p99 / base.p99:.1f}x" if r.server != "bare" and r.subscribers else ""
        cpu_ratio = (
            f"{r.cpu_per_write_us / base.cpu_per_write_us:.2f}x" if r.server != "bare" else ""
        )
        rows.append(
            [
                r.server,
                r.subscribers,
                r.p50 if r.subscribers else "",
                r.p99 if r.subscribers else "",
                r.max if r.subscribers else "",
                ratio,
                f"{r.delivered:.1%}" if r.subscribers else "",
                f"{r.writes} ({r.late_writes} late)",
                f"{r.cpu_per_write_us:.0f}",
                cpu_ratio,
                f"{r.writer_cpu_per_write_us:.0f}",
            ]
        )
    print(
        fmt_table(
            [
                "server",
                "subs",
                "p50 ms",
                "p99 ms",
                "max ms",
                "p99 vs bare",
                "delivered",
                "writes",
                "CPU us/write",
                "CPU vs bare",
                "writer CPU us/write",
            ],
            rows,
        )
    )
    overloaded = [f"{r.server} x{r.subscribers}" for r in results if r.late_writes > r.writes / 10]
    if overloaded:
        print(
            "overloaded (over 10% of the writes late: the writer, or the machine, could not keep "
            f"the schedule, and 'delivered' counts more than planned): {', '.join(overloaded)}"
        )
    if native:
        print(
            "native subscriber CPU per received point (fewer, larger messages cost less per "
            "point: the core batches what changed while a stream was busy or paced): "
            + ", ".join(
                f"{r.server} x{r.subscribers} {r.sub_cpu_per_msg_us:.1f} us"
                for r in results
                if r.subscribers
            )
        )
    print(f"core RSS: {rss_idle:.1f} MB idle, {rss_after:.1f} MB after; core CPU {core_cpu:.1f} s")
    if args.quick:
        print(
            "(--quick: a smoke run, too short to compare with the targets; CPU per write moves in"
            " steps of the clock tick, 10 ms over the run's writes, so small figures read 0)"
        )
        return 0
    targets = TARGETS_P99_MS_ONE_POINT if args.one_point else TARGETS_P99_MS
    for subs, limit in targets.items():
        if ("core", subs) not in by:
            continue
        print(
            target_line(
                f"p99 with {subs} subscriber(s)", by[("core", subs)].p99, limit, "ms", False
            )
        )
    if ("core", 0) not in by:
        return 0
    cost = by[("core", 0)].cpu_per_write_us / by[("bare", 0)].cpu_per_write_us
    print(target_line("core CPU per write vs bare", cost, 1.3, "x", False))
    if ("bare-uvloop", 0) in by:
        like = by[("core", 0)].cpu_per_write_us / by[("bare-uvloop", 0)].cpu_per_write_us
        print(f"core CPU per write vs the bare relay on uvloop (the core's loop): {like:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
