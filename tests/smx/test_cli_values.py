"""How `smx points get` shows a value: a meter's decimals exactly (billing arithmetic is done
on them), no binary noise, no trailing ".0"."""

from __future__ import annotations

import pytest

from smx.cli.client_cmd import format_value
from smx.v1 import point_pb2 as ppb


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (ppb.Value(double_value=2130.115), "2130.115"),
        (ppb.Value(double_value=32942.0231), "32942.0231"),
        (ppb.Value(double_value=5267.03049619), "5267.03049619"),
        (ppb.Value(double_value=1500.0), "1500"),
        (ppb.Value(double_value=0.1 + 0.2), "0.3"),
        (ppb.Value(double_value=-2601.0), "-2601"),
        (ppb.Value(int_value=7), "7"),
        (ppb.Value(bool_value=True), "true"),
        (ppb.Value(), "-"),
    ],
)
def test_values_are_shown_as_the_meter_sent_them(value, shown):
    assert format_value(value) == shown
