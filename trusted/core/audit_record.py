"""One audit record and its line format: the fields, the canonical JSON and the hash chain.

Each line of the audit log is one record::

    {"seq":1,"ts_ms":...,"kind":"denied","identity":"spiffe://...","method":"...","point":"...",
     "reason":"...","detail":{...},"prev":"<hash of seq-1>","hash":"<sha256>"}

``hash`` is the SHA-256 of the canonical JSON (sorted keys, no spaces, ASCII) of every other field,
``prev`` included, so editing, reordering or deleting a line in the middle breaks the chain and
:meth:`AuditLog.verify` names the first bad seq. Cutting records off the *end*, or re-hashing
every record after an edit, is detected by the signed checkpoints of
trusted.core.audit_checkpoint, not by the chain alone.

The log may span several files (see trusted.core.audit_reader, `log_files`): when the current
file passes its size limit the writer renames it ``<log>.1`` (older ones shift to ``.2``, ...)
and starts a new file whose first record is a ``rotated`` record: it continues the seq and the
chain (its ``prev`` is the hash of the previous file's last record) and repeats that record's
seq and hash in its detail::

    detail = {"last_seq": s, "last_hash": "<hash of seq s>", "kept_from_seq": k}

``kept_from_seq`` is the first seq still kept on disk after that rotation (older files are
deleted by retention), so a verifier can tell retention from a deleted file.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FIELDS",
    "GENESIS",
    "ROTATED_KIND",
    "AuditError",
    "AuditRecord",
    "canonical",
    "jsonable",
    "record_hash",
    "to_record",
]

# The `prev` of the first record.
GENESIS = "0" * 64
# The first record of a file that continues the chain of the file before it.
ROTATED_KIND = "rotated"

FIELDS = (
    "seq",
    "ts_ms",
    "kind",
    "identity",
    "method",
    "point",
    "reason",
    "detail",
    "prev",
    "hash",
)
_MAX_DETAIL_DEPTH = 16


class AuditError(Exception):
    """The audit log cannot be written, read or verified; ``seq`` is the first bad record if any."""

    def __init__(self, message: str, *, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    ts_ms: int
    kind: str
    identity: str
    method: str = ""
    point: str = ""
    reason: str = ""
    detail: dict = field(default_factory=dict)


def jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy: the hash must survive a write/read round trip, so no NaN, no odd types."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= _MAX_DETAIL_DEPTH:
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v, depth + 1) for v in value]
    return str(value)


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def record_hash(body: dict[str, Any]) -> str:
    """SHA-256 over every field except ``hash`` itself (``prev`` included)."""
    return hashlib.sha256(canonical(body)).hexdigest()


def to_record(obj: Any) -> AuditRecord:
    """A record from one parsed line; ValueError when the line is not a record."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    seq, ts_ms, detail = obj.get("seq"), obj.get("ts_ms"), obj.get("detail")
    if type(seq) is not int or type(ts_ms) is not int or not isinstance(detail, dict):
        raise ValueError("seq, ts_ms or detail missing or of the wrong type")
    kind, identity, method, point, reason = (
        obj.get(k) for k in ("kind", "identity", "method", "point", "reason")
    )
    if not (
        isinstance(kind, str)
        and isinstance(identity, str)
        and isinstance(method, str)
        and isinstance(point, str)
        and isinstance(reason, str)
    ):
        raise ValueError("a text field is missing or not a string")
    return AuditRecord(seq, ts_ms, kind, identity, method, point, reason, detail)
