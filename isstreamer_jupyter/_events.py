"""Events: what a logged key, value and epoch may be, and how the rest is coerced or refused.

``Streamer.log`` checks the common case (a short ``str`` key, an ``int`` of at most
``INT_SAFE_BITS`` bits/finite ``float``/``bool``/short ``str`` value, no epoch) inline; everything
else comes here. Every refusal names the key, the limit and the fix.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import math
import numbers
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from decimal import Decimal
from typing import Any

from ._errors import RefusedValue

KEY_MAX = 250
#: the API reference's figure; longer keys are accepted by the service but warned about once
KEY_WARN = 100
VALUE_MAX = 2000
#: the service replaces timestamps this old with its own time
EPOCH_MIN_AGE = 10 * 365.25 * 86400
#: seconds since 1970 below this (the year 5138); at or past it an epoch is read as ms, then
#: µs, then ns, and refused if it is past it even so
EPOCH_MAX = 1e11
#: An int goes out as a JSON number. The API reference gives a value as a string, bool or
#: number and no range; JSON readers (JavaScript's among them) read a number as a 64-bit float,
#: and one past the largest float (about 1.8e308, 309 digits) becomes Infinity or an error
#: there; past 4300 digits Python cannot even write one (sys.int_info). So ints
#: beyond ±INT_MAX are refused at log(), where the user sees it and can fix it. Ints between 2**53
#: and INT_MAX go out digit for digit, as ISStreamer sent them, neither refused nor warned about:
#: the service may keep them rounded to a float's 15-17 significant digits, as it keeps every
#: float; ints past 2**53 are common (nanosecond times, ids), and a warning would nag those users
#: and move their log() off the fast path. To keep every digit, log str(value).
INT_MAX = int(sys.float_info.max)
INT_MIN = -INT_MAX
_PAST_LIMIT = "past the limit of ±1.8e308 (the largest 64-bit float: JSON numbers are read as such)"
#: Ints of at most this many bits (|v| < 2**1023, inside ±INT_MAX) need no other check: log()'s
#: fast path tests only this (one bit_length() call: half the cost of comparing with INT_MIN
#: and INT_MAX, 1024-bit ints) and leaves longer ones to coerce_value.
INT_SAFE_BITS = 1023
_LOG10_2 = math.log10(2)

Value = str | int | float | bool


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(value: Any) -> str:
    """What a refused value is, for a message: "None", "a list", "an int", "a numpy.ndarray"."""
    if value is None:
        return "None"
    name = f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def check_key(key: Any) -> str:
    if type(key) is not str:
        if isinstance(key, str):
            key = str(key)
        else:
            raise RefusedValue(
                f"key {_shorten(repr(key))} is {describe(key)}; keys are strings: "
                f"use log(str(key), value)"
            )
    if not key:
        raise RefusedValue("key is empty; give the signal a name, e.g. log('temperature', 21.5)")
    _encodable(key, "key")
    if len(key) > KEY_MAX:
        raise RefusedValue(
            f"key {_shorten(key)!r} is {len(key)} characters; the limit is {KEY_MAX}: shorten it"
        )
    return key


def coerce_value(key: str, value: Any) -> Value:
    """Return a JSON-ready str, int, float or bool, or raise :class:`RefusedValue`."""
    kind = type(value)
    if kind is int:
        return value if INT_MIN <= value <= INT_MAX else _too_large(key, value)
    if kind is bool:
        return value
    if kind is float:
        return _finite(key, value)
    if kind is str:
        return _short(key, value)
    if isinstance(value, enum.Enum):
        inner = value.value
        return coerce_value(key, inner if isinstance(inner, str | int | float) else value.name)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return _short(key, str(value))
    if type(value).__name__ == "bool_" and hasattr(value, "item"):  # numpy.bool_
        return bool(value)
    if isinstance(value, numbers.Integral):  # int subclasses; numpy's are always in range
        return coerce_value(key, int(value))
    if isinstance(value, numbers.Real | Decimal):
        try:
            # numpy's float16/float32: the shortest decimal that is that value (1.1, not the
            # 1.100000023841858 float() gives), as numpy prints it
            number = float(str(value) if getattr(value, "itemsize", 8) < 8 else value)
        except (ValueError, OverflowError):  # a signaling NaN; a Fraction past float's range
            number = math.nan if isinstance(value, Decimal) else math.inf
        if math.isinf(number) and value not in (math.inf, -math.inf):  # finite, yet past it
            if isinstance(value, numbers.Rational):  # (its text may be too long to write)
                what, fix = f"a fraction of {_digits(abs(int(value)))} digits", "scaled"
            else:  # Decimal, numpy.longdouble
                what, fix = _shorten(str(value)), "as text, str(value), or scaled"
            raise RefusedValue(f"value for key {_shorten(key)!r} is {what}, {_PAST_LIMIT}: "
                               f"log it {fix}, e.g. math.log10(abs(value))")
        return _finite(key, number)
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy 0-d, scalars
        # (a 0-d array's own scalar: a float32 is written short; other scalars as Python's)
        return coerce_value(key, value[()] if type(value).__name__ == "ndarray" else value.item())
    if kind is Unreadable:
        raise RefusedValue(f"value for key {_shorten(key)!r} could not be read: {value}; it was "
                           f"skipped, the rest logged: fix it, or log what you need with "
                           f"log(key, value)")
    if value is None:
        fix = "log a string such as 'none', or skip the call"
    elif isinstance(value, bytes | bytearray):
        fix = "decode it first: value.decode()"
    elif isinstance(value, list | tuple | dict | set | frozenset) or hasattr(value, "__len__"):
        fix = "log its items with log_object(value, key_prefix=...)"
    else:
        fix = "convert it with str(value) or float(value)"
    raise RefusedValue(
        f"value for key {_shorten(key)!r} is {describe(value)}; values are numbers, booleans "
        f"or strings: {fix}"
    )


def _too_large(key: str, value: int) -> int:
    """Refuse an int outside ``INT_MIN`` .. ``INT_MAX`` (see there why)."""
    digits = _digits(abs(value))
    fix = "log it scaled, e.g. math.log10(abs(value))"
    if digits + (value < 0) <= VALUE_MAX:
        fix = "log it as text, str(value), or scaled, e.g. math.log10(abs(value))"
    raise RefusedValue(
        f"value for key {_shorten(key)!r} is an integer of {digits} digits, {_PAST_LIMIT}: {fix}"
    )


def _digits(n: int) -> int:
    """The decimal digits of ``n >= 1``, without writing it (str() refuses past 4300)."""
    digits = int(n.bit_length() * _LOG10_2) + 1  # this, or one off
    if n >= 10**digits:
        return digits + 1
    return digits - 1 if n < 10 ** (digits - 1) else digits


def _finite(key: str, value: float) -> float:
    if math.isfinite(value):
        return value
    raise RefusedValue(
        f"value for key {_shorten(key)!r} is {value!r}; JSON has no NaN or infinity: "
        f"skip it or log a string such as {str(value)!r}"
    )


def _encodable(text: str, what: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise RefusedValue(f"{what} holds a lone surrogate ({text[:20]!r}…), which UTF-8 "
                               f"cannot carry: fix the text's decoding") from None


def _short(key: str, value: str) -> str:
    _encodable(value, f"value for key {_shorten(key)!r}")
    if len(value) <= VALUE_MAX:
        return value
    raise RefusedValue(
        f"value for key {_shorten(key)!r} is {len(value)} characters; the limit is {VALUE_MAX}: "
        f"shorten it or split it over several keys"
    )


def coerce_epoch(key: str, epoch: Any, now: float | None = None) -> float:
    """Seconds since 1970 from a number, numeric string, ISO 8601 string or datetime.

    Milli-, micro- and nanosecond epochs are scaled to seconds; epochs the service would
    silently replace (10 or more years old) are refused.
    """
    if isinstance(epoch, bool):
        raise RefusedValue(f"epoch for key {_shorten(key)!r} is a bool; give seconds since 1970")
    if isinstance(epoch, _dt.date):
        if not isinstance(epoch, _dt.datetime):
            epoch = _dt.datetime(epoch.year, epoch.month, epoch.day)
        try:
            seconds = epoch.timestamp()
        except (ValueError, OverflowError, OSError):  # year 1 in a zone east of UTC, ...
            seconds = -math.inf
    elif isinstance(epoch, str):
        seconds = _parse_epoch_text(key, epoch)
    elif isinstance(epoch, numbers.Real | Decimal) or hasattr(epoch, "item"):
        try:
            seconds = float(epoch)
        except (TypeError, ValueError, OverflowError):  # (an int past ±1.8e308, say)
            seconds = math.nan
    else:
        raise RefusedValue(
            f"epoch for key {_shorten(key)!r} is {describe(epoch)}; give seconds since 1970 "
            f"(a number), a datetime or an ISO 8601 string"
        )
    if math.isnan(seconds) or seconds == math.inf:
        raise RefusedValue(f"epoch for key {_shorten(key)!r} is not a finite number (within "
                           f"±1.8e308); give seconds since 1970")
    for scale in (1e3, 1e3, 1e3):  # ms, then µs, then ns
        if seconds < EPOCH_MAX:
            break
        seconds /= scale
    if seconds >= EPOCH_MAX:  # (no date, nor a datetime for debug_level 1's echo)
        raise RefusedValue(
            f"epoch {_shorten(str(epoch))} for key {_shorten(key)!r} is past {EPOCH_MAX:.0e} "
            f"seconds since 1970 (the year 5138), the limit, even read as milli-, micro- or "
            f"nanoseconds: check the unit (seconds since 1970)")
    now = time.time() if now is None else now
    if seconds < now - EPOCH_MIN_AGE:
        when = _dt.datetime.fromtimestamp(max(seconds, 0), _dt.timezone.utc).date()
        raise RefusedValue(
            f"epoch {epoch!r} for key {_shorten(key)!r} is {when}, more than 10 years ago; the "
            f"service would replace it with its own time: check the unit (seconds since 1970)"
        )
    return seconds


def _parse_epoch_text(key: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise RefusedValue(
            f"epoch {_shorten(text)!r} for key {_shorten(key)!r} is neither a number nor an "
            f"ISO 8601 time such as '2026-11-28T12:00:00Z'"
        ) from None
    try:
        return parsed.timestamp()
    except (ValueError, OverflowError, OSError):
        return -math.inf  # refused below as too old


def iter_items(obj: Any) -> Iterator[tuple[Any, Any]]:
    """(name, value) pairs of a container or object, for ``log_object``.

    What has no items to log (one value, ``None``, a set, an iterator, a DataFrame, an object
    without properties) raises :class:`RefusedValue` here, before any pair: its message says
    what the object is and the fix, for ``log_object`` to put its own words before.
    """
    kind = type(obj)
    refusal = _not_loggable(obj)
    if refusal:
        raise RefusedValue(refusal)
    if isinstance(obj, Mapping) or _is_series(obj):
        # (a tuple key, a pandas MultiIndex label: its parts joined as an array's indices are)
        return ((_joined(k) if type(k) is tuple else k, v) for k, v in obj.items())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return ((f.name, _read(obj, f.name, "field")) for f in dataclasses.fields(obj)
                if not f.name.startswith("_"))
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return zip(obj._fields, obj, strict=True)
    if isinstance(obj, list | tuple | range):
        return enumerate(obj)
    if kind.__module__ == "numpy" and hasattr(obj, "ndim") and hasattr(obj, "tolist"):
        return _array_items(obj)
    # ISStreamer's rule: an object's @property attributes (but for private ones, "_name")
    names = [name for name in dir(obj) if not name.startswith("_")
             and isinstance(getattr(kind, name, None), property)]
    if not names:
        raise RefusedValue(_no_items(obj))
    return ((name, _read(obj, name, "property")) for name in names)


class Unreadable:
    """In place of a value whose reading raised (a property's): log() refuses it, naming what
    raised, so that log_object skips it and logs the rest."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def _read(obj: Any, name: str, what: str) -> Any:
    try:
        return getattr(obj, name)
    except Exception as exc:
        return Unreadable(f"{what} {name!r} of {describe(obj)} raised {type(exc).__name__}"
                          f"{': ' + _shorten(str(exc)) if str(exc) else ''}")


def _array_items(obj: Any) -> Iterator[tuple[Any, Any]]:
    # (numpy's own scalars for float16/float32, which coerce_value writes short)
    short = obj.dtype.kind == "f" and obj.dtype.itemsize < 8
    if obj.ndim <= 1:
        yield from enumerate(obj.reshape(-1) if short else obj.reshape(-1).tolist())
    else:
        import numpy as np

        for index in np.ndindex(obj.shape):
            yield _joined(index), obj[index] if short else obj[index].item()


def _is_series(obj: Any) -> bool:
    """A pandas Series (by its looks: pandas is never imported here)."""
    return type(obj).__name__ == "Series" and hasattr(obj, "items")


def _joined(parts: tuple[Any, ...]) -> str:
    return "_".join(map(str, parts))


#: what log_object refuses outright as one value, not a collection of them
_ONE_VALUE = (str, bytes, bytearray, numbers.Number, enum.Enum, _dt.date, _dt.time, _dt.timedelta)


def _not_loggable(obj: Any) -> str:
    """Why log_object cannot take `obj` whatever it holds, with the fix; "" if it may."""
    if obj is None:
        return ("got None, so nothing to log (did a function return None?): give a dict, list, "
                "dataclass or an object with properties")
    if isinstance(obj, _ONE_VALUE) or (hasattr(obj, "item") and getattr(obj, "shape", 0) == ()):
        return (f"{describe(obj)} is one value, not a collection of them: log it with "
                f"log(key, value)")
    kind = type(obj)
    if kind.__name__ == "DataFrame" and hasattr(obj, "iloc") and hasattr(obj, "columns"):
        return (f"{describe(obj)} is a table; log_object takes one row or one column of it: "
                f"log_object(df.iloc[-1], key_prefix=...) logs the last row (a key per column), "
                f"log_object(df['a']) the column 'a' (a key per row); for every row, loop: "
                f"for _, row in df.iterrows(): log_object(row, key_prefix=...)")
    return ""


def _no_items(obj: Any) -> str:
    """Why log_object has nothing to log from an object with no properties, with the fix."""
    what = describe(obj)
    if isinstance(obj, AbstractSet):
        return (f"{what} has no order, so its items would have no lasting keys: log them as "
                f"a sorted list, log_object(sorted(items), key_prefix=...)")
    if isinstance(obj, Iterator):
        return (f"{what} is an iterator, read once and without keys: make it a list first, "
                f"log_object(list(items), key_prefix=...)")
    if isinstance(obj, Iterable):
        return f"{what} has no keys of its own: log_object(list(items), key_prefix=...)"
    return (f"{what} has no public properties to log: give its attributes as a dict, "
            f"log_object(vars(obj), key_prefix=...), or log each with log(key, value)")
