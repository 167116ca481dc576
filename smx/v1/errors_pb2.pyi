from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    ERROR_REASON_PERMISSION_NOT_GRANTED: _ClassVar[ErrorReason]
    ERROR_REASON_IDENTITY_INVALID: _ClassVar[ErrorReason]
    ERROR_REASON_CERTIFICATE_REVOKED: _ClassVar[ErrorReason]
    ERROR_REASON_CERTIFICATE_EXPIRED: _ClassVar[ErrorReason]
    ERROR_REASON_WRONG_SITE: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_POINT_NAME: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_ARGUMENT: _ClassVar[ErrorReason]
    ERROR_REASON_REQUEST_TOO_LARGE: _ClassVar[ErrorReason]
    ERROR_REASON_VALUE_KIND_MISMATCH: _ClassVar[ErrorReason]
    ERROR_REASON_POINT_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_SETPOINT_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_SETPOINT_NOT_PENDING: _ClassVar[ErrorReason]
    ERROR_REASON_REVISION_COMPACTED: _ClassVar[ErrorReason]
    ERROR_REASON_POINT_OWNED_BY_OTHER: _ClassVar[ErrorReason]
    ERROR_REASON_POLICY_INVALID: _ClassVar[ErrorReason]
ERROR_REASON_UNSPECIFIED: ErrorReason
ERROR_REASON_PERMISSION_NOT_GRANTED: ErrorReason
ERROR_REASON_IDENTITY_INVALID: ErrorReason
ERROR_REASON_CERTIFICATE_REVOKED: ErrorReason
ERROR_REASON_CERTIFICATE_EXPIRED: ErrorReason
ERROR_REASON_WRONG_SITE: ErrorReason
ERROR_REASON_INVALID_POINT_NAME: ErrorReason
ERROR_REASON_INVALID_ARGUMENT: ErrorReason
ERROR_REASON_REQUEST_TOO_LARGE: ErrorReason
ERROR_REASON_VALUE_KIND_MISMATCH: ErrorReason
ERROR_REASON_POINT_NOT_FOUND: ErrorReason
ERROR_REASON_SETPOINT_NOT_FOUND: ErrorReason
ERROR_REASON_SETPOINT_NOT_PENDING: ErrorReason
ERROR_REASON_REVISION_COMPACTED: ErrorReason
ERROR_REASON_POINT_OWNED_BY_OTHER: ErrorReason
ERROR_REASON_POLICY_INVALID: ErrorReason
