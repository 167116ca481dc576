"""Point names and the glob patterns over them (docs/DATA-MODEL.md).

Point names
-----------
A point name is `<device>/<point>`:

- `<device>`: `[a-z][a-z0-9_-]{0,31}` (`smm`, `ess`, `ev1`, `fronius`, ...);
- `<point>`: `[A-Za-z][A-Za-z0-9_.]{0,63}` (`P`, `Ap_T1`, `P_ESS_set`, ...).

A remote USM's points are mirrored under extra device prefixes, so 1 to 4 device segments may
precede the point: `usm1/ess/P`, `site2/usm1/ess/P`. A name is at most 255 characters.

Glob patterns
-------------
Patterns (RBAC rules, watch filters) match the whole name, segment by segment (`/` separates
segments). A segment is made of device/point characters plus `*`, or is exactly `**`:

- a literal segment matches itself (case-sensitive);
- `*` matches any run of characters (possibly empty) within ONE segment: `*`, `ev*`, `*_set`;
- a `**` segment matches ONE OR MORE whole segments. It never matches zero segments, so
  `smm/**` means "every point under smm" and `a/**/P` does not match `a/P` (list `a/P` as well).

Consequences: `**` alone matches every name; `**/P` matches `smm/P` and `usm1/ess/P`;
`smm/**` matches `smm/P` but not `usm1/smm/P`; `*/P` matches `smm/P` but not `usm1/ess/P`.
A pattern has at most 5 segments (more can never match a point name) and 255 characters.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Iterator

__all__ = [
    "DEVICE_ID",
    "MAX_DEVICE_SEGMENTS",
    "MAX_NAME_LENGTH",
    "Glob",
    "GlobSet",
    "InvalidName",
    "substitute",
    "validate_point_name",
]

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 255
MAX_DEVICE_SEGMENTS = 4
_MAX_SEGMENTS = MAX_DEVICE_SEGMENTS + 1

# A device id; client (identity) names share it, so a client name is its own device prefix.
DEVICE_ID = r"[a-z][a-z0-9_-]{0,31}"
_DEVICE = DEVICE_ID
_POINT = r"[A-Za-z][A-Za-z0-9_.]{0,63}"
_DEVICE_RE = re.compile(_DEVICE)
_POINT_RE = re.compile(_POINT)
_NAME_RE = re.compile(rf"(?:{_DEVICE}/){{1,{MAX_DEVICE_SEGMENTS}}}{_POINT}")
# A pattern segment may sit at a device or a point position (`**` decides), so it uses the union
# of both character sets.
_PATTERN_SEGMENT_RE = re.compile(r"[A-Za-z0-9_.*-]+")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_CACHE_SIZE = 65536


class InvalidName(ValueError):
    """A point name or glob pattern that breaks the grammar; the message says which part."""


def _show(text: str) -> str:
    """repr() of a user-supplied string, shortened so that error messages stay readable."""
    return repr(text) if len(text) <= 80 else repr(text[:77]) + "..."


# --------------------------------------------------------------------------- point names


def validate_point_name(name: str) -> str:
    """Return `name` if it is a valid point name, else raise InvalidName saying which part fails.

    Called for every point written, so valid names are cached (invalid ones are not, so junk
    cannot evict them).
    """
    if not isinstance(name, str):
        raise InvalidName(f"point name must be a string, got {type(name).__name__}")
    return _validate_cached(name)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _validate_cached(name: str) -> str:
    if len(name) <= MAX_NAME_LENGTH and _NAME_RE.fullmatch(name) is not None:
        return name
    raise InvalidName(_explain_name(name))


def _explain_name(name: str) -> str:
    head = f"invalid point name {_show(name)}"
    if not name:
        return f"{head}: empty (expected <device>/<point>)"
    if len(name) > MAX_NAME_LENGTH:
        return f"{head}: {len(name)} characters long, at most {MAX_NAME_LENGTH}"
    segments = name.split("/")
    if len(segments) == 1:
        return f"{head}: no device part (expected <device>/<point>, e.g. smm/P)"
    for i, segment in enumerate(segments):
        if not segment:
            return f"{head}: empty segment {i + 1} (leading, trailing or double '/')"
    if len(segments) > _MAX_SEGMENTS:
        return (
            f"{head}: {len(segments) - 1} device segments, at most {MAX_DEVICE_SEGMENTS} "
            "(<device>/.../<point>)"
        )
    for device in segments[:-1]:
        if _DEVICE_RE.fullmatch(device) is None:
            return f"{head}: device {_show(device)} must match {_DEVICE}"
    point = segments[-1]
    if _POINT_RE.fullmatch(point) is None:
        return f"{head}: point {_show(point)} must match {_POINT}"
    return f"{head}: does not match <device>/<point>"  # not reached; kept as a safe fallback


# --------------------------------------------------------------------------- globs


def _check_pattern(pattern: str) -> list[str]:
    """The pattern's segments, or InvalidName naming the faulty part."""
    if not isinstance(pattern, str):
        raise InvalidName(f"pattern must be a string, got {type(pattern).__name__}")
    head = f"invalid pattern {_show(pattern)}"
    if not pattern:
        raise InvalidName(f"{head}: empty")
    if len(pattern) > MAX_NAME_LENGTH:
        raise InvalidName(f"{head}: {len(pattern)} characters long, at most {MAX_NAME_LENGTH}")
    segments = pattern.split("/")
    if len(segments) > _MAX_SEGMENTS:
        raise InvalidName(
            f"{head}: {len(segments)} segments, at most {_MAX_SEGMENTS} "
            "(a longer pattern can never match a point name)"
        )
    for i, segment in enumerate(segments, start=1):
        if not segment:
            raise InvalidName(f"{head}: empty segment {i} (leading, trailing or double '/')")
        if segment == "**":
            continue
        if "**" in segment:
            raise InvalidName(f"{head}: '**' must be a whole segment, not part of {segment!r}")
        if _PATTERN_SEGMENT_RE.fullmatch(segment) is None:
            bad = sorted({c for c in segment if _PATTERN_SEGMENT_RE.fullmatch(c) is None})
            raise InvalidName(
                f"{head}: segment {_show(segment)} has characters outside the name grammar "
                f"{''.join(bad)!r} (allowed: A-Z a-z 0-9 _ . - and *)"
            )
    return segments


