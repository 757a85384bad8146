"""Validation and coercion of keys, values and epochs (the rules log() applies)."""

from __future__ import annotations

import datetime as dt
import enum
import json
import re
import sys
import warnings
from collections import namedtuple
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from isstreamer_jupyter import IsStreamerWarning, RefusedValue, Streamer
from isstreamer_jupyter._events import (
    INT_MAX,
    INT_MIN,
    INT_SAFE_BITS,
    check_key,
    coerce_epoch,
    coerce_value,
    iter_items,
)
from isstreamer_jupyter._transport import body_of
from isstreamer_jupyter.testing import FakeClock, FakeTransport

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
        (None, "is None; values are numbers, booleans or strings: log a string such as 'none'"),
        (float("nan"), "no NaN or infinity"),
        (float("-inf"), "no NaN or infinity: skip it or log a string such as '-inf'"),
        (np.float64("nan"), "no NaN"),
        (Decimal("NaN"), "no NaN"),
        (Decimal("-Infinity"), "is -inf; JSON has no NaN or infinity"),
        (Decimal("1e400"), "is 1E+400, past the limit of ±1.8e308"),
        (Fraction(10**400, 3), "is a fraction of 400 digits, past the limit of ±1.8e308"),
        (Fraction(10**5000), "is a fraction of 5001 digits, past the limit"),  # (no text)
        (-Fraction(10**400), "as such): log it scaled, e.g. math.log10(abs(value))"),
        (np.longdouble("1e400") if np.finfo(np.longdouble).max > 1e400 else Decimal("1e400"),
         "past the limit of ±1.8e308"),
        ([1, 2], "log_object"),
        ({"a": 1}, "is a dict; values"),
        (b"raw", "decode it"),
        (object(), "is an object; values are numbers, booleans or strings: convert it with "
                   "str(value)"),
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


#: the largest int a 64-bit float holds: what a JSON number can be at the service
LIMIT = int(sys.float_info.max)


class Huge(enum.IntEnum):
    BIG = 10**400


class MyInt(int):
    pass


@pytest.mark.parametrize(
    ("value", "digits"),
    [
        (10**400, 401), (-(2**1024), 309), (LIMIT + 1, 309), (-LIMIT - 1, 309), (10**5000, 5001),
        (Huge.BIG, 401), (MyInt(10**400), 401),
    ],
    ids=["1e400", "-2**1024", "limit+1", "-limit-1", "1e5000", "IntEnum", "int-subclass"],
)
def test_ints_beyond_a_64_bit_float_are_refused_naming_key_limit_and_fix(value, digits):
    with pytest.raises(RefusedValue) as info:
        coerce_value("sensor_1", value)
    text = str(info.value)
    assert "'sensor_1'" in text and f"an integer of {digits} digits" in text
    assert "past the limit of ±1.8e308" in text and "math.log10(abs(value))" in text
    assert ("str(value)" in text) == (digits <= 2000)  # as text only if a string can hold it


def test_the_quick_int_check_of_log_lets_through_only_ints_within_the_limit():
    assert 2**INT_SAFE_BITS - 1 < LIMIT == INT_MAX == -INT_MIN
    assert float(INT_MAX) == sys.float_info.max


@pytest.mark.parametrize(
    "value", [2**1000, -(2**1000), 2**1023, LIMIT, -LIMIT, 2**53 + 1, -(2**63),
              np.uint64(2**64 - 1)])
def test_big_ints_a_json_number_can_hold_go_out_exactly(value):
    got = coerce_value("k", value)
    assert type(got) is int and got == int(value)
    assert json.loads(body_of([("k", got, NOW)]))[0]["value"] == got  # every digit written


@pytest.mark.usefixtures("no_settings")
def test_huge_ints_are_refused_at_log_and_the_rest_reaches_the_receiver(receiver):
    s = Streamer(bucket_name="Ints", access_key="ist_events_test_secret_key_0123", spool=False,
                 api_base=receiver.api_base, max_requests_per_second=0, flush_interval=0.1)
    try:
        with pytest.warns(IsStreamerWarning) as caught:
            s.log("a", 1)
            s.log("huge", 10**5000)
            s.log("b", 2**1000)  # big, but a JSON number the service holds
            s.log("negative", -(2**1024))
            s.log_object({"c": 3, "d": Huge.BIG}, key_prefix="obj")
        messages = [str(w.message) for w in caught]
        assert len(messages) == 3
        for key, digits, w in zip(("huge", "negative", "obj_d"), (5001, 309, 401), messages,
                                  strict=True):
            assert f"{key!r} is an integer of {digits} digits, past the limit of ±1.8e308" in w
            assert "math.log10(abs(value))" in w
        assert s.flush(timeout=10)  # nothing refused at send: it was all said at log()
        assert [(e["key"], e["value"]) for e in receiver.events(s.BucketKey)] == [
            ("a", 1), ("b", 2**1000), ("obj_c", 3)]
        stats = s.stats()
        assert stats.refused == 3 and stats.sent == 3 and not stats.last_error
    finally:
        s.close(timeout=2)


