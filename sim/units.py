"""Explicit units: sizes, durations, rates and counts written the way people write them.

Workload specs never carry a bare "64" that might be bytes, pages or GB: a
quantity is a string with its unit (``"64GiB"``, ``"250us"``, ``"100k/s"``),
and inside the simulator it is a plain number in a base unit — bytes (``int``),
seconds (``float``), events per second (``float``) or a count (``int``).
Code that holds such a number names the unit (``_bytes``, ``_seconds``,
``_ns``, ``_pages``); the conversion happens once, here, at the edge.

Conventions
-----------

**Numbers** are decimal, optionally with a fraction and an exponent
(``1.5``, ``.5``, ``2e6``); a space between number and unit is allowed
(``"64 GiB"``).  Negative values, NaN, infinities, booleans and empty strings
are rejected, and so is a result too large to be a finite float
(``"1e400s"``): hostile text cannot smuggle in ``inf``.  A quantity string is
at most :data:`MAX_QUANTITY_CHARS` characters and its exponent at most
:data:`MAX_EXPONENT` in size, so parsing never builds a huge integer.  Ranges
(how long a duration may be) are the fields' business, not this module's.
A plain number (``4096``, ``0.25``, or the string ``"4096"``) is taken in
the base unit.

**Bytes** (:func:`parse_bytes`, :data:`Bytes`): binary prefixes are powers of
1024 (``KiB MiB GiB TiB PiB``; the ``B`` may be dropped, ``"64Gi"``, and case
does not matter, ``"64gib"``); decimal prefixes are powers of 1000 (``kB KB MB
GB TB PB``, case as written).  A bare ``K``/``M``/``G`` is rejected as
ambiguous (is ``"4K"`` 4000 or 4096?) and ``Gb``/``Mb``/``kb`` read as bits,
so they are rejected too.  The result is a whole number of bytes: with a
prefix, a fraction is rounded to the nearest byte (``"1.1KiB"`` → 1126); a
plain byte count must already be whole (``"1.5"`` and ``"1.5B"`` are errors).

**Seconds** (:func:`parse_seconds`, :data:`Seconds`): ``ns``, ``us`` (also
``µs`` and ``μs``), ``ms``, ``s``, ``m`` or ``min``, ``h``.

**Rates** (:func:`parse_rate`, :data:`Rate`), events per second: an optional
multiplier ``k``/``K`` (10³), ``M`` (10⁶) or ``G`` (10⁹), then ``/`` and one
of the time units: ``"100k/s"``, ``"2M/s"``, ``"1/ms"``, ``"10/us"``,
``"30/min"``.  A plain number is per second; ``"100k"`` without ``/`` is
rejected (it names no time unit).

**Counts** (:func:`parse_count`, :data:`Count`): an optional multiplier
``k``/``K``, ``M``, ``G`` (powers of 1000, never 1024): ``"64k"`` = 64 000,
``"1.5M"`` = 1 500 000.  No fraction may be left over (``"1.0005k"`` is an
error).

Arithmetic is exact: the number is read as a :class:`~fractions.Fraction`, so
``"1.1GB"`` is exactly 1 100 000 000 bytes.

Pydantic
--------

:data:`Bytes`, :data:`Seconds`, :data:`Rate` and :data:`Count` are
``Annotated`` types usable as model fields.  A bad value raises
:class:`ValueError` with the value and valid examples; pydantic reports it as an
error on that field::

    class Spec(BaseModel):
        memory: Bytes
        every: Seconds

    Spec(memory="64GiB", every="5min")     # memory=68719476736, every=300.0
    Spec(memory="64GB/s", every="5min")    # ValidationError: memory: invalid byte size '64GB/s' ...

Output
------

:func:`format_bytes`, :func:`format_seconds` and :func:`format_rate` print
about three significant digits in the largest fitting unit (``"64 GiB"``,
``"250 µs"``, ``"100k/s"``); their output parses back to the value within
that rounding (0.5 %).
"""

from __future__ import annotations

import math
import numbers
import re
from fractions import Fraction
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

__all__ = [
    "MAX_EXPONENT",
    "MAX_QUANTITY_CHARS",
    "Bytes",
    "Count",
    "Rate",
    "Seconds",
    "format_bytes",
    "format_rate",
    "format_seconds",
    "parse_bytes",
    "parse_count",
    "parse_rate",
    "parse_seconds",
]

# -- tables --------------------------------------------------------------------------

_BINARY = {"ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40, "pi": 1 << 50}
"""Binary prefixes (lower-cased); accepted with or without a trailing B, in any case."""

_DECIMAL_BYTES = {
    "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15,
}
"""Decimal byte units, accepted exactly as written."""

_SECONDS = {
    "ns": Fraction(1, 10**9),
    "us": Fraction(1, 10**6),
    "\u00b5s": Fraction(1, 10**6),  # µ MICRO SIGN
    "\u03bcs": Fraction(1, 10**6),  # μ GREEK SMALL LETTER MU
    "ms": Fraction(1, 10**3),
    "s": Fraction(1),
    "m": Fraction(60),
    "min": Fraction(60),
    "h": Fraction(3600),
}

_MULTIPLIERS = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9}
"""Count and rate multipliers: always powers of 1000."""

MAX_QUANTITY_CHARS = 64
"""The longest quantity string accepted (``"1.5 GiB"`` needs 7)."""
MAX_EXPONENT = 400
"""The largest exponent accepted in a number (``1e400``); larger ones would only overflow."""

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_QUANTITY = re.compile(rf"(?P<number>{_NUMBER})\s*(?P<unit>.*)", re.DOTALL)
_PER = re.compile(r"(?P<multiplier>[^/\s]*)\s*/\s*(?P<per>.*)", re.DOTALL)

_EXAMPLES = {
    "byte size": "'64GiB', '4KiB', '1.5GB' or a number of bytes like 4096",
    "duration": "'250us', '1.5ms', '2s', '5min' or a number of seconds like 0.25",
    "rate": "'100k/s', '2M/s', '1/ms' or a number per second like 50",
    "count": "'64k', '1M' or a whole number like 1000",
}

# -- parsing -------------------------------------------------------------------------


