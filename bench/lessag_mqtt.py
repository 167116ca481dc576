"""lessag through a real Mosquitto with TLS and client certificates, against bare paho in the
same run:

1. latency: a meter value written to the core (200 points in one batch per second, source
   time = now) -> lessag (on change, SenML) -> Mosquitto -> a subscriber; p50/p99 per point
   (target p99 <= 50 ms), against a bare paho publish -> subscribe of the same payload size
   through the same broker. lessag runs as its own process: its CPU and RSS at 200 points/s,
   against a bare Python process that imports the same libraries (the floor).
2. backlog drain: 100k messages queued on disk, then the broker comes up: messages/s and RSS
   while draining, against bare paho publishing 100k QoS 1 messages as fast as acknowledged.

Run: `python bench/lessag_mqtt.py [--seconds 20] [--backlog 100000]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import harness
import paho.mqtt.client as paho
import psutil
from harness import fmt_table, percentile
from paho.mqtt.enums import CallbackAPIVersion

from extensions.sdk.testing import TestSite
from smx.sdk import PointSpec, parse_settings
from smx.timestamps import seconds_to_ts
from smx.v1 import point_pb2
from smx.values import to_value
from tests.untrusted.lessag.broker import Mosquitto, Pki, Subscriber
from untrusted.lessag.mqtt_link import MqttLink
from untrusted.lessag.outbox import Outbox
from untrusted.lessag.settings import MqttConfig, QueueConfig

POINTS = 200


def tls_client(pki: Pki, name: str) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, name, protocol=paho.MQTTv5)
    crt, key = pki.issue(name)
    c.tls_set(ca_certs=str(pki.ca), certfile=str(crt), keyfile=str(key))
    c.max_inflight_messages_set(1000)
    return c


def latencies_of(sub: Subscriber, topic: str, since: float) -> list[float]:
    out = []
    with sub.lock:
        msgs = [m for m in sub.messages if m.topic == topic]
    for m in msgs:
        got_at = getattr(m, "at", None)
        if got_at is None:
            continue
        for rec in json.loads(m.payload):
            if rec["t"] >= since:
                out.append((got_at - rec["t"]) * 1000)
    return out


class TimedSubscriber(Subscriber):
    def _message(self, c, u, msg):  # type: ignore[no-untyped-def, override]
        at = time.time()
        super()._message(c, u, msg)
        with self.lock:
            self.messages[-1].at = at  # type: ignore[attr-defined]


async def latency_case(site: TestSite, broker: Mosquitto, pki: Pki, seconds: float) -> dict:
    crt, key = pki.issue("lessag")
    names = [f"smm/p{i:03d}" for i in range(POINTS)]
    cfg = {
        "mqtt": {"port": broker.port, "prefix": "b/lessag", "ca": str(pki.ca), "cert": str(crt),
                 "key": str(key)},
        "publish_every": "1h",
        "on_change": True,
        "min_gap": 0,
        "deadband": {n.split("/")[1]: 0.0 for n in names},
        "devices": [{"id": "smm", "points": ["p*"]}],
        "ess": {"enabled": False},
    }  # fmt: skip
    sub = TimedSubscriber(broker, ["b/lessag/smm/data", "bare/data"], client_id="bench-sub")
    log = open(site.home / "lessag.log", "ab")  # noqa: SIM115
    agent = subprocess.Popen(
        [sys.executable, "-m", "untrusted.lessag"],
        env=site.environ("lessag", cfg),
        cwd=harness.ROOT,
        stdout=log,
        stderr=log,
    )
    ps = psutil.Process(agent.pid)
    async with site.client("smm") as meter:
        meter.declare(PointSpec(n, unit="W") for n in names)
        await asyncio.sleep(3)  # the agent connects to the core and the broker
        start = time.time()
        cpu0 = sum(ps.cpu_times()[:2])
        for k in range(int(seconds)):
            now = time.time()
            for i, n in enumerate(names):
                meter.publish_sample(
                    point_pb2.PointSample(
                        name=n, value=to_value(float(k * 1000 + i)), source_time=seconds_to_ts(now)
                    )
                )
            await meter.flush(1.0)
            await asyncio.sleep(max(0.0, start + k + 1 - time.time()))
        cpu = sum(ps.cpu_times()[:2]) - cpu0
        wall = time.time() - start
        rss = ps.memory_info().rss / 2**20
    await asyncio.sleep(1)
    lessag = latencies_of(sub, "b/lessag/smm/data", start)
    agent.terminate()
    agent.wait(10)
    log.close()

    # Baseline: bare paho, one message of the same size per second, through the same broker.
    pub = tls_client(pki, "bench-bare")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    size = len(sub.on("b/lessag/smm/data")[-1].payload)
    t0 = time.time()
    for k in range(int(seconds)):
        now = time.time()
        recs = [{"n": f"p{i:03d}", "v": float(i), "t": now} for i in range(POINTS)]
        body = json.dumps(recs).encode()
        pub.publish("bare/data", body + b" " * max(0, size - len(body)), qos=1)
        await asyncio.sleep(max(0.0, t0 + k + 1 - time.time()))
    await asyncio.sleep(1)
    bare = latencies_of_padded(sub, "bare/data", t0)
    pub.disconnect()
    pub.loop_stop()
    sub.close()
    floor = subprocess.Popen(
        [sys.executable, "-c", "import paho.mqtt.client, grpc, smx.sdk, sqlite3, time; "
         "time.sleep(3)"], cwd=harness.ROOT)  # fmt: skip
    await asyncio.sleep(2.5)
    floor_rss = psutil.Process(floor.pid).memory_info().rss / 2**20
    floor.wait()
    return {
        "lessag": lessag,
        "bare": bare,
        "cpu_pct": 100 * cpu / wall,
        "rss": rss,
        "floor_rss": floor_rss,
    }


def latencies_of_padded(sub: Subscriber, topic: str, since: float) -> list[float]:
    out = []
    with sub.lock:
        msgs = [m for m in sub.messages if m.topic == topic]
    for m in msgs:
        recs = json.loads(m.payload.rstrip())
        if recs[0]["t"] >= since:
            out += [(m.at - r["t"]) * 1000 for r in recs]  # type: ignore[attr-defined]
    return out


async def drain_case(broker: Mosquitto, pki: Pki, home: Path, backlog: int) -> dict:
    crt, key = pki.issue("drainer")
    mq = parse_settings(
        MqttConfig,
        {"port": broker.port, "ca": str(pki.ca), "cert": str(crt), "key": str(key)},
    )
    q = parse_settings(QueueConfig, {"drain_rate": 100000, "max_size": "1GB"})
    link = MqttLink(mq, "bench-drainer", "b/drain")
    box = Outbox(link, q, home / "drain.db")
    payload = b"x" * 200
    for _ in range(backlog):
        box.submit("b/drain/data", payload)
    box._to_disk()
    me = psutil.Process()
    rss0 = me.memory_info().rss / 2**20
    task = asyncio.create_task(box.run())
    link.start()
    peak = rss0
    start = time.monotonic()
    while box.queued:
        await asyncio.sleep(0.2)
        peak = max(peak, me.memory_info().rss / 2**20)
    lessag_s = time.monotonic() - start
    task.cancel()
    await link.stop()
    box.close()

    # Baseline: bare paho, 100k QoS 1 messages, at most 1000 unacknowledged (as the outbox;
    # more would also wrap paho's 16-bit message ids).
    pub = tls_client(pki, "bench-bare-drain")
    window = threading.Semaphore(1000)
    pub.on_publish = lambda *_: window.release()
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    start = time.monotonic()

    def publish_all() -> None:
        for _ in range(backlog):
            window.acquire()
            pub.publish("bare/drain", payload, qos=1)
        for _ in range(1000):  # every one acknowledged
            window.acquire()

    await asyncio.to_thread(publish_all)
    bare_s = time.monotonic() - start
    pub.disconnect()
    pub.loop_stop()
    return {"lessag_rate": backlog / lessag_s, "bare_rate": backlog / bare_s, "rss0": rss0,
            "peak": peak}  # fmt: skip


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--backlog", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lessag-bench-") as tmp:
        home = Path(tmp)
        pki = Pki(home / "pki")
        clients = {
            "smm": ("trusted", ["trusted-extension"], []),
            "lessag": ("untrusted", ["untrusted-agent"], []),
        }
        with TestSite(clients) as site, Mosquitto(home / "broker", pki=pki) as broker:
            lat = await latency_case(site, broker, pki, args.seconds)
            drain = await drain_case(broker, pki, home, args.backlog)
    print(
        f"lessag bench: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}, "
        f"{POINTS} points at 1 Hz for {args.seconds:g} s, Mosquitto TLS + client certs"
    )
    rows = []
    for what, xs in (
        ("core -> lessag -> broker -> sub", lat["lessag"]),
        ("bare paho", lat["bare"]),
    ):
        rows.append([what, len(xs), percentile(xs, 50), percentile(xs, 99)])
    print(fmt_table(["latency per point", "n", "p50 ms", "p99 ms"], rows))
    p99 = percentile(lat["lessag"], 99)
    print(
        f"p99 {p99:.1f} ms (target <= 50 ms): {'ok' if p99 <= 50 else 'MISSED'}; "
        f"ratio to bare paho p99 x{p99 / max(percentile(lat['bare'], 99), 1e-9):.1f}"
    )
    print(
        f"lessag process at {POINTS} points/s: CPU {lat['cpu_pct']:.1f} % of one core, "
        f"RSS {lat['rss']:.0f} MB (a bare Python importing the same libraries: "
        f"{lat['floor_rss']:.0f} MB)"
    )
    ratio = drain["lessag_rate"] / drain["bare_rate"]
    rows = [
        ["lessag outbox (SQLite -> paho)", drain["lessag_rate"], ratio],
        ["bare paho publish, QoS 1", drain["bare_rate"], 1.0],
    ]
    print(fmt_table(["backlog drain", "messages/s", "ratio"], rows))
    print(
        f"RSS while draining {args.backlog} queued: {drain['rss0']:.0f} MB before, "
        f"{drain['peak']:.0f} MB peak"
    )


if __name__ == "__main__":
    asyncio.run(main())
