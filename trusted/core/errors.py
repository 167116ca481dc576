"""Domain errors of the core and the one table that maps them to gRPC status + ErrorInfo.

Inside the core, code raises `CoreError(reason, message)`; the service edge turns it into a
canonical status code with a `google.rpc.ErrorInfo` whose `reason` is stable (AIP-193).
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from smx.v1 import errors_pb2

__all__ = ["DOMAIN", "CODES", "REFUSALS", "CoreError", "to_rpc_status"]

DOMAIN = "smx.v1"

# reason (ErrorReason without prefix) -> canonical code. The single place errors meet the wire.
CODES: dict[str, grpc.StatusCode] = {
    "PERMISSION_NOT_GRANTED": grpc.StatusCode.PERMISSION_DENIED,
    "POINT_OWNED_BY_OTHER": grpc.StatusCode.PERMISSION_DENIED,
    "IDENTITY_INVALID": grpc.StatusCode.UNAUTHENTICATED,
    "CERTIFICATE_REVOKED": grpc.StatusCode.UNAUTHENTICATED,
    "CERTIFICATE_EXPIRED": grpc.StatusCode.UNAUTHENTICATED,
    "WRONG_SITE": grpc.StatusCode.UNAUTHENTICATED,
    "INVALID_POINT_NAME": grpc.StatusCode.INVALID_ARGUMENT,
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "REQUEST_TOO_LARGE": grpc.StatusCode.INVALID_ARGUMENT,
    "VALUE_KIND_MISMATCH": grpc.StatusCode.INVALID_ARGUMENT,
    "POINT_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "SETPOINT_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "SETPOINT_NOT_PENDING": grpc.StatusCode.FAILED_PRECONDITION,
    "REVISION_COMPACTED": grpc.StatusCode.OUT_OF_RANGE,
    "POLICY_INVALID": grpc.StatusCode.FAILED_PRECONDITION,
    "HISTORY_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "TOO_MANY_STREAMS": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "RATE_LIMITED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "METHOD_UNGUARDED": grpc.StatusCode.PERMISSION_DENIED,
    "REPLY_TOO_LARGE": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "POINT_QUOTA_EXCEEDED": grpc.StatusCode.RESOURCE_EXHAUSTED,
}

# Errors that refuse the caller something: each is audited once, at the edge (rpc.py). Not
# found, compacted and unavailable are answers, not refusals.
REFUSALS = frozenset(
    reason
    for reason, code in CODES.items()
    if code
    in (
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    and reason != "POLICY_INVALID"  # audited as a failed policy_reload
)

# Every reason of the proto enum has exactly one code here (checked by a test, too).
_PROTO_REASONS = {
    name.removeprefix("ERROR_REASON_")
    for name in errors_pb2.ErrorReason.keys()
    if name != "ERROR_REASON_UNSPECIFIED"
}
assert _PROTO_REASONS == set(CODES), _PROTO_REASONS ^ set(CODES)


class CoreError(Exception):
    """An error the client caused or must handle; carries a stable reason."""

    def __init__(self, reason: str, message: str, **metadata: str) -> None:
        if reason not in CODES:
            raise ValueError(f"unknown error reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = {k: str(v) for k, v in metadata.items()}
        # Who was refused, when known before the caller is (failed authentication).
        self.identity = ""

    @property
    def code(self) -> grpc.StatusCode:
        return CODES[self.reason]


def to_rpc_status(err: CoreError) -> grpc.Status:
    """The rich status (code, message, ErrorInfo detail) for `context.abort_with_status`."""
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=err.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(
        code=getattr(code_pb2, err.code.name), message=err.message, details=[detail]
    )
    return rpc_status.to_status(status)