def _shown(value: object) -> str:
    """``repr(value)``, cut short: a hostile megabyte string must not fill the error line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fail(kind: str, value: object, reason: str) -> ValueError:
    return ValueError(f"invalid {kind} {_shown(value)}: {reason}; write e.g. {_EXAMPLES[kind]}")


def _finite(exact: Fraction, kind: str, value: object) -> float:
    """``float(exact)``, refusing results that overflow to infinity."""
    try:
        result = float(exact)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise _fail(kind, value, "too large (not a finite number)")
    return result


def _split(value: object, kind: str) -> tuple[Fraction, str]:
    """The exact non-negative number and the (stripped) unit text of ``value``."""
    if isinstance(value, bool):
        raise _fail(kind, value, "a boolean is not a quantity")
    if isinstance(value, numbers.Integral):
        number = Fraction(int(value))
        unit = ""
    elif isinstance(value, numbers.Real):
        as_float = float(value)
        if not math.isfinite(as_float):
            raise _fail(kind, value, "not a finite number")
        number = Fraction(as_float)
        unit = ""
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise _fail(kind, value, "empty")
        if len(text) > MAX_QUANTITY_CHARS:
            raise _fail(kind, value, f"longer than {MAX_QUANTITY_CHARS} characters")
        match = _QUANTITY.fullmatch(text)
        if match is None:
            if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
                raise _fail(kind, value, "not a finite number")
            raise _fail(kind, value, "does not start with a number")
        exponent = match["number"].lower().partition("e")[2]
        if exponent and abs(int(exponent)) > MAX_EXPONENT:
            raise _fail(kind, value, f"exponent beyond ±{MAX_EXPONENT}")
        number = Fraction(match["number"])
        unit = match["unit"].strip()
    else:
        raise _fail(kind, value, f"expected a string or a number, not {type(value).__name__}")
    if number < 0:
        raise _fail(kind, value, "must not be negative")
    return number, unit


def _byte_multiplier(unit: str, value: object) -> int:
    if unit in ("", "B"):
        return 1
    if unit in _DECIMAL_BYTES:
        return _DECIMAL_BYTES[unit]
    folded = unit.lower()
    if folded.endswith("ib") and folded[:-1] in _BINARY:
        return _BINARY[folded[:-1]]
    if folded in _BINARY:
        return _BINARY[folded]
    if unit.upper() in ("K", "M", "G", "T", "P"):
        letter = unit.upper()
        raise _fail("byte size", value,
                    f"unit {unit!r} is ambiguous: use '{letter}iB' (powers of 1024) "
                    f"or '{'k' if letter == 'K' else letter}B' (powers of 1000)")
    if len(unit) == 2 and unit.endswith("b") and unit[0].upper() in "KMGTP":
        raise _fail("byte size", value, f"{unit!r} reads as bits; use '{unit[0].upper()}B' or "
                                        f"'{unit[0].upper()}iB' for bytes")
    raise _fail("byte size", value, f"unknown unit {unit!r}")


def parse_bytes(value: object) -> int:
    """A byte size (``"64GiB"``, ``"1.5GB"``, ``"512"``, ``4096``) as a whole number of bytes.

    Binary prefixes (``KiB`` … ``PiB``, ``B`` optional) are powers of 1024, decimal
    ones (``kB``/``KB`` … ``PB``) powers of 1000; with a prefix the result is rounded
    to the nearest byte, a plain byte count must be whole.
    """
    number, unit = _split(value, "byte size")
    multiplier = _byte_multiplier(unit, value)
    exact = number * multiplier
    if multiplier == 1:
        if exact.denominator != 1:
            raise _fail("byte size", value, "a byte count must be a whole number")
        return int(exact)
    return round(exact)


def _seconds_per_unit(unit: str, kind: str, value: object) -> Fraction:
    try:
        return _SECONDS[unit]
    except KeyError:
        raise _fail(kind, value, f"unknown time unit {unit!r} (use ns, us, µs, ms, s, min or h)") from None


def parse_seconds(value: object) -> float:
    """A duration (``"250us"``, ``"1.5ms"``, ``"2s"``, ``"5min"``, ``0.25``) in seconds."""
    number, unit = _split(value, "duration")
    if unit == "":
        return _finite(number, "duration", value)
    return _finite(number * _seconds_per_unit(unit, "duration", value), "duration", value)


def parse_rate(value: object) -> float:
    """A rate (``"100k/s"``, ``"2M/s"``, ``"1/ms"``, ``50``) in events per second."""
    number, unit = _split(value, "rate")
    if unit == "":
        return _finite(number, "rate", value)
    match = _PER.fullmatch(unit)
    if match is None:
        raise _fail("rate", value, f"a rate needs a time unit after '/', as in '{value}/s'"
                    if unit in _MULTIPLIERS else f"unknown unit {unit!r}")
    multiplier = match["multiplier"]
    if multiplier not in _MULTIPLIERS:
        raise _fail("rate", value, f"unknown multiplier {multiplier!r} (use k, M or G)")
    per = _seconds_per_unit(match["per"].strip(), "rate", value)
    return _finite(number * _MULTIPLIERS[multiplier] / per, "rate", value)


def parse_count(value: object) -> int:
    """A count (``"64k"``, ``"1M"``, ``1000``) as an int; multipliers are powers of 1000."""
    number, unit = _split(value, "count")
    if unit not in _MULTIPLIERS:
        raise _fail("count", value, f"unknown multiplier {unit!r} (use k, M or G)")
    exact = number * _MULTIPLIERS[unit]
    if exact.denominator != 1:
        raise _fail("count", value, f"not a whole number ({float(exact):g})")
    return int(exact)


# -- pydantic field types ------------------------------------------------------------


def _schema(base: str, examples: list[Any], description: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [{"type": base, "minimum": 0}, {"type": "string"}],
            "examples": examples,
            "description": description,
        },
        mode="validation",
    )


Bytes = Annotated[
    int,
    BeforeValidator(parse_bytes),
    _schema("integer", ["64GiB", "4KiB", "1.5GB", 4096],
            "a byte size: KiB/MiB/GiB/TiB (powers of 1024) or kB/MB/GB/TB (powers of 1000); "
            "a plain number is bytes"),
]
"""A byte size field: ``"64GiB"``, ``"1.5GB"``, ``4096`` → int bytes."""

Seconds = Annotated[
    float,
    BeforeValidator(parse_seconds),
    _schema("number", ["250us", "1.5ms", "2s", "5min"],
            "a duration: ns, us (µs), ms, s, min (m) or h; a plain number is seconds"),
]
"""A duration field: ``"250us"``, ``"2s"``, ``0.5`` → float seconds."""

Rate = Annotated[
    float,
    BeforeValidator(parse_rate),
    _schema("number", ["100k/s", "2M/s", "1/ms"],
            "a rate: [k|M|G]/time unit, e.g. 100k/s; a plain number is per second"),
]
"""A rate field: ``"100k/s"``, ``"1/ms"``, ``50`` → float events per second."""

Count = Annotated[
    int,
    BeforeValidator(parse_count),
    _schema("integer", ["64k", "1M", 1000],
            "a count with an optional multiplier k (10^3), M (10^6) or G (10^9)"),
]
"""A count field: ``"64k"``, ``"1M"``, ``1000`` → int."""


# -- formatting ----------------------------------------------------------------------


def _number(value: float) -> str:
    """About three significant digits, trailing zeros dropped (``1.5``, ``250``, ``0.0123``)."""
    if value == 0:
        return "0"
    if value >= 100:
        text = f"{value:.0f}"
    elif value >= 10:
        text = f"{value:.1f}"
    elif value >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    if "." in text and "e" not in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _scaled(value: float, scales: list[tuple[float, str, float]], join: str) -> str:
    """``value`` in the largest unit of ``scales`` (ascending) that it reaches, promoted
    to the next unit when rounding lands on that unit's limit (1023.9 KiB → 1 MiB)."""
    index = 0
    for i, (scale, _name, _limit) in enumerate(scales):
        if value >= scale:
            index = i
    scale, name, limit = scales[index]
    text = _number(value / scale)
    if index + 1 < len(scales) and float(text) >= limit:
        scale, name, _ = scales[index + 1]
        text = _number(value / scale)
    return f"{text}{join}{name}"


