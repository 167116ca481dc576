"""Signed checkpoints of the audit log, and the full verification of a log against them.

The hash chain alone detects an edit in the middle, but not a cut tail, an emptied file, or an
edit followed by re-hashing every later record. So the core, holding its private key (the
server key under ``pki/``), periodically appends a ``checkpoint`` record::

    detail = {"covers_seq": seq - 1, "covers_hash": prev, "alg": "...", "sig": "<base64>"}

whose signature covers the seq and hash of the record just before it, and keeps the latest
checkpoint (covering the checkpoint record itself) in a small file next to the log,
``<log>.checkpoint`` (0600). `verify_log` then checks the chain, each checkpoint's signature
against the core's certificate, and that the log reaches the checkpoint file's seq with the same
hash: a cut or emptied log ends before it, a re-hashed one no longer matches a signature.

A rotation (trusted.core.audit_reader, `log_files`) changes nothing here: the chain and its
checkpoints run on across the files, so a checkpoint whose record is now in ``<log>.1`` still
verifies. One that retention has already deleted (only possible with several rotations within
one checkpoint interval) can no longer be compared and is skipped; the log must still reach it.

Limits: whoever can delete both the log *and* the checkpoint file leaves a brand-new site
behind; a checkpoint file and log both replaced by an older, validly signed pair go unnoticed.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from trusted.core.audit_reader import chain_records
from trusted.core.audit_record import AuditError
from trusted.core.site_files import write_private

__all__ = [
    "BREAK_KIND",
    "CHECKPOINT_KIND",
    "Checkpoint",
    "CheckpointSigner",
    "LogReport",
    "PublicKey",
    "checkpoint_path",
    "load_verifier",
    "read_checkpoint_file",
    "verify_log",
    "write_checkpoint_file",
]

CHECKPOINT_KIND = "checkpoint"
BREAK_KIND = "audit_break"
_CONTEXT = b"smx-audit-checkpoint/1\n"

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def checkpoint_path(log_path: Path) -> Path:
    """``data/audit.jsonl`` -> ``data/audit.checkpoint``."""
    return log_path.with_suffix(".checkpoint")


def _message(seq: int, digest: str) -> bytes:
    return _CONTEXT + f"{seq}\n{digest}".encode("ascii")


class CheckpointSigner:
    """Signs (seq, hash) pairs with the core's private key (ECDSA P-256/SHA-256 or Ed25519)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> None:
        self._key = key
        self.alg = "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "ecdsa-sha256"

    @classmethod
    def from_pem_file(cls, path: Path) -> CheckpointSigner:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as err:
            raise AuditError(
                f"{path}: cannot load the key that signs audit checkpoints: {err}"
            ) from err
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise AuditError(f"{path}: unsupported key type {type(key).__name__} for checkpoints")
        return cls(key)

    def sign(self, seq: int, digest: str) -> str:
        msg = _message(seq, digest)
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            sig = self._key.sign(msg)
        else:
            sig = self._key.sign(msg, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(sig).decode("ascii")

    def detail(self, seq: int, digest: str) -> dict[str, object]:
        return {
            "covers_seq": seq,
            "covers_hash": digest,
            "alg": self.alg,
            "sig": self.sign(seq, digest),
        }


def load_verifier(cert_path: Path) -> PublicKey:
    """The public key of the core's certificate."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as err:
        raise AuditError(f"{cert_path}: cannot load the core's certificate: {err}") from err
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise AuditError(f"{cert_path}: unsupported key type {type(key).__name__}")
    return key


def _signature_ok(key: PublicKey, seq: int, digest: str, sig: object) -> bool:
    if not isinstance(sig, str):
        return False
    try:
        raw = base64.b64decode(sig, validate=True)
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(raw, _message(seq, digest))
        else:
            key.verify(raw, _message(seq, digest), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    sig: str
    alg: str = ""


def write_checkpoint_file(path: Path, signer: CheckpointSigner, seq: int, digest: str) -> None:
    """Replace the checkpoint file atomically (0600, fsynced by `write_private`)."""
    body = {"seq": seq, "hash": digest, "alg": signer.alg, "sig": signer.sign(seq, digest)}
    write_private(path, (json.dumps(body, sort_keys=True) + "\n").encode("ascii"))


def read_checkpoint_file(path: Path) -> Checkpoint | None:
    """The checkpoint in ``path``; None if there is no file; AuditError if it is unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise AuditError(f"{path}: cannot read the checkpoint file: {err.strerror}") from err
    try:
        obj = json.loads(raw)
        seq, digest, sig = obj["seq"], obj["hash"], obj["sig"]
        if type(seq) is not int or not isinstance(digest, str) or not isinstance(sig, str):
            raise ValueError("seq, hash or sig of the wrong type")
    except (ValueError, KeyError, TypeError) as err:
        raise AuditError(f"{path}: checkpoint file is not valid: {err}") from err
    return Checkpoint(seq, digest, sig, str(obj.get("alg", "")))


@dataclass(frozen=True)
class LogReport:
    records: int  # records checked (the files kept; without rotation, the last seq)
    last_checkpoint: int  # seq covered by the newest signed checkpoint (0: none)
    breaks: int  # audit_break records found (earlier breaks the core recorded)
    first_seq: int = 1  # the oldest seq kept (above 1 once retention deleted a file)
    last_seq: int = 0


def verify_log(
    path: Path,
    key: PublicKey,
    *,
    checkpoint: Checkpoint | None = None,
    checkpoint_file: Path | None = None,
    size: int | None = None,
    require_checkpoint: bool = True,
) -> LogReport:
    """Check the chain, every checkpoint record's signature, and that the log reaches the
    checkpoint file's seq with its hash. Raises AuditError (``.seq`` where) at the first break.

    ``checkpoint`` is the checkpoint file's content if already read (the core snapshots it at
    start), otherwise ``checkpoint_file`` is read. ``size`` limits the bytes read (a log still
    being appended to). Without ``require_checkpoint``, a log with neither checkpoint records
    nor a checkpoint file passes (written before checkpoints existed).
    """
    cp_file = checkpoint_file or checkpoint_path(path)
    if checkpoint is None:
        checkpoint = read_checkpoint_file(cp_file)
    if checkpoint is not None and not _signature_ok(
        key, checkpoint.seq, checkpoint.hash, checkpoint.sig
    ):
        raise AuditError(
            f"{cp_file}: signature of the checkpoint at seq {checkpoint.seq} does not match "
            "the core's certificate",
            seq=checkpoint.seq,
        )
    count, records, first, last_cp, breaks = 0, 0, 0, 0, 0
    cp_seen = False
    for where, obj, digest in chain_records(path, size=size, missing_ok=True):
        seq, prev = obj["seq"], obj["prev"]
        first = first or seq
        records += 1
        if obj["kind"] == CHECKPOINT_KIND:
            d = obj["detail"]
            if d.get("covers_seq") != seq - 1 or d.get("covers_hash") != prev:
                raise AuditError(f"{where}: checkpoint covers another record", seq=seq)
            if not _signature_ok(key, seq - 1, prev, d.get("sig")):
                raise AuditError(
                    f"{where}: checkpoint signature does not match the core's "
                    "certificate (records before it were altered or re-hashed)",
                    seq=seq,
                )
            cp_seen, last_cp = True, seq - 1
        elif obj["kind"] == BREAK_KIND:
            breaks += 1
        if checkpoint is not None and seq == checkpoint.seq:
            if digest != checkpoint.hash:
                raise AuditError(
                    f"{where}: hash differs from the signed checkpoint in {cp_file.name} "
                    "(records up to it were altered or re-hashed)",
                    seq=seq,
                )
            last_cp = max(last_cp, seq)
        count = seq
    if checkpoint is not None and count < checkpoint.seq:
        raise AuditError(
            f"log ends at seq {count}, before the signed checkpoint at seq {checkpoint.seq} "
            "(records were cut off or the file emptied)",
            seq=count + 1,
        )
    if checkpoint is None and (cp_seen or (require_checkpoint and count)):
        raise AuditError(
            f"{cp_file.name} is missing but the log holds {count} records"
            + (f" and signed checkpoints up to seq {last_cp}" if cp_seen else ""),
            seq=last_cp or None,
        )
    return LogReport(records, last_cp, breaks, first or 1, count)


def file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