@pytest.mark.usefixtures("no_settings")
def test_huge_ints_are_refused_at_log_when_recording_offline(tmp_path, capsys):
    # (capsys takes the notice an offline streamer prints)
    s = Streamer(offline=True, offline_file=tmp_path / "out.csv", spool=False)
    with pytest.warns(IsStreamerWarning, match=r"'big' is an integer of 401 digits"):
        s.log("ok", 1)
        s.log("big", 10**400)
        s.log("ok", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing refused when written
        assert s.close(timeout=5)
    rows = [line.split(",")[1:] for line in (tmp_path / "out.csv").read_text().splitlines()
            if not line.startswith("#")]
    assert rows == [["ok", "1"], ["ok", "2"]]
    assert s.stats().refused == 1


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
        (10**400, "finite number .within ±1.8e308.; give seconds"), (-(10**400), "not a finite"),
        (1e30, r"past 1e\+11 seconds since 1970 \(the year 5138\), the limit, even read as "
               r"milli-, micro- or nanoseconds: check the unit"),
        (1795874361 * 10**12, "the year 5138"), ("1e30", "the year 5138"),
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
    _calibration: float = 0.5  # private: not logged


class Sensor:
    @property
    def level(self):
        return 4

    @property
    def _raw(self):  # private: not logged
        return 5

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


def test_numpy_float32_and_float16_are_sent_as_the_number_they_print():
    """float() of np.float32(1.1) is 1.100000023841858: that went out, for a value the user
    sees as 1.1 everywhere else (numpy prints the shortest decimal that is that float32)."""
    assert coerce_value("k", np.float32(1.1)) == 1.1
    assert coerce_value("k", np.float16(0.1)) == 0.1
    assert coerce_value("k", np.float32(3e38)) == 3e38
    assert coerce_value("k", np.float64(1.1)) == 1.1
    assert coerce_value("k", np.array(1.1, dtype=np.float32)) == 1.1  # (0-d)
    assert coerce_value("k", np.array(True)) is True and coerce_value("k", np.array(3)) == 3
    for obj in (np.array([1.1, 2.2], dtype=np.float32),
                np.array([[1.1], [2.2]], dtype=np.float32)):
        assert [coerce_value("k", v) for _, v in iter_items(obj)] == [1.1, 2.2]


def object_streamer(**settings) -> tuple[Streamer, FakeTransport]:
    """A streamer that sends in the caller, to a fake transport: what log_object logged is in
    the transport after flush()."""
    transport = FakeTransport()
    s = Streamer(bucket_name="Objects", access_key="ist_events_test_secret_key_0123",
                 transport=transport, spool=False, use_async=False, clock=FakeClock(),
                 max_requests_per_second=0, **settings)
    return s, transport


def sent(s: Streamer, transport: FakeTransport) -> list[tuple[str, object]]:
    assert s.flush()
    return [(e["key"], e["value"]) for e in transport.events()]


class DataFrame:
    """Looks like a pandas DataFrame, as log_object sees one (pandas is not a test
    dependency): its public properties are what pandas' are, not data."""

    columns = ("a", "b")
    iloc = None

    @property
    def empty(self):
        return False

    @property
    def size(self):
        return 4


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        (5, "an int is one value, not a collection of them: log it with log(key, value)"),
        ("hello", "a str is one value, not a collection of them: log it with log(key, value)"),
        (np.float64(2.5), "a numpy.float64 is one value"),
        (Fraction(1, 2), "a fractions.Fraction is one value"),  # (it has properties)
        (None, "got None, so nothing to log (did a function return None?)"),
        ({1, 2}, "a set has no order, so its items would have no lasting keys: log them as a "
                 "sorted list, log_object(sorted(items), key_prefix=...)"),
        ((i for i in range(3)), "a generator is an iterator, read once and without keys: make "
                                "it a list first, log_object(list(items), key_prefix=...)"),
        ({}.values(), "a dict_values has no keys of its own: log_object(list(items)"),
        (DataFrame(), "is a table; log_object takes one row or one column of it: "
                      "log_object(df.iloc[-1], key_prefix=...) logs the last row (a key per "
                      "column), log_object(df['a']) the column 'a' (a key per row); for every "
                      "row, loop: for _, row in df.iterrows(): log_object(row, key_prefix=...)"),
        (object(), "an object has no public properties to log: give its attributes as a dict, "
                   "log_object(vars(obj), key_prefix=...), or log each with log(key, value)"),
    ],
)
def test_log_object_refuses_what_it_cannot_take_as_log_refuses_a_value(obj, words):
    """Nothing logged without a word (ISStreamer logged nothing, or a DataFrame's internals):
    warned about and counted at debug_level 0, raised at 2; what follows still goes out."""
    s, transport = object_streamer()
    with pytest.warns(IsStreamerWarning) as caught:
        s.log_object(obj, key_prefix="x")
        s.log("after", 1)
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert message.startswith("log_object (key prefix 'x'): ") and words in message, message
    assert any(f"refused: {message}" in m for m in s.messages())
    assert sent(s, transport) == [("after", 1)]
    assert s.stats().refused == 1
    s.DebugLevel = 2
    with pytest.raises(RefusedValue, match=re.escape(words)):
        s.log_object(obj)
    assert s.stats().refused == 2
    s.close()


