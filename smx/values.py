"""Typed point values between Python and the API (`smx.v1.Value`): one home for the core, the
CLI, the extension SDK and third-party clients."""

from __future__ import annotations

from typing import Any

from smx.v1 import point_pb2

__all__ = ["KINDS", "KIND_OF_FIELD", "Scalar", "from_value", "to_value"]

Scalar = float | int | bool | str

# Kind names as site files and the CLI spell them -> the API's enum.
KINDS = {
    "double": point_pb2.VALUE_KIND_DOUBLE,
    "int": point_pb2.VALUE_KIND_INT,
    "bool": point_pb2.VALUE_KIND_BOOL,
    "string": point_pb2.VALUE_KIND_STRING,
}
# The field set in a Value -> its kind.
KIND_OF_FIELD = {
    "double_value": point_pb2.VALUE_KIND_DOUBLE,
    "int_value": point_pb2.VALUE_KIND_INT,
    "bool_value": point_pb2.VALUE_KIND_BOOL,
    "string_value": point_pb2.VALUE_KIND_STRING,
}


def to_value(value: Any, kind: str | None = None) -> point_pb2.Value:
    """A Python value as a typed API value; `kind` "double" turns an int into a double."""
    if kind == "double" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    # bool before int: bool is a subclass of int in Python.
    if isinstance(value, bool):
        return point_pb2.Value(bool_value=value)
    if isinstance(value, int):
        return point_pb2.Value(int_value=value)
    if isinstance(value, float):
        return point_pb2.Value(double_value=value)
    if isinstance(value, str):
        return point_pb2.Value(string_value=value)
    raise TypeError(f"unsupported point value {value!r} ({type(value).__name__})")


def from_value(value: point_pb2.Value) -> Scalar | None:
    """The Python value of an API value; None when no field is set."""
    field = value.WhichOneof("kind")
    return None if field is None else getattr(value, field)