_BYTE_SCALES = [(1.0, "B", 1024.0)] + [
    (float(1 << (10 * i)), f"{p}iB", 1024.0) for i, p in enumerate("KMGTP", start=1)
]
_SECOND_SCALES = [(1e-9, "ns", 1000.0), (1e-6, "µs", 1000.0), (1e-3, "ms", 1000.0),
                  (1.0, "s", 60.0), (60.0, "min", 60.0), (3600.0, "h", math.inf)]
_RATE_SCALES = [(1.0, "/s", 1000.0), (1e3, "k/s", 1000.0), (1e6, "M/s", 1000.0),
                (1e9, "G/s", math.inf)]


def _signed(value: float, unit: str, body: Any) -> str:
    value = float(value)
    if not math.isfinite(value):
        return f"{value}{unit}"
    if value < 0:
        return "-" + str(body(-value))
    return str(body(value))


def format_bytes(value: float) -> str:
    """A byte count for people: ``68719476736`` → ``"64 GiB"``, ``1536`` → ``"1.5 KiB"``,
    ``1000`` → ``"1000 B"``."""
    def body(v: float) -> str:
        if v < 1024 and v == int(v):
            return f"{int(v)} B"
        return _scaled(v, _BYTE_SCALES, " ")
    return _signed(value, " B", body)


def format_seconds(value: float) -> str:
    """Seconds for people: ``0.00025`` → ``"250 µs"``, ``90`` → ``"1.5 min"``, ``0`` → ``"0 s"``."""
    return _signed(value, " s", lambda v: "0 s" if v == 0 else _scaled(v, _SECOND_SCALES, " "))


def format_rate(value: float) -> str:
    """Events per second for people: ``100000`` → ``"100k/s"``, ``0.5`` → ``"0.5/s"``."""
    return _signed(value, "/s", lambda v: "0/s" if v == 0 else _scaled(v, _RATE_SCALES, ""))
