"""A small HTTP/1.x server on asyncio streams for the simulator and the tests: each GET goes to
a `respond(path, query) -> (status, body)` function. It records every request line, so tests
can check exactly what the extension sent, and can be told to misbehave (`fault`): "500",
"timeout" (never answer), "truncate" (cut the body in half), "close" (close without a word).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from urllib.parse import parse_qsl, urlsplit

__all__ = ["HttpServer", "Respond"]

Respond = Callable[[str, dict[str, str]], tuple[int, bytes]]
_REASONS = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}


class HttpServer:
    def __init__(self, respond: Respond, host: str = "127.0.0.1", port: int = 0) -> None:
        self.respond, self.host, self.port = respond, host, port
        self.requests: list[bytes] = []  # each request's head, as received
        self.fault = ""
        self.in_flight = self.max_in_flight = 0
        self.delay = 0.0  # seconds before each answer (to see requests overlap)
        self._server: asyncio.Server | None = None

    async def start(self) -> HttpServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            if self.delay:
                await asyncio.sleep(self.delay)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            url = urlsplit(target)
            if self.fault == "timeout":
                await asyncio.sleep(3600)
            if self.fault == "close":
                return
            status, body = (
                (500, b"boom")
                if self.fault == "500"
                else self.respond(url.path, dict(parse_qsl(url.query)))
            )
            if method != "GET":
                status, body = 405, b""
            if self.fault == "truncate":
                body = body[: len(body) // 2]
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: application/json\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self.in_flight -= 1
            writer.close()
