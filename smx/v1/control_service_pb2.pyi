import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from smx.v1 import point_pb2 as _point_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SetpointStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SETPOINT_STATUS_UNSPECIFIED: _ClassVar[SetpointStatus]
    SETPOINT_STATUS_PENDING: _ClassVar[SetpointStatus]
    SETPOINT_STATUS_APPLIED: _ClassVar[SetpointStatus]
    SETPOINT_STATUS_CLAMPED: _ClassVar[SetpointStatus]
    SETPOINT_STATUS_REJECTED: _ClassVar[SetpointStatus]
    SETPOINT_STATUS_EXPIRED: _ClassVar[SetpointStatus]
    SETPOINT_STATUS_SUPERSEDED: _ClassVar[SetpointStatus]
    SETPOINT_STATUS_UNCONFIRMED: _ClassVar[SetpointStatus]

class SetpointEvent(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SETPOINT_EVENT_UNSPECIFIED: _ClassVar[SetpointEvent]
    SETPOINT_EVENT_REQUESTED: _ClassVar[SetpointEvent]
    SETPOINT_EVENT_EXPIRED: _ClassVar[SetpointEvent]
SETPOINT_STATUS_UNSPECIFIED: SetpointStatus
SETPOINT_STATUS_PENDING: SetpointStatus
SETPOINT_STATUS_APPLIED: SetpointStatus
SETPOINT_STATUS_CLAMPED: SetpointStatus
SETPOINT_STATUS_REJECTED: SetpointStatus
SETPOINT_STATUS_EXPIRED: SetpointStatus
SETPOINT_STATUS_SUPERSEDED: SetpointStatus
SETPOINT_STATUS_UNCONFIRMED: SetpointStatus
SETPOINT_EVENT_UNSPECIFIED: SetpointEvent
SETPOINT_EVENT_REQUESTED: SetpointEvent
SETPOINT_EVENT_EXPIRED: SetpointEvent

class Setpoint(_message.Message):
    __slots__ = ("id", "name", "value", "requester", "request_time", "expire_time", "status", "applied_value", "reason", "reporter", "report_time", "revision", "request_key")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VALUE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REPORTER_FIELD_NUMBER: _ClassVar[int]
    REPORT_TIME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_KEY_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    value: _point_pb2.Value
    requester: str
    request_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    status: SetpointStatus
    applied_value: _point_pb2.Value
    reason: str
    reporter: str
    report_time: _timestamp_pb2.Timestamp
    revision: int
    request_key: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., value: _Optional[_Union[_point_pb2.Value, _Mapping]] = ..., requester: _Optional[str] = ..., request_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[_Union[SetpointStatus, str]] = ..., applied_value: _Optional[_Union[_point_pb2.Value, _Mapping]] = ..., reason: _Optional[str] = ..., reporter: _Optional[str] = ..., report_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revision: _Optional[int] = ..., request_key: _Optional[str] = ...) -> None: ...

class RequestSetpointRequest(_message.Message):
    __slots__ = ("name", "value", "valid_for", "request_key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VALID_FOR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: _point_pb2.Value
    valid_for: _duration_pb2.Duration
    request_key: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[_Union[_point_pb2.Value, _Mapping]] = ..., valid_for: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., request_key: _Optional[str] = ...) -> None: ...

class RequestSetpointResponse(_message.Message):
    __slots__ = ("setpoint",)
    SETPOINT_FIELD_NUMBER: _ClassVar[int]
    setpoint: Setpoint
    def __init__(self, setpoint: _Optional[_Union[Setpoint, _Mapping]] = ...) -> None: ...

class WatchSetpointsRequest(_message.Message):
    __slots__ = ("patterns", "start_revision", "heartbeat_interval")
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    START_REVISION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    patterns: _containers.RepeatedScalarFieldContainer[str]
    start_revision: int
    heartbeat_interval: _duration_pb2.Duration
    def __init__(self, patterns: _Optional[_Iterable[str]] = ..., start_revision: _Optional[int] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WatchSetpointsResponse(_message.Message):
    __slots__ = ("event", "setpoint", "revision", "heartbeat")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    SETPOINT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    event: SetpointEvent
    setpoint: Setpoint
    revision: int
    heartbeat: bool
    def __init__(self, event: _Optional[_Union[SetpointEvent, str]] = ..., setpoint: _Optional[_Union[Setpoint, _Mapping]] = ..., revision: _Optional[int] = ..., heartbeat: _Optional[bool] = ...) -> None: ...

class ReportSetpointRequest(_message.Message):
    __slots__ = ("id", "status", "applied_value", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VALUE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: SetpointStatus
    applied_value: _point_pb2.Value
    reason: str
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[SetpointStatus, str]] = ..., applied_value: _Optional[_Union[_point_pb2.Value, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class ReportSetpointResponse(_message.Message):
    __slots__ = ("setpoint",)
    SETPOINT_FIELD_NUMBER: _ClassVar[int]
    setpoint: Setpoint
    def __init__(self, setpoint: _Optional[_Union[Setpoint, _Mapping]] = ...) -> None: ...

class GetSetpointRequest(_message.Message):
    __slots__ = ("name", "id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class GetSetpointResponse(_message.Message):
    __slots__ = ("setpoint",)
    SETPOINT_FIELD_NUMBER: _ClassVar[int]
    setpoint: Setpoint
    def __init__(self, setpoint: _Optional[_Union[Setpoint, _Mapping]] = ...) -> None: ...

class WatchSetpointOutcomesRequest(_message.Message):
    __slots__ = ("patterns", "start_revision", "heartbeat_interval")
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    START_REVISION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    patterns: _containers.RepeatedScalarFieldContainer[str]
    start_revision: int
    heartbeat_interval: _duration_pb2.Duration
    def __init__(self, patterns: _Optional[_Iterable[str]] = ..., start_revision: _Optional[int] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WatchSetpointOutcomesResponse(_message.Message):
    __slots__ = ("setpoints", "revision", "snapshot", "heartbeat")
    SETPOINTS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    setpoints: _containers.RepeatedCompositeFieldContainer[Setpoint]
    revision: int
    snapshot: bool
    heartbeat: bool
    def __init__(self, setpoints: _Optional[_Iterable[_Union[Setpoint, _Mapping]]] = ..., revision: _Optional[int] = ..., snapshot: _Optional[bool] = ..., heartbeat: _Optional[bool] = ...) -> None: ...
