"""Page sizes and page tokens for the List RPCs (AIP-158).

A token is opaque to clients: the position after the last item returned, tied to a digest of
the query it came from, so a token reused with other filters is refused instead of silently
paging through a different result. Positions are keys of the listed items (a name, an audit
seq), never offsets, so items added between two pages shift nothing: paging stays stable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Hashable
from typing import TypeVar

from trusted.core.errors import CoreError

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "make_token", "page_size", "read_token"]

T = TypeVar("T", str, int)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """0 means the default; above the maximum is coerced to it (AIP-158); negative is refused."""
    if requested < 0:
        raise CoreError("INVALID_ARGUMENT", f"page_size must not be negative, got {requested}")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def make_token(query: tuple[Hashable, ...], position: str | int) -> str:
    body = json.dumps([_digest(query), position], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(body).decode("ascii").rstrip("=")


def read_token(token: str, query: tuple[Hashable, ...], kind: type[T]) -> T:
    """The position a token from `make_token(query, ...)` holds; INVALID_ARGUMENT when the
    token is not one of ours or was made for another query."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        digest, position = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, RecursionError) as err:
        # RecursionError: json.loads of a deeply nested forged token.
        raise CoreError("INVALID_ARGUMENT", "page_token is not a token this core issued") from err
    if digest != _digest(query):
        raise CoreError(
            "INVALID_ARGUMENT", "page_token was issued for a request with other filters"
        )
    if type(position) is not kind:
        raise CoreError("INVALID_ARGUMENT", "page_token is not a token this core issued")
    return position


def _digest(query: tuple[Hashable, ...]) -> str:
    return hashlib.sha256(repr(query).encode()).hexdigest()[:16]
