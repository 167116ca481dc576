"""TOML literals for generated files: a string and an array of strings, escaped as TOML wants.

Used to write policy text (`default_policy_text`, `smx policy bind`); parsing is tomllib's job.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["toml_list", "toml_str"]


def toml_str(value: str) -> str:
    """A TOML basic string literal for `value`."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_list(values: Iterable[str]) -> str:
    """A TOML array of basic string literals, on one line."""
    return "[" + ", ".join(toml_str(v) for v in values) + "]"
