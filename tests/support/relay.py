"""A TCP relay under a test's control, between a client and a real server on loopback: it passes
traffic, holds it silently (a blackhole: packets lost, no reset), resets every connection (and
every new one while `down`), or delays it.

    relay = await Relay.start(target_port)
    ... connect to relay.port ...
    relay.blackhole(); relay.reset(); relay.restore()
    relay.blackhole_after(21)  # 21 more bytes client -> server (one request), then blackhole
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

__all__ = ["Relay"]


class Relay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "pass"  # pass | blackhole | down
        self.delay = 0.0  # seconds added to every chunk, each way
        self.connections = 0  # accepted since start
        self.passed = 0  # bytes passed from clients to the server since start
        self._budget: int | None = None  # bytes client -> server until a blackhole
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def start(cls, target_port: int) -> Relay:
        relay = cls(target_port)
        relay._server = await asyncio.start_server(relay._accept, "127.0.0.1", 0)
        return relay

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def blackhole(self) -> None:
        """Let nothing through from now on, both ways, keeping the connections open (packets
        lost on the path, no reset)."""
        self.mode = "blackhole"

    def blackhole_after(self, count: int) -> None:
        """Let `count` more bytes through from the client to the server (the server's answers
        as usual), then blackhole at once, both ways: a request that reaches the server whose
        answer never comes back. `count` 0 is `blackhole()`."""
        if count <= 0:
            self.blackhole()
        else:
            self._budget = count

    def reset(self) -> None:
        """Reset every open connection (RST), and every new one until `restore`."""
        self.mode = "down"
        for writer in list(self._open):
            _abort(writer)

    def restore(self) -> None:
        self.mode = "pass"
        self.delay = 0.0
        self._budget = None

    async def close(self) -> None:
        self.mode = "down"
        if self._server is not None:
            self._server.close()
        for writer in list(self._open):
            _abort(writer)
        # Let the connection tasks end by themselves: asyncio logs a cancelled one as an error.
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.connections += 1
        if self.mode == "down":
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            _abort(writer)
            return
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, upstream=True), self._pipe(up_reader, writer)
            )
        finally:
            for w in (writer, up_writer):
                self._open.discard(w)
                _abort(w)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool = False
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(65536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                if upstream and self._budget is not None and self.mode == "pass":
                    head, chunk = chunk[: self._budget], chunk[self._budget :]
                    writer.write(head)
                    self.passed += len(head)
                    self._budget -= len(head)
                    if self._budget == 0:
                        # Before the server can answer: the answer is held with the rest.
                        self._budget = None
                        self.mode = "blackhole"
                    if not chunk:
                        await writer.drain()
                        continue
                while self.mode == "blackhole":
                    # Nothing gets through, nothing is read: TCP retransmits behind it and the
                    # stream resumes intact if the path comes back before anyone gives up.
                    await asyncio.sleep(0.05)
                if self.mode == "down" or writer.is_closing():
                    return
                writer.write(chunk)
                if upstream:
                    self.passed += len(chunk)
                await writer.drain()
        _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a broken network path or a rebooted router does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
