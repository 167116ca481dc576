"""Setpoint statuses (proto/smx/v1/control_service.proto) by name, and which of them mean that a
setpoint is in force: what the owner runs now, or will run once it reports.

A setpoint is in force while PENDING, APPLIED, CLAMPED or UNCONFIRMED and not past its expiry;
REJECTED, EXPIRED and SUPERSEDED are final and end nothing on the device by themselves (the owner
falls back on EXPIRED, or runs the newer setpoint that SUPERSEDED it). UNCONFIRMED: the owner
passed it on and has not learned the outcome yet (docs/SETPOINTS.md).
"""

from __future__ import annotations

from smx.v1 import control_service_pb2 as pb

__all__ = [
    "ANSWERED",
    "APPLIED_NOW",
    "APPLIED_NOW_CODES",
    "MAX_REASON",
    "MAX_VALID_S",
    "MIN_VALID_S",
    "IN_FORCE",
    "IN_FORCE_CODES",
    "OWNER_REPORTS",
    "OWNER_REPORT_CODES",
    "STATUSES",
    "status_code",
    "status_name",
]

# Name -> the API's enum.
STATUSES: dict[str, pb.SetpointStatus] = {
    "PENDING": pb.SETPOINT_STATUS_PENDING,
    "APPLIED": pb.SETPOINT_STATUS_APPLIED,
    "CLAMPED": pb.SETPOINT_STATUS_CLAMPED,
    "REJECTED": pb.SETPOINT_STATUS_REJECTED,
    "EXPIRED": pb.SETPOINT_STATUS_EXPIRED,
    "SUPERSEDED": pb.SETPOINT_STATUS_SUPERSEDED,
    "UNCONFIRMED": pb.SETPOINT_STATUS_UNCONFIRMED,
}
IN_FORCE = frozenset({"PENDING", "APPLIED", "CLAMPED", "UNCONFIRMED"})
# What an owner may report (ReportSetpoint).
OWNER_REPORTS = frozenset({"APPLIED", "CLAMPED", "REJECTED", "UNCONFIRMED"})
# The device runs it: the owner said so (the requested value, or a limited one).
APPLIED_NOW = frozenset({"APPLIED", "CLAMPED"})
# The outcome is known: the owner reported what the device does, or the setpoint ended first
# (not PENDING, not UNCONFIRMED).
ANSWERED = frozenset(STATUSES) - {"PENDING", "UNCONFIRMED"}
# The same sets as the API's enum values, for code that holds Setpoint messages.
IN_FORCE_CODES = frozenset(STATUSES[name] for name in IN_FORCE)
OWNER_REPORT_CODES = frozenset(STATUSES[name] for name in OWNER_REPORTS)
APPLIED_NOW_CODES = frozenset(STATUSES[name] for name in APPLIED_NOW)
# How long a setpoint may be requested for (valid_for), in seconds.
MIN_VALID_S, MAX_VALID_S = 1.0, 24 * 3600.0
# A status's reason is words for a person, kept and audited by the core: at most this long.
MAX_REASON = 512
_NAMES: dict[int, str] = {code: name for name, code in STATUSES.items()}


def status_name(code: int) -> str:
    """`PENDING` ... `SUPERSEDED` for the API's enum; `UNSPECIFIED` for anything else."""
    return _NAMES.get(code, "UNSPECIFIED")


def status_code(name: str) -> pb.SetpointStatus:
    try:
        return STATUSES[name]
    except KeyError:
        raise ValueError(f"setpoint status {name!r}: one of {', '.join(STATUSES)}") from None
