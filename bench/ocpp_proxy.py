"""The OCPP proxy in its own process between WebSocket chargers and a SCADA (both in this
process, raw `websockets` peers that answer at once): the round-trip latency of a CALL through
the proxy against a direct connection measured in the same run, frames per second through one
proxy process (against the same direct baseline), and the proxy's RSS per connected charge
point (each with its own SCADA connection).

    .venv/bin/python bench/ocpp_proxy.py          # 2000 round trips, 20000 frames, 100 CPs

Targets (issue 14): <= 1 ms p50 added latency; 100 charge points <= 50 MB extra RSS.
Prints the figures; exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from extensions.ocpp_proxy.config import ChargePointConfig, OcppConfig  # noqa: E402
from extensions.ocpp_proxy.server import ProxyServer  # noqa: E402
from extensions.sdk.testing import free_port  # noqa: E402

OCPP16 = [Subprotocol("ocpp1.6")]
METER = (
    '[2,"{id}","MeterValues",{{"connectorId":1,"transactionId":7,"meterValue":[{{"timestamp":'
    '"2024-05-01T10:00:00Z","sampledValue":[{{"measurand":"Power.Active.Import","unit":"W",'
    '"value":"7360.0"}},{{"measurand":"Energy.Active.Import.Register","unit":"Wh",'
    '"value":"1234567.0"}}]}}]}}]'
)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def serve_proxy(port: int, scada: str, count: int) -> None:
    """The proxy process: `count` charge points CP0.. towards `scada`."""
    cps = [
        ChargePointConfig(id=f"CP{i}", connectors=[f"ev{i}"], upstream=scada) for i in range(count)
    ]
    cfg = OcppConfig(port=port, charge_points=cps)
    with tempfile.TemporaryDirectory() as queue:
        await ProxyServer(cfg, Path(queue)).start()
        print("ready", flush=True)
        await asyncio.Event().wait()


async def scada_answering(ws: ServerConnection) -> None:
    async for raw in ws:
        msg = json.loads(raw)
        if msg[0] == 2:
            now = '{"currentTime":"2024-05-01T10:00:00Z"}' if msg[2] == "Heartbeat" else "{}"
            await ws.send(f'[3,"{msg[1]}",{now}]')


async def round_trips(url: str, rounds: int) -> list[float]:
    async with connect(url, subprotocols=OCPP16, compression=None) as ws:
        times = []
        for i in range(rounds + 50):
            t0 = time.perf_counter()
            await ws.send(f'[2,"hb{i}","Heartbeat",{{}}]')
            await ws.recv()
            if i >= 50:  # warm-up
                times.append(time.perf_counter() - t0)
        return times


async def throughput(url: str, frames: int) -> float:
    """Frames/s charger -> SCADA (answers flowing back), pipelined 64 deep."""
    async with connect(url, subprotocols=OCPP16, compression=None) as ws:
        window = asyncio.Semaphore(64)

        async def reader() -> None:
            for _ in range(frames):
                await ws.recv()
                window.release()

        t0 = time.perf_counter()
        r = asyncio.ensure_future(reader())
        for i in range(frames):
            await window.acquire()
            await ws.send(METER.format(id=f"m{i}"))
        await r
        return frames / (time.perf_counter() - t0)


async def main_async(args: argparse.Namespace) -> None:
    scada_port, proxy_port = free_port(), free_port()
    scada = await serve(scada_answering, "127.0.0.1", scada_port, subprotocols=OCPP16,
                        compression=None)  # fmt: skip
    scada_url = f"ws://127.0.0.1:{scada_port}/ocpp"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-proxy", str(proxy_port), scada_url, str(args.cps)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        await asyncio.to_thread(proc.stdout.readline)
        proxy_ps = psutil.Process(proc.pid)
        rss0 = proxy_ps.memory_info().rss

        direct = await round_trips(f"{scada_url}/CPX", args.rounds)
        proxied = await round_trips(f"ws://127.0.0.1:{proxy_port}/CP0", args.rounds)
        d50, p50 = statistics.median(direct), statistics.median(proxied)
        print(f"round trip of a CALL (Heartbeat), {args.rounds} sequential:")
        print(f"  direct   p50 {d50 * 1e3:.3f} ms  p99 {_pct(direct, 0.99) * 1e3:.3f} ms")
        print(f"  proxied  p50 {p50 * 1e3:.3f} ms  p99 {_pct(proxied, 0.99) * 1e3:.3f} ms")
        print(f"  added    p50 {(p50 - d50) * 1e3:.3f} ms (target <= 1 ms), ratio {p50 / d50:.2f}")

        fd = await throughput(f"{scada_url}/CPX", args.frames)
        fp = await throughput(f"ws://127.0.0.1:{proxy_port}/CP0", args.frames)
        print(f"MeterValues charger -> SCADA with answers back, {args.frames} frames:")
        print(f"  direct {fd:,.0f} frames/s, through the proxy {fp:,.0f} frames/s "
              f"(ratio {fp / fd:.2f})")  # fmt: skip

        cpu0 = proxy_ps.cpu_times()
        conns = []
        for i in range(1, args.cps):
            conns.append(
                await connect(
                    f"ws://127.0.0.1:{proxy_port}/CP{i}",
                    subprotocols=OCPP16,
                    compression=None,
                )  # fmt: skip
            )
        await asyncio.sleep(1.0)
        for ws in conns:  # one frame each, so every session is fully up
            await ws.send('[2,"hb","Heartbeat",{}]')
        for ws in conns:
            await ws.recv()
        rss = proxy_ps.memory_info().rss
        cpu1 = proxy_ps.cpu_times()
        extra = (rss - rss0) / 2**20
        print(f"proxy process RSS: {rss0 / 2**20:.1f} MB idle, {rss / 2**20:.1f} MB with "
              f"{args.cps} charge points connected (+{extra:.1f} MB, "
              f"{extra * 1024 / args.cps:.0f} KB each; target 100 CPs <= 50 MB)")  # fmt: skip
        print(f"  CPU to connect them: {(cpu1.user + cpu1.system - cpu0.user - cpu0.system):.2f} s")
        for ws in conns:
            await ws.close()
    finally:
        proc.terminate()
        proc.wait(10)
        scada.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--cps", type=int, default=100)
    parser.add_argument("--serve-proxy", nargs=3, metavar=("PORT", "SCADA", "COUNT"))
    args = parser.parse_args()
    if args.serve_proxy:
        port, scada, count = args.serve_proxy
        asyncio.run(serve_proxy(int(port), scada, int(count)))
        return 0
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
