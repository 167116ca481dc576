"""The baseline server: a minimal grpc.aio server with the core's own mTLS credentials on a
Unix socket, and nothing else (no auth context, no parsing, no policy, no storage).

- `/bench.Bare/Echo` (unary): returns the request bytes, so request and response are the size
  of the serialized WritePointsRequest the core would get.
- `/bench.Bare/Publish` (unary): hands the request bytes to every open Subscribe stream.
- `/bench.Bare/Subscribe` (server streaming): the bytes of every Publish, in order.

Run: `python bench/bare_server.py --pki SITE/pki --socket PATH [--uvloop]`; stops on SIGTERM.
`--uvloop` runs it on the event loop the core uses (smx.aio.run_fast), for a like-for-like ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

__all__ = ["serve"]

log = logging.getLogger(__name__)

SERVER_NAME = "smxcore"  # the core's server certificate, as trusted.pki writes it


class _Hub:
    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[bytes]] = set()

    async def echo(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return data

    async def publish(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        for q in self.queues:
            q.put_nowait(data)
        return b""

    async def subscribe(
        self, data: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        q: asyncio.Queue[bytes] = asyncio.Queue()
        self.queues.add(q)
        try:
            yield b""  # "subscribed": the client knows from here on it misses nothing
            while True:
                yield await q.get()
        finally:
            self.queues.discard(q)


async def serve(pki: Path, socket: Path) -> None:
    hub = _Hub()
    server = grpc.aio.server()
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(hub.echo),
        "Publish": grpc.unary_unary_rpc_method_handler(hub.publish),
        "Subscribe": grpc.unary_stream_rpc_method_handler(hub.subscribe),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Bare", handlers)])
    creds = grpc.ssl_server_credentials(
        [
            (
                (pki / "server" / f"{SERVER_NAME}.key").read_bytes(),
                (pki / "server" / f"{SERVER_NAME}.crt").read_bytes(),
            )
        ],
        root_certificates=(pki / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    socket.unlink(missing_ok=True)
    server.add_secure_port(f"unix://{socket}", creds)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    log.info("bare server on unix://%s", socket)
    await stop.wait()
    await server.stop(0.5)
    socket.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pki", type=Path, required=True, help="the site's pki directory")
    parser.add_argument("--socket", type=Path, required=True, help="Unix socket to serve on")
    parser.add_argument("--uvloop", action="store_true", help="serve on uvloop's event loop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.uvloop:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(args.pki, args.socket))
    else:
        asyncio.run(serve(args.pki, args.socket))


if __name__ == "__main__":
    main()
