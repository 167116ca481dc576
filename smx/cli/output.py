"""What `smx` prints: tables with a header line, and `--json`.

`--json` is JSON Lines: one object per line, one per item listed (a point, a sample, a setpoint,
an audit record, a certificate...), or exactly one line for a command that reports one thing.
API messages keep their field names as the .proto spells them (proto3 JSON mapping: enums by
name, timestamps RFC 3339, durations "1.5s"), with int64 as numbers."""

from __future__ import annotations

import argparse
import json
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from smx.terminal import printable

if TYPE_CHECKING:  # `smx run` and `smx status` use this module but never protobuf
    from google.protobuf.message import Message

__all__ = ["Table", "add_json_option", "print_json", "print_table", "proto_json"]


def add_json_option(p: argparse.ArgumentParser, what: str = "one JSON object per line") -> None:
    p.add_argument("--json", action="store_true", help=f"{what} (JSON Lines), no table")


def proto_json(msg: Message) -> dict[str, Any]:
    """An API message as a JSON object, every field present."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(
        msg,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )


def print_json(obj: Any) -> None:
    print(json.dumps(obj, sort_keys=True, ensure_ascii=False))


def _line(cells: Sequence[str], widths: Sequence[int], right: Collection[int]) -> str:
    parts = []
    for i, cell in enumerate(cells):
        if i == len(cells) - 1 and i not in right:
            parts.append(cell)  # the last column is not padded
        elif i in right:
            parts.append(cell.rjust(widths[i]))
        else:
            parts.append(cell.ljust(widths[i]))
    return "  ".join(parts).rstrip()


def print_table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], right: Collection[int] = ()
) -> None:
    """A header line, then the rows; columns as wide as their widest cell (`right`: numbers)."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in (list(header), *cells)) for i in range(len(header))]
    for row in (list(header), *cells):
        print(_line(row, widths, right))


class Table:
    """A table printed row by row as results arrive (watches, paged lists): fixed minimum
    widths, the header line before the first row."""

    def __init__(
        self, header: Sequence[str], widths: Sequence[int], right: Collection[int] = ()
    ) -> None:
        self.header = list(header)
        self.widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
        self.right = right
        self.started = False

    def start(self) -> None:
        if not self.started:
            self.started = True
            print(_line(self.header, self.widths, self.right))

    def row(self, *cells: Any) -> None:
        self.start()
        print(_line([_cell(c) for c in cells], self.widths, self.right))


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    return printable(str(value))  # names and values others wrote: no escapes reach the terminal
