"""Filling a core with many large points, for the tests of snapshots and memory."""

from __future__ import annotations

from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as pb
from smx.v1 import point_service_pb2_grpc as pb_grpc

__all__ = ["write_strings"]


async def write_strings(
    points: pb_grpc.PointServiceStub, count: int, text: str, per_write: int = 500
) -> None:
    """meter/S0 .. meter/S<count-1> = `text`, `per_write` points a write."""
    for start in range(0, count, per_write):
        await points.WritePoints(
            pb.WritePointsRequest(
                samples=[
                    ppb.PointSample(name=f"meter/S{i}", value=ppb.Value(string_value=text))
                    for i in range(start, min(count, start + per_write))
                ]
            )
        )
