"""Refusals reach the core's log as rate-limited summaries per (identity, reason)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from trusted.core.refusal_log import RefusalLog

GET = "/smx.v1.PointService/GetPoints"
WRITE = "/smx.v1.PointService/WritePoints"
ID = "spiffe://s/untrusted/x"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Lines:
    """The messages logged so far (caplog.messages is a fresh list on every access)."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self._caplog = caplog

    def __len__(self) -> int:
        return len(self._caplog.messages)

    def __getitem__(self, i):
        return self._caplog.messages[i]

    def __eq__(self, other: object) -> bool:
        return self._caplog.messages == other


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> Lines:
    caplog.set_level(logging.WARNING, logger="test.refusals")
    return Lines(caplog)


def make(clock: Clock) -> RefusalLog:
    return RefusalLog(10.0, logger=logging.getLogger("test.refusals"), clock=clock)


def test_thousands_of_refusals_give_one_line_then_one_summary(clock, lines):
    rl = make(clock)
    for i in range(5000):
        clock.now = 1000.0 + i * 0.001  # 5 s of refusals
        rl.record(ID, "PERMISSION_NOT_GRANTED", GET if i % 4 else WRITE, "a/b")
    assert lines == [f"denied identity={ID} method={WRITE} point=a/b reason=PERMISSION_NOT_GRANTED"]
    clock.now = 1010.0
    rl.flush()
    assert len(lines) == 2
    assert lines[1] == (
        f"identity={ID} reason=PERMISSION_NOT_GRANTED refused 4999 times in the last 10 s, "
        f"methods: {GET} (3750), {WRITE} (1249)"
    )


def test_a_sustained_flood_gives_one_summary_per_interval(clock, lines):
    rl = make(clock)
    for i in range(60_000):  # 60 s at 1000 refusals/s, flushed lazily by record itself
        clock.now = 1000.0 + i * 0.001
        rl.record(ID, "PERMISSION_NOT_GRANTED", GET)
    clock.now = 1070.0
    rl.flush()
    assert len(lines) == 1 + 6
    assert all("refused" in line for line in lines[1:])
    counts = [int(line.split("refused ")[1].split()[0]) for line in lines[1:]]
    assert sum(counts) == 59_999


def test_pairs_are_separate_and_a_quiet_pair_is_logged_at_once_again(clock, lines):
    rl = make(clock)
    rl.record(ID, "PERMISSION_NOT_GRANTED", GET)
    rl.record(ID, "RESOURCE_EXHAUSTED", GET)
    rl.record("", "IDENTITY_INVALID", GET)
    assert len(lines) == 3
    assert "identity=- " in lines[2]
    clock.now += 11
    rl.flush()
    assert len(rl) == 0 and len(lines) == 3  # nothing suppressed, nothing to summarise
    rl.record(ID, "PERMISSION_NOT_GRANTED", WRITE)
    assert len(lines) == 4 and lines[3].startswith("denied ")


def test_many_methods_are_capped_in_the_summary(clock, lines):
    rl = make(clock)
    for i in range(100):
        rl.record(ID, "PERMISSION_NOT_GRANTED", f"/svc/M{i:03d}")
    rl.close()
    assert len(lines) == 2
    assert "refused 99 times" in lines[1] and "more" in lines[1]
    assert len(lines[1]) < 400


def test_the_number_of_pairs_is_bounded(clock, lines):
    rl = RefusalLog(10.0, logger=logging.getLogger("test.refusals"), clock=clock, max_pairs=10)
    for i in range(1000):
        rl.record(f"spiffe://s/untrusted/c{i}", "PERMISSION_NOT_GRANTED", GET)
    assert len(rl) <= 11
    assert len(lines) == 11  # ten pairs and the "*" bucket
    rl.close()
    assert "identity=* reason=PERMISSION_NOT_GRANTED refused 989 times" in lines[-1]


async def test_the_summary_is_written_by_a_timer_when_the_flood_stops(lines):
    rl = RefusalLog(0.2, logger=logging.getLogger("test.refusals"))
    for _ in range(1000):
        rl.record(ID, "PERMISSION_NOT_GRANTED", GET)
    assert len(lines) == 1
    await asyncio.sleep(0.5)
    assert len(lines) == 2 and "refused 999 times in the last 0.2 s" in lines[1]
    await asyncio.sleep(0.5)  # the next, empty interval ends silently and the pair is forgotten
    assert len(lines) == 2 and len(rl) == 0
    rl.close()
