import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Quality(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUALITY_UNSPECIFIED: _ClassVar[Quality]
    QUALITY_GOOD: _ClassVar[Quality]
    QUALITY_DERIVED: _ClassVar[Quality]
    QUALITY_UNCERTAIN: _ClassVar[Quality]
    QUALITY_BAD: _ClassVar[Quality]
    QUALITY_STALE: _ClassVar[Quality]

class ValueKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VALUE_KIND_UNSPECIFIED: _ClassVar[ValueKind]
    VALUE_KIND_DOUBLE: _ClassVar[ValueKind]
    VALUE_KIND_INT: _ClassVar[ValueKind]
    VALUE_KIND_BOOL: _ClassVar[ValueKind]
    VALUE_KIND_STRING: _ClassVar[ValueKind]
QUALITY_UNSPECIFIED: Quality
QUALITY_GOOD: Quality
QUALITY_DERIVED: Quality
QUALITY_UNCERTAIN: Quality
QUALITY_BAD: Quality
QUALITY_STALE: Quality
VALUE_KIND_UNSPECIFIED: ValueKind
VALUE_KIND_DOUBLE: ValueKind
VALUE_KIND_INT: ValueKind
VALUE_KIND_BOOL: ValueKind
VALUE_KIND_STRING: ValueKind

class Value(_message.Message):
    __slots__ = ("double_value", "int_value", "bool_value", "string_value")
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    double_value: float
    int_value: int
    bool_value: bool
    string_value: str
    def __init__(self, double_value: _Optional[float] = ..., int_value: _Optional[int] = ..., bool_value: _Optional[bool] = ..., string_value: _Optional[str] = ...) -> None: ...

class PointSample(_message.Message):
    __slots__ = ("name", "value", "source_time", "quality")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TIME_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: Value
    source_time: _timestamp_pb2.Timestamp
    quality: Quality
    def __init__(self, name: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ..., source_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., quality: _Optional[_Union[Quality, str]] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("name", "value", "unit", "source_time", "receive_time", "quality", "writer", "revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TIME_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    WRITER_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: Value
    unit: str
    source_time: _timestamp_pb2.Timestamp
    receive_time: _timestamp_pb2.Timestamp
    quality: Quality
    writer: str
    revision: int
    def __init__(self, name: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ..., unit: _Optional[str] = ..., source_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., receive_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., quality: _Optional[_Union[Quality, str]] = ..., writer: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class PointMetadata(_message.Message):
    __slots__ = ("name", "unit", "kind", "description", "expected_period", "index_max", "owner")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_PERIOD_FIELD_NUMBER: _ClassVar[int]
    INDEX_MAX_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    name: str
    unit: str
    kind: ValueKind
    description: str
    expected_period: _duration_pb2.Duration
    index_max: float
    owner: str
    def __init__(self, name: _Optional[str] = ..., unit: _Optional[str] = ..., kind: _Optional[_Union[ValueKind, str]] = ..., description: _Optional[str] = ..., expected_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., index_max: _Optional[float] = ..., owner: _Optional[str] = ...) -> None: ...
