"""Password hashes for the GUI's login: scrypt (hashlib), as one string in site.toml:
`scrypt$<n>$<r>$<p>$<salt, base64>$<hash, base64>`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

__all__ = ["check_hash_format", "hash_password", "verify_password"]

# scrypt's cost: ~16 MiB and ~0.1-0.3 s on a Raspberry Pi 3 per login attempt.
N, R, P = 2**14, 8, 1
MAXMEM = 64 * 2**20


def hash_password(password: str, *, n: int = N) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=R, p=P, maxmem=MAXMEM)
    return f"scrypt${n}${R}${P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    _, n, r, p, salt, digest = stored.split("$")
    tried = hashlib.scrypt(
        password.encode(),
        salt=base64.b64decode(salt),
        n=int(n),
        r=int(r),
        p=int(p),
        maxmem=MAXMEM,
    )
    return hmac.compare_digest(tried, base64.b64decode(digest))


def check_hash_format(stored: str) -> str | None:
    """A problem with a stored hash (for the config check), or None."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return "expected the output of `python -m untrusted.gui hash-password` (scrypt$...)"
    try:
        n, r, p = (int(x) for x in parts[1:4])
        base64.b64decode(parts[4], validate=True)
        base64.b64decode(parts[5], validate=True)
    except ValueError:
        return "not a valid scrypt hash: numbers or base64 malformed"
    # Bounded: a hash with a huge cost would make each login attempt a denial of service.
    if n & (n - 1) or not 2**10 <= n <= 2**20 or not 1 <= r <= 16 or not 1 <= p <= 4:
        return "scrypt cost out of range (n 2^10..2^20, r 1..16, p 1..4)"
    if 128 * r * n * p > MAXMEM // 2:
        return "scrypt cost out of range (needs too much memory)"
    return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