@functools.lru_cache(maxsize=4096)
def _compile_glob(pattern: str) -> re.Pattern[str]:
    segments = _check_pattern(pattern)
    parts: list[str] = []
    i = 0
    while i < len(segments):
        if segments[i] == "**":
            # A run of k `**` is k or more segments: one regex piece, so no nested backtracking.
            k = 1
            while i + k < len(segments) and segments[i + k] == "**":
                k += 1
            parts.append(r"[^/]+(?:/[^/]+)" + ("*" if k == 1 else f"{{{k - 1},}}"))
            i += k
        else:
            parts.append(_segment_regex(segments[i]))
            i += 1
    return re.compile("/".join(parts))


def _segment_regex(segment: str) -> str:
    """One segment with `*`s, matched in linear time.

    `a*b*c` as plain `a[^/]*b[^/]*c` backtracks exponentially in the number of stars on a name
    that almost matches (a reader could freeze the core with `*a*a*a*a*a*a*a*b`). Taking each
    middle piece at its leftmost place and committing to it (an atomic group) is exact for
    `*`-only wildcards: an earlier place never leaves less room for what follows.
    """
    pieces = [re.escape(piece) for piece in segment.split("*")]
    if len(pieces) == 1:
        return pieces[0]
    first, *middle, last = pieces
    return first + "".join(f"(?>[^/]*?{m})" for m in middle) + "[^/]*" + last


class Glob:
    """One validated glob pattern compiled to a regex; equal and hashed by its pattern text."""

    __slots__ = ("_pattern", "_regex", "_fullmatch")

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str):
            raise InvalidName(f"pattern must be a string, got {type(pattern).__name__}")
        self._regex = _compile_glob(pattern)
        self._pattern = pattern
        self._fullmatch = self._regex.fullmatch

    @property
    def pattern(self) -> str:
        return self._pattern

    @property
    def regex(self) -> re.Pattern[str]:
        return self._regex

    def match(self, name: str) -> bool:
        # A point name is at most 255 characters: refusing longer input bounds regex work.
        return len(name) <= MAX_NAME_LENGTH and self._fullmatch(name) is not None

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Glob):
            return self._pattern == other._pattern
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("Glob", self._pattern))

    def __repr__(self) -> str:
        return f"Glob({self._pattern!r})"


@functools.lru_cache(maxsize=4096)
def _compile_set(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{_compile_glob(p).pattern})" for p in patterns))


class GlobSet:
    """Several globs: a name matches if any glob matches; an empty set matches nothing.

    The globs are compiled into one alternation regex, cached by the (sorted) set of patterns.
    """

    __slots__ = ("_globs", "_fullmatch")

    def __init__(self, patterns: Iterable[str | Glob] = ()) -> None:
        globs = (p if isinstance(p, Glob) else Glob(p) for p in patterns)
        self._globs: tuple[Glob, ...] = tuple(dict.fromkeys(globs))
        regex = _compile_set(tuple(sorted(g.pattern for g in self._globs)))
        self._fullmatch = regex.fullmatch if regex is not None else None

    @property
    def patterns(self) -> tuple[str, ...]:
        return tuple(g.pattern for g in self._globs)

    @property
    def globs(self) -> tuple[Glob, ...]:
        return self._globs

    def match(self, name: str) -> bool:
        if self._fullmatch is None or len(name) > MAX_NAME_LENGTH:
            return False
        return self._fullmatch(name) is not None

    def __iter__(self) -> Iterator[Glob]:
        return iter(self._globs)

    def __len__(self) -> int:
        return len(self._globs)

    def __bool__(self) -> bool:
        return bool(self._globs)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GlobSet):
            return set(self._globs) == set(other._globs)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._globs))

    def __repr__(self) -> str:
        return f"GlobSet({list(self.patterns)!r})"


# --------------------------------------------------------------------------- placeholders


def substitute(pattern: str, **params: str) -> str:
    """Replace `{key}` placeholders (e.g. `{name}`, `{site}`) in a pattern by `params[key]`.

    Raises InvalidName for an unknown placeholder, an unbalanced brace, or a value that is empty
    or contains `/`, `*` or braces: a substituted value must never widen a pattern.
    """

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in params:
            known = ", ".join("{" + k + "}" for k in sorted(params)) or "none"
            raise InvalidName(
                f"unknown placeholder {{{key}}} in pattern {_show(pattern)} (known: {known})"
            )
        value = params[key]
        if not isinstance(value, str) or not value or any(c in value for c in "/*{}"):
            raise InvalidName(
                f"value {value!r} for {{{key}}} in pattern {_show(pattern)} must be a non-empty "
                "string without '/', '*' or braces"
            )
        return value

    result = _PLACEHOLDER_RE.sub(replace, pattern)
    # Values carry no braces, so any brace left comes from the pattern itself.
    if "{" in result or "}" in result:
        raise InvalidName(f"unbalanced brace in pattern {_show(pattern)}")
    return result
