"""Tests for cowsim.sim.units: parsing explicit units, pydantic field types, formatting."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from cowsim.sim.units import (
    Bytes,
    Count,
    Rate,
    Seconds,
    format_bytes,
    format_rate,
    format_seconds,
    parse_bytes,
    parse_count,
    parse_rate,
    parse_seconds,
)

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

# -- bytes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64GiB", 64 * GiB),
        ("4KiB", 4096),
        ("1.5GB", 1_500_000_000),
        ("512", 512),
        (4096, 4096),
        (4096.0, 4096),
        (np.int64(8192), 8192),
        ("512B", 512),
        ("64 GiB", 64 * GiB),
        ("  2MiB ", 2 * MiB),
        ("1TiB", TiB),
        ("1PiB", 1 << 50),
        ("64Gi", 64 * GiB),
        ("64gib", 64 * GiB),
        ("4KIB", 4096),
        ("1kB", 1000),
        ("1KB", 1000),
        ("3MB", 3_000_000),
        ("2TB", 2 * 10**12),
        ("1.1GB", 1_100_000_000),  # exact, no float error
        ("1.1KiB", 1126),  # 1126.4 rounds to the nearest byte
        ("0.5KiB", 512),
        ("1e3", 1000),
        ("0", 0),
        (".5MiB", 512 * KiB),
    ],
)
def test_parse_bytes(text: Any, expected: int) -> None:
    result = parse_bytes(text)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("4K", "ambiguous"),
        ("4G", "ambiguous"),
        ("4k", "ambiguous"),
        ("64Gb", "bits"),
        ("8kb", "bits"),
        ("1.5", "whole"),
        ("1.5B", "whole"),
        (1.5, "whole"),
        ("-1KiB", "negative"),
        (-4096, "negative"),
        ("", "empty"),
        ("   ", "empty"),
        ("nan", "finite"),
        ("inf", "finite"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (True, "boolean"),
        (False, "boolean"),
        ("64 GB/s", "unknown unit"),
        ("64XiB", "unknown unit"),
        ("GiB", "number"),
        (None, "NoneType"),
        ([4096], "list"),
    ],
)
def test_parse_bytes_rejects(text: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match="invalid byte size") as info:
        parse_bytes(text)
    message = str(info.value)
    assert fragment in message
    assert repr(text) in message  # shows the bad value
    assert "'64GiB'" in message  # and a valid example


# -- seconds -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("250us", 250e-6),
        ("250µs", 250e-6),  # MICRO SIGN
        ("250μs", 250e-6),  # GREEK SMALL LETTER MU
        ("1.5ms", 1.5e-3),
        ("2s", 2.0),
        ("100ns", 100e-9),
        ("1m", 60.0),
        ("1min", 60.0),
        ("5 min", 300.0),
        ("1h", 3600.0),
        ("0.5", 0.5),
        (3, 3.0),
        (0.25, 0.25),
        ("0", 0.0),
        ("1e-3s", 1e-3),
    ],
)
def test_parse_seconds(text: Any, expected: float) -> None:
    result = parse_seconds(text)
    assert result == pytest.approx(expected, rel=1e-15)
    assert type(result) is float


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("5 years", "unknown time unit"),
        ("5MS", "unknown time unit"),
        ("-1s", "negative"),
        ("", "empty"),
        (True, "boolean"),
        (float("inf"), "finite"),
        ("inf s", "number"),
        ("s", "number"),
    ],
)
def test_parse_seconds_rejects(text: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match="invalid duration") as info:
        parse_seconds(text)
    assert fragment in str(info.value)
    assert "'250us'" in str(info.value)


# -- rates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100k/s", 100e3),
        ("100K/s", 100e3),
        ("2M/s", 2e6),
        ("1G/s", 1e9),
        ("5/s", 5.0),
        ("1/ms", 1e3),
        ("10/us", 10e6),
        ("10/µs", 10e6),
        ("30/min", 0.5),
        ("3600/h", 1.0),
        ("100 k / s", 100e3),
        ("0.5/s", 0.5),
        (50, 50.0),
        ("50", 50.0),
        (2.5, 2.5),
    ],
)
def test_parse_rate(text: Any, expected: float) -> None:
    result = parse_rate(text)
    assert result == pytest.approx(expected, rel=1e-15)
    assert type(result) is float


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("100k", "needs a time unit"),
        ("100x/s", "unknown multiplier"),
        ("5m/s", "unknown multiplier"),  # milli is not a rate multiplier
        ("5/y", "unknown time unit"),
        ("5/", "unknown time unit"),
        ("5 per s", "unknown unit"),
        ("-5/s", "negative"),
        (False, "boolean"),
        ("", "empty"),
    ],
)
def test_parse_rate_rejects(text: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match="invalid rate") as info:
        parse_rate(text)
    assert fragment in str(info.value)
    assert "'100k/s'" in str(info.value)


# -- counts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1M", 10**6), ("64k", 64_000), ("64K", 64_000), ("2G", 2 * 10**9), (1000, 1000),
     ("1000", 1000), ("1.5k", 1500), ("1.25M", 1_250_000), (7.0, 7), ("0", 0)],
)
def test_parse_count(text: Any, expected: int) -> None:
    result = parse_count(text)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("1.0005k", "whole"), (1.5, "whole"), ("0.5", "whole"), ("64Ki", "unknown multiplier"),
     ("3 pages", "unknown multiplier"), ("-1k", "negative"), (True, "boolean"), ("", "empty")],
)
def test_parse_count_rejects(text: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match="invalid count") as info:
        parse_count(text)
    assert fragment in str(info.value)


# -- pydantic ------------------------------------------------------------------------


class _Spec(BaseModel):
    memory: Bytes
    every: Seconds
    rate: Rate
    keys: Count
    maybe: Rate | None = None


def test_annotated_types_parse_fields() -> None:
    spec = _Spec.model_validate(
        {"memory": "64GiB", "every": "250us", "rate": "100k/s", "keys": "1M", "maybe": "1/ms"}
    )
    assert spec.memory == 64 * GiB
    assert spec.every == pytest.approx(250e-6)
    assert spec.rate == 100e3
    assert spec.keys == 10**6
    assert spec.maybe == 1e3
    assert _Spec(memory=1, every=1, rate=1, keys=1).maybe is None


@pytest.mark.parametrize(
    ("field", "value", "example"),
    [("memory", "64GB/s", "'64GiB'"), ("every", "5 years", "'250us'"),
     ("rate", "100k", "'100k/s'"), ("keys", "1.5", "'64k'"), ("memory", True, "'64GiB'"),
     ("every", "-1s", "'250us'")],
)
def test_annotated_types_report_field_errors(field: str, value: Any, example: str) -> None:
    data: dict[str, Any] = {"memory": "1GiB", "every": "1s", "rate": "1/s", "keys": 1}
    data[field] = value
    with pytest.raises(ValidationError) as info:
        _Spec.model_validate(data)
    (error,) = info.value.errors()
    assert error["loc"] == (field,)
    assert repr(value) in error["msg"]
    assert example in error["msg"]


def test_json_schema_accepts_strings_and_numbers() -> None:
    schema = _Spec.model_json_schema()["properties"]
    types = {option["type"] for option in schema["memory"]["anyOf"]}
    assert types == {"integer", "string"}
    assert "64GiB" in schema["memory"]["examples"]
    assert {option["type"] for option in schema["every"]["anyOf"]} == {"number", "string"}
    # serialization keeps the base types
    out = _Spec.model_json_schema(mode="serialization")["properties"]
    assert out["memory"]["type"] == "integer"


# -- formatting ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(68719476736, "64 GiB"), (4096, "4 KiB"), (1536, "1.5 KiB"), (1000, "1000 B"), (0, "0 B"),
     (1, "1 B"), (MiB - 1, "1 MiB"), (1_500_000_000, "1.4 GiB"), (3 * TiB, "3 TiB"),
     (-2048, "-2 KiB"), (100 * MiB + 1, "100 MiB")],
)
def test_format_bytes(value: int, expected: str) -> None:
    assert format_bytes(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.00025, "250 µs"), (0, "0 s"), (2.0, "2 s"), (1.5e-3, "1.5 ms"), (100e-9, "100 ns"),
     (90, "1.5 min"), (7200, "2 h"), (0.0009999999, "1 ms"), (59.999, "1 min"),
     (12.345, "12.3 s"), (-0.5, "-500 ms")],
)
def test_format_seconds(value: float, expected: str) -> None:
    assert format_seconds(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(100_000, "100k/s"), (2e6, "2M/s"), (5, "5/s"), (0.5, "0.5/s"), (0, "0/s"),
     (999_999, "1M/s"), (3.5e9, "3.5G/s")],
)
def test_format_rate(value: float, expected: str) -> None:
    assert format_rate(value) == expected


def test_format_non_finite() -> None:
    assert format_seconds(math.inf) == "inf s"
    assert format_bytes(math.nan) == "nan B"


# -- round trips (hypothesis) --------------------------------------------------------

ROUNDING = 0.005  # three significant digits


@given(st.integers(min_value=0, max_value=1 << 60))
def test_bytes_format_parse_round_trip(n: int) -> None:
    assert parse_bytes(format_bytes(n)) == pytest.approx(n, rel=ROUNDING, abs=1)


@given(st.one_of(st.just(0.0), st.floats(min_value=1e-12, max_value=1e9)))
def test_seconds_format_parse_round_trip(s: float) -> None:
    assert parse_seconds(format_seconds(s)) == pytest.approx(s, rel=ROUNDING)


@given(st.one_of(st.just(0.0), st.floats(min_value=1e-6, max_value=1e15)))
def test_rate_format_parse_round_trip(r: float) -> None:
    assert parse_rate(format_rate(r)) == pytest.approx(r, rel=ROUNDING)


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(["KiB", "MiB", "GiB", "kB", "MB"]))
def test_whole_multiples_are_exact(n: int, unit: str) -> None:
    factor = {"KiB": KiB, "MiB": MiB, "GiB": GiB, "kB": 10**3, "MB": 10**6}[unit]
    assert parse_bytes(f"{n}{unit}") == n * factor
    assert parse_count(f"{n}k") == n * 1000


# -- hostile text: never inf, never a huge integer built -------------------------------------


@pytest.mark.parametrize(("parse", "text"), [
    (parse_seconds, "1e400s"), (parse_seconds, "1e400"), (parse_seconds, "1e306h"),
    (parse_rate, "1e400/s"), (parse_rate, "1.7e308/ms"),
])
def test_results_too_large_for_a_float_are_refused(parse: Any, text: str) -> None:
    with pytest.raises(ValueError, match="too large"):
        parse(text)


def test_quantity_text_is_bounded() -> None:
    with pytest.raises(ValueError, match="exponent"):
        parse_bytes("1e5000KiB")
    with pytest.raises(ValueError, match="longer than"):
        parse_seconds("0" * 100 + "1s")
    with pytest.raises(ValueError, match="longer than") as caught:
        parse_rate("x" * 10_000)
    assert len(str(caught.value)) < 200  # the value is shown cut short
