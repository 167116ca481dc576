"""Text that others wrote, made safe for a terminal: what a process logs, a point's string
value, a name a client sent. Control characters (C0, DEL, C1, and the Unicode ones that move or
reorder text) are shown as escapes, so they cannot move the cursor, retitle the terminal,
clear the screen or forge a line."""

from __future__ import annotations

__all__ = ["printable"]


def printable(text: str) -> str:
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )
