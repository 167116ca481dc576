"""The SunSpec chain walker and the model decoder against garbage: random register images (with
and without a 'SunS' marker, real dumps with words flipped), random model registers. Each
ends with a list or a SunSpecError, in a bounded number of reads, never a hang or a crash."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extensions.sdk.protocols.sunspec import (
    BASE_ADDRESSES,
    MAX_MODELS,
    SUNS,
    SunSpecError,
    find_base,
    walk_models,
)
from extensions.sdk.protocols.sunspec_models import decode_model

from .images import FIXTURES, image_reader, load_dump

SMA = load_dump(FIXTURES / "modbus_schema_DeviceSMASunnyBoy36Dated20230810.regs.txt")
words = st.integers(0, 0xFFFF)
# Headers that look like SunSpec: small ids and lengths, the end marker, 'SunS' itself.
likely = st.one_of(words, st.sampled_from([0, 1, 2, 0xFFFF, *SUNS, 66, 101, 160, 203]))


@st.composite
def garbage_images(draw: st.DrawFn) -> dict[int, int]:
    base = draw(st.sampled_from([*BASE_ADDRESSES, 40001]))
    image = {base + i: w for i, w in enumerate(draw(st.lists(likely, max_size=400)))}
    if draw(st.booleans()):
        image[base], image[base + 1] = SUNS  # a marker, then garbage
    if draw(st.booleans()):  # sparse far-away registers: a chain may jump into them
        image.update(draw(st.dictionaries(st.integers(0, 0xFFFF), likely, max_size=50)))
    return image


@st.composite
def damaged_dumps(draw: st.DrawFn) -> dict[int, int]:
    image = dict(SMA)
    addresses = sorted(image)
    for _ in range(draw(st.integers(1, 8))):
        image[draw(st.sampled_from(addresses))] = draw(likely)
    return image


def _walk(image: dict[int, int]) -> tuple[object, int]:
    reads: list[tuple[int, int]] = []
    read = image_reader(image, reads)

    async def run() -> object:
        try:
            return await walk_models(read, await find_base(read))
        except SunSpecError as err:
            assert str(err)  # a message a user can act on
            return err

    result = asyncio.run(asyncio.wait_for(run(), timeout=5))
    return result, len(reads)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(garbage_images(), damaged_dumps()))
def test_walker_ends_with_models_or_a_clear_error(image):
    result, reads = _walk(image)
    # At most: three bases, then one header per model and the end marker.
    assert reads <= len(BASE_ADDRESSES) + MAX_MODELS + 1
    if isinstance(result, list):
        assert result[0].id == 1
        assert all(m.end <= 0x10000 for m in result)
        assert all(a.end == b.start for a, b in zip(result, result[1:], strict=False))


def test_a_chain_of_empty_models_stops_at_the_model_limit():
    image = {40000 + i: w for i, w in enumerate([*SUNS, 1, 0] + [7, 0] * 40000)}
    result, reads = _walk(image)
    assert isinstance(result, SunSpecError) and f"more than {MAX_MODELS} models" in str(result)


@pytest.mark.parametrize(
    ("length", "message"),
    [(30000, "passes 65535"), (65535 - 40004, "no end marker before register 65535")],
)
def test_a_chain_running_off_the_address_space_is_an_error(length, message):
    image = {40000 + i: w for i, w in enumerate([*SUNS, 1, length])}
    result, _ = _walk(image)
    assert isinstance(result, SunSpecError) and message in str(result)


model_ids = st.sampled_from([1, 101, 103, 113, 120, 124, 126, 129, 160, 203, 213, 705])


@settings(max_examples=400, deadline=None)
@given(model_ids, st.integers(0, 300), st.lists(words, max_size=320))
def test_decoder_returns_points_or_a_clear_error(model_id, length, body):
    try:
        values = decode_model([model_id, length, *body])
    except SunSpecError as err:
        assert str(err)
        return
    assert values["ID"] == model_id and values["L"] == length
