"""A minimal HTTP/1.0 GET over asyncio streams: what the Solar API needs and nothing more.

Why not a library: the project has no HTTP client, and the Solar API is a handful of small GET
requests on a local network. asyncio streams give a request that is cancelled cleanly by the
SDK's poll timeout (urllib in a thread would keep its socket until its own timeout), and the
exact bytes on the wire are ours to test. HTTP/1.0 with `Connection: close`: the device sends
the body and closes, never chunked encoding.
"""

from __future__ import annotations

import asyncio

__all__ = ["MAX_BODY", "HttpError", "http_get", "request_bytes"]

MAX_BODY = 1 << 20  # real responses are 0.3-30 KB; a device that sends more is broken
MAX_DIGITS = 12  # of a Content-Length; a status code has 3


class HttpError(Exception):
    """No answer, a broken answer, or an HTTP status other than 200 (`status`, else None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def request_bytes(host: str, target: str) -> bytes:
    return (
        f"GET {target} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")


async def http_get(host: str, port: int, target: str, timeout: float) -> bytes:
    """The body of `GET target` (path and query), status 200 only; HttpError otherwise."""
    where = f"http://{host}:{port}{target}"
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request_bytes(host, target))
            await writer.drain()
            raw = b""
            while chunk := await reader.read(65536):
                raw += chunk
                if len(raw) > MAX_BODY + 16384:
                    raise HttpError(f"{where}: answer larger than {MAX_BODY} bytes")
    except TimeoutError:
        raise HttpError(f"{where}: no complete answer within {timeout:g} s") from None
    except OSError as err:
        raise HttpError(f"{where}: {err.strerror or err}") from err
    finally:
        if writer is not None:
            writer.close()
    return _body(raw, where)


def _digits(text: str, most: int) -> int | None:
    """`text` as a number if it is 1..`most` ASCII digits (str.isdigit alone takes "²" and
    other Unicode digits that int() refuses, and int() refuses over 4300 digits); else None."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= most else None


def _body(raw: bytes, where: str) -> bytes:
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = _digits(parts[1], 3) if len(parts) >= 2 else None
    if not sep or status is None or not parts[0].startswith("HTTP/"):
        raise HttpError(f"{where}: not an HTTP answer ({lines[0][:60]!r})")
    if status != 200:
        raise HttpError(f"{where}: HTTP {status} {parts[2] if len(parts) > 2 else ''}", status)
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() != "content-length":
            continue
        length = _digits(value.strip(), MAX_DIGITS)
        if length is None:
            raise HttpError(f"{where}: Content-Length {value.strip()[:20]!r} is not a length")
        if len(body) < length:
            raise HttpError(f"{where}: answer cut short ({len(body)} of {length} bytes)")
        body = body[:length]
    return body
