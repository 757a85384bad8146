"""Validation and coercion of keys, values and epochs (the rules log() applies)."""

from __future__ import annotations

import datetime as dt
import enum
import json
from collections import namedtuple
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from isstreamer_jupyter import RefusedValue
from isstreamer_jupyter._events import check_key, coerce_epoch, coerce_value, iter_items
from isstreamer_jupyter._transport import body_of

NOW = 1_800_000_000.0


class Color(enum.Enum):
    RED = "red"
    BLUE = 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1), (2.5, 2.5), (True, True), ("hi", "hi"),
        (np.int64(7), 7), (np.float32(0.5), 0.5), (np.bool_(True), True), (np.array(3.5), 3.5),
        (Decimal("1.25"), 1.25), (Fraction(1, 4), 0.25), (Color.RED, "red"), (Color.BLUE, 2),
        (dt.datetime(2026, 11, 28, 12, 0), "2026-11-28T12:00:00"), (dt.timedelta(minutes=1), 60.0),
    ],
)
def test_values_are_coerced_to_json_types(value, expected):
    got = coerce_value("k", value)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (None, "log a string such as 'none'"),
        (float("nan"), "no NaN or infinity"),
        (float("inf"), "no NaN or infinity"),
        (np.float64("nan"), "no NaN"),
        (Decimal("NaN"), "no NaN"),
        ([1, 2], "log_object"),
        ({"a": 1}, "log_object"),
        (b"raw", "decode it"),
        (object(), "str(value)"),
        ("x" * 2001, "2001 characters; the limit is 2000"),
        ("bad \ud800 text", "lone surrogate"),
    ],
)
def test_refusals_name_key_limit_and_fix(value, words):
    with pytest.raises(RefusedValue) as info:
        coerce_value("sensor_1", value)
    assert "'sensor_1'" in str(info.value)
    assert words in str(info.value)


@pytest.mark.parametrize(
    ("key", "words"),
    [("", "key is empty"), (3, "keys are strings"), ("k" * 251, "the limit is 250"),
     ("t\udc80", "lone surrogate")],
)
def test_bad_keys_are_refused(key, words):
    with pytest.raises(RefusedValue, match=words):
        check_key(key)


def test_emoji_and_colons_are_fine_in_keys():
    assert check_key(":sunny: temp") == ":sunny: temp"


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (NOW, NOW), (NOW * 1e3, NOW), (NOW * 1e6, NOW), (NOW * 1e9, NOW), (str(NOW), NOW),
        ("2027-01-15T08:00:00Z", dt.datetime(2027, 1, 15, 8, tzinfo=dt.timezone.utc).timestamp()),
        (dt.datetime(2027, 1, 15, 8, tzinfo=dt.timezone.utc),
         dt.datetime(2027, 1, 15, 8, tzinfo=dt.timezone.utc).timestamp()),
        (np.float64(NOW), NOW),
    ],
)
def test_epochs_in_any_unit_become_seconds(epoch, expected):
    assert coerce_epoch("k", epoch, now=NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("epoch", "words"),
    [
        (12345, "more than 10 years ago"), ("soon", "neither a number nor an ISO 8601"),
        (True, "is a bool"), (float("nan"), "not a finite number"), ([1], "give seconds"),
    ],
)
def test_bad_epochs_are_refused_not_replaced(epoch, words):
    with pytest.raises(RefusedValue, match=words):
        coerce_epoch("k", epoch, now=NOW)


json_values = st.one_of(
    st.integers(), st.booleans(), st.text(max_size=50),
    st.floats(allow_nan=False, allow_infinity=False),
)


@given(events=st.lists(st.tuples(st.text(min_size=1, max_size=30), json_values,
                                 st.floats(min_value=1.5e9, max_value=4e9)), max_size=5))
def test_body_is_the_json_of_the_events_with_microsecond_epochs(events):
    parsed = json.loads(body_of(events))
    assert [(p["key"], p["value"]) for p in parsed] == [(k, v) for k, v, _ in events]
    assert [type(p["value"]) for p in parsed] == [type(v) for _, v, _ in events]
    for p, (_, _, epoch) in zip(parsed, events, strict=True):
        assert abs(p["epoch"] - epoch) <= 5e-7 + 1e-15 * epoch


@given(epochs=st.lists(st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.floats(min_value=0, max_value=4e9),
    st.integers(min_value=0, max_value=4 * 10**9),
    st.integers(min_value=1_700_000_000, max_value=1_700_000_002).flatmap(
        lambda s: st.floats(min_value=s - 1e-6, max_value=s + 1e-6))), max_size=30))
def test_epochs_are_written_as_six_decimals_exactly(epochs):
    """The epochs' text (made from integers, for speed) is what formatting them gives, near
    a whole second and at rounding ties too."""
    body = body_of([("k", 1, e) for e in epochs]).decode()
    assert body == "[" + ",".join(
        f'{{"key":"k","value":1,"epoch":{e:.6f}}}' for e in epochs) + "]"
    odd = [0.0000005, 1_700_000_000.9999995, -0.0, 0.0, 1e303, -1_700_000_000.5]
    assert body_of([("k", 1, e) for e in odd]).decode() == "[" + ",".join(
        f'{{"key":"k","value":1,"epoch":{e:.6f}}}' for e in odd) + "]"


Point = namedtuple("Point", "x y")


@dataclass
class Reading:
    temp: float
    ok: bool


class Sensor:
    @property
    def level(self):
        return 4

    def method(self):  # not a property: not logged
        return 5


@pytest.mark.parametrize(
    ("obj", "pairs"),
    [
        ([10, 20], [(0, 10), (1, 20)]),
        ((1,), [(0, 1)]),
        ({"a": 1, "b": 2}, [("a", 1), ("b", 2)]),
        (Point(1, 2), [("x", 1), ("y", 2)]),
        (Reading(20.5, True), [("temp", 20.5), ("ok", True)]),
        (Sensor(), [("level", 4)]),
        (np.array([1.5, 2.5]), [(0, 1.5), (1, 2.5)]),
        (np.array([[1, 2], [3, 4]]), [("0_0", 1), ("0_1", 2), ("1_0", 3), ("1_1", 4)]),
    ],
)
def test_log_object_items(obj, pairs):
    assert list(iter_items(obj)) == pairs
