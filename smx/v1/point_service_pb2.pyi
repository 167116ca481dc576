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

class Aggregation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_UNSPECIFIED: _ClassVar[Aggregation]
    AGGREGATION_MIN: _ClassVar[Aggregation]
    AGGREGATION_MAX: _ClassVar[Aggregation]
    AGGREGATION_AVG: _ClassVar[Aggregation]
    AGGREGATION_LAST: _ClassVar[Aggregation]
AGGREGATION_UNSPECIFIED: Aggregation
AGGREGATION_MIN: Aggregation
AGGREGATION_MAX: Aggregation
AGGREGATION_AVG: Aggregation
AGGREGATION_LAST: Aggregation

class GetPointsRequest(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class GetPointsResponse(_message.Message):
    __slots__ = ("points", "revision")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[_point_pb2.Point]
    revision: int
    def __init__(self, points: _Optional[_Iterable[_Union[_point_pb2.Point, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class ListPointsRequest(_message.Message):
    __slots__ = ("pattern", "page_size", "page_token")
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    page_size: int
    page_token: str
    def __init__(self, pattern: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPointsResponse(_message.Message):
    __slots__ = ("points", "next_page_token")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[_point_pb2.PointMetadata]
    next_page_token: str
    def __init__(self, points: _Optional[_Iterable[_Union[_point_pb2.PointMetadata, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeclarePointsRequest(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[_point_pb2.PointMetadata]
    def __init__(self, points: _Optional[_Iterable[_Union[_point_pb2.PointMetadata, _Mapping]]] = ...) -> None: ...

class DeclarePointsResponse(_message.Message):
    __slots__ = ("declared",)
    DECLARED_FIELD_NUMBER: _ClassVar[int]
    declared: int
    def __init__(self, declared: _Optional[int] = ...) -> None: ...

class WritePointsRequest(_message.Message):
    __slots__ = ("samples",)
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[_point_pb2.PointSample]
    def __init__(self, samples: _Optional[_Iterable[_Union[_point_pb2.PointSample, _Mapping]]] = ...) -> None: ...

class WritePointsResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class WatchPointsRequest(_message.Message):
    __slots__ = ("patterns", "start_revision", "heartbeat_interval")
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    START_REVISION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    patterns: _containers.RepeatedScalarFieldContainer[str]
    start_revision: int
    heartbeat_interval: _duration_pb2.Duration
    def __init__(self, patterns: _Optional[_Iterable[str]] = ..., start_revision: _Optional[int] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WatchPointsResponse(_message.Message):
    __slots__ = ("points", "revision", "snapshot", "heartbeat", "snapshot_complete")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[_point_pb2.Point]
    revision: int
    snapshot: bool
    heartbeat: bool
    snapshot_complete: bool
    def __init__(self, points: _Optional[_Iterable[_Union[_point_pb2.Point, _Mapping]]] = ..., revision: _Optional[int] = ..., snapshot: _Optional[bool] = ..., heartbeat: _Optional[bool] = ..., snapshot_complete: _Optional[bool] = ...) -> None: ...

class ReadHistoryRequest(_message.Message):
    __slots__ = ("names", "start_time", "end_time", "bucket", "aggregation")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    bucket: _duration_pb2.Duration
    aggregation: Aggregation
    def __init__(self, names: _Optional[_Iterable[str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., bucket: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., aggregation: _Optional[_Union[Aggregation, str]] = ...) -> None: ...

class HistorySample(_message.Message):
    __slots__ = ("sample_time", "value", "quality", "count")
    SAMPLE_TIME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    sample_time: _timestamp_pb2.Timestamp
    value: _point_pb2.Value
    quality: _point_pb2.Quality
    count: int
    def __init__(self, sample_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., value: _Optional[_Union[_point_pb2.Value, _Mapping]] = ..., quality: _Optional[_Union[_point_pb2.Quality, str]] = ..., count: _Optional[int] = ...) -> None: ...

class ReadHistoryResponse(_message.Message):
    __slots__ = ("name", "samples")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    name: str
    samples: _containers.RepeatedCompositeFieldContainer[HistorySample]
    def __init__(self, name: _Optional[str] = ..., samples: _Optional[_Iterable[_Union[HistorySample, _Mapping]]] = ...) -> None: ...
