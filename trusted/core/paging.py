"""Page sizes and page tokens for the List RPCs (AIP-158).

A token is opaque to clients: the position after the last item returned, sealed (AES-GCM, a
key made at each start of the core) and bound to the query it came from and to the caller. The
position may be a name the caller may not read (where the scan of a page stopped), so it must
not be readable; a token reused with other filters, or by another client, is refused instead of
silently paging through a different result; a forged one cannot be made. Positions are keys of
the listed items (a name, an audit seq), never offsets, so items added between two pages shift
nothing: paging stays stable. Tokens last until the core restarts (then list from the start).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Hashable
from typing import TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trusted.core.errors import CoreError

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "make_token", "page_size", "read_token"]

T = TypeVar("T", str, int)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_SEAL = AESGCM(AESGCM.generate_key(bit_length=128))
_NONCE = 12
_NOT_OURS = "page_token is not a token this core issued (tokens last until the core restarts)"


def page_size(requested: int) -> int:
    """0 means the default; above the maximum is coerced to it (AIP-158); negative is refused."""
    if requested < 0:
        raise CoreError("INVALID_ARGUMENT", f"page_size must not be negative, got {requested}")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def make_token(query: tuple[Hashable, ...], position: str | int) -> str:
    """`query` names the method, its filters and the caller: the token is valid for exactly
    that."""
    nonce = os.urandom(_NONCE)
    body = json.dumps(position, separators=(",", ":")).encode()
    sealed = nonce + _SEAL.encrypt(nonce, body, _aad(query))
    return base64.urlsafe_b64encode(sealed).decode("ascii").rstrip("=")


def read_token(token: str, query: tuple[Hashable, ...], kind: type[T]) -> T:
    """The position a token from `make_token(query, ...)` holds; INVALID_ARGUMENT when the
    token is not one of ours, or was made for another query or another caller."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as err:
        raise CoreError("INVALID_ARGUMENT", _NOT_OURS) from err
    if len(raw) <= _NONCE:
        raise CoreError("INVALID_ARGUMENT", _NOT_OURS)
    try:
        body = _SEAL.decrypt(raw[:_NONCE], raw[_NONCE:], _aad(query))
    except InvalidTag:
        # Ours or not, it cannot be told apart from one made for other filters: say both.
        raise CoreError(
            "INVALID_ARGUMENT",
            "page_token was issued for a request with other filters or another client, or "
            "not by this core (tokens last until the core restarts)",
        ) from None
    position = json.loads(body)  # ours: sealed, so well-formed
    if type(position) is not kind:
        raise CoreError("INVALID_ARGUMENT", _NOT_OURS)
    return position


def _aad(query: tuple[Hashable, ...]) -> bytes:
    return repr(query).encode()