def test_log_object_takes_empty_containers_without_a_word():
    s, transport = object_streamer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for empty in ([], (), {}, range(0), np.array([])):
            s.log_object(empty)
    assert sent(s, transport) == [] and s.stats().refused == 0
    s.close()


class Hidden:
    @property
    def _state(self):
        return 1


def test_log_object_logs_no_private_names():
    """An object's names with a leading underscore are its own business (a DataFrame's
    _is_homogeneous_type was logged as a signal); one with only those has nothing to log."""
    s, transport = object_streamer()
    s.log_object(Sensor(), key_prefix="s")
    s.log_object(Reading(20.5, True), key_prefix="r")
    assert sent(s, transport) == [("s_level", 4), ("r_temp", 20.5), ("r_ok", True)]
    with pytest.warns(IsStreamerWarning, match="Hidden has no public properties to log"):
        s.log_object(Hidden())
    s.close()


class Boom:
    @property
    def boom(self):
        raise RuntimeError("sensor offline")

    @property
    def level(self):
        return 4

    @property
    def zeta(self):
        return 5


def test_log_object_skips_a_property_that_raises_saying_so_and_logs_the_rest():
    """A property that raised made log_object raise the bare error at any debug level, and
    none of the object's values were logged."""
    s, transport = object_streamer()
    with pytest.warns(IsStreamerWarning) as caught:
        s.log_object(Boom(), key_prefix="b")
    assert len(caught) == 1
    assert re.fullmatch(r"value for key 'b_boom' could not be read: property 'boom' of a "
                        r"[\w.]*Boom raised RuntimeError: sensor offline; it was skipped, the "
                        r"rest logged: fix it, or log what you need with log\(key, value\)",
                        str(caught[0].message)), str(caught[0].message)
    assert sent(s, transport) == [("b_level", 4), ("b_zeta", 5)]
    assert s.stats().refused == 1

    s.DebugLevel = 2  # raised, once the rest is logged
    with pytest.raises(RefusedValue, match=r"property 'boom' of a .*Boom raised RuntimeError"):
        s.log_object(Boom(), key_prefix="c")
    with pytest.raises(RefusedValue, match=r"key 'd_n' is nan.* \(and 1 more: "
                                           r"streamer.messages\(\) lists them\)"):
        s.log_object({"a": 1, "n": float("nan"), "m": [1], "z": 2}, key_prefix="d")
    assert sent(s, transport)[2:] == [("c_level", 4), ("c_zeta", 5), ("d_a", 1), ("d_z", 2)]
    assert s.stats().refused == 4
    s.close()


class Series:
    """Looks like a pandas Series, as log_object sees one (pandas is not a test dependency)."""

    def __init__(self, data, name=None):
        self.data, self.name = data, name

    def items(self):
        return iter(self.data.items())


def test_log_object_of_a_series_keeps_isstreamers_prefix_whatever_its_name():
    """A Series' name made the prefix for a while: a row of a frame indexed by text
    (df.loc["2026-11-28 10:00"], iterrows()) then made new signals on every row. The type's
    name stays the default, as in ISStreamer; a column's name is given as key_prefix."""
    s, transport = object_streamer()
    s.log_object(Series({"temp": 1}, name="2026-11-28 10:00"))  # a row of a text-indexed frame
    s.log_object(Series({"temp": 2}, name="2026-11-28 10:01"))
    column = Series({0: 3}, name="temps")
    s.log_object(column, key_prefix=column.name)
    s.log_object(Series({"d": 6}, name="temps"), key_prefix="")
    assert sent(s, transport) == [("Series_temp", 1), ("Series_temp", 2), ("temps_0", 3),
                                  ("d", 6)]
    s.close()


def test_log_object_joins_multiindex_labels_and_tuple_keys_as_array_indices():
    s, transport = object_streamer()
    s.log_object(Series({("x", 1): 5, ("x", 2): 6}), key_prefix="mi")
    s.log_object({("room", "a"): 1}, key_prefix="d")
    s.log_object(np.array([[7]]), key_prefix="np")
    assert sent(s, transport) == [("mi_x_1", 5), ("mi_x_2", 6), ("d_room_a", 1), ("np_0_0", 7)]
    s.close()
