"""Tests for cowsim.sim.metrics: percentiles, bucketing, scopes, labels, determinism, CSV."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cowsim.sim.metrics import (
    BUCKET_EDGES,
    DEFAULT_BOUNDS,
    MAX_RELATIVE_ERROR,
    QUANTILES,
    Recorder,
    bucket_index,
    read_series_csv,
)

PCTS = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999}


def nearest_rank(values: np.ndarray, q: Fraction) -> float:
    """Reference: the ceil(q n)-th smallest value (1-based), at least the first."""
    s = np.sort(values)
    return float(s[max(1, math.ceil(q * len(s))) - 1])


# --- percentiles ----------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 99, 100, 101, 999, 1000, 1001, 12345])
def test_percentiles_are_nearest_rank_and_match_numpy_inverted_cdf(n: int) -> None:
    rng = np.random.default_rng(n)
    values = rng.lognormal(mean=-7.0, sigma=1.5, size=n)
    rec = Recorder()
    rec.observe("lat_seconds", values)
    s = rec.summary("lat_seconds")
    for key, q in QUANTILES:
        assert s[key] == nearest_rank(values, q)
        # np.quantile, not np.percentile: 0.999 * 100 / 100 is 0.9990000000000001 in floats,
        # which moves np.percentile's rank up by one at n = 1000.
        assert s[key] == float(np.quantile(values, PCTS[key], method="inverted_cdf"))
    assert s["max"] == values.max()
    assert s["min"] == values.min()
    assert s["count"] == n
    assert s["sum"] == pytest.approx(values.sum(), rel=1e-12)
    assert s["mean"] == pytest.approx(values.mean(), rel=1e-12)


def test_percentiles_on_a_known_array() -> None:
    rec = Recorder()
    rec.observe("x", np.arange(1, 1001, dtype=np.float64))  # 1..1000
    s = rec.summary("x")
    assert (s["p50"], s["p90"], s["p99"], s["p999"], s["max"]) == (500.0, 900.0, 990.0, 999.0, 1000.0)
    rec.observe("y", [3.0, 1.0, 2.0])
    s = rec.summary("y")
    # ceil(0.5*3) = 2nd smallest; every tail percentile of 3 samples is the maximum.
    assert (s["p50"], s["p90"], s["p99"], s["p999"]) == (2.0, 3.0, 3.0, 3.0)
    assert rec.quantile("x", 0.25) == 250.0
    assert rec.quantile("x", 0) == 1.0
    assert rec.quantile("x", 1) == 1000.0


def test_p999_of_fewer_than_1000_samples_is_the_max() -> None:
    rec = Recorder()
    values = np.random.default_rng(1).exponential(size=1000)
    rec.observe("x", values)
    s = rec.summary("x")
    assert s["p999"] == np.sort(values)[998] < s["max"]
    rec.observe("y", values[:999])
    assert rec.summary("y")["p999"] == rec.summary("y")["max"]


def test_scalar_and_batch_observations_agree() -> None:
    values = np.random.default_rng(2).gamma(2.0, 1e-3, size=500)
    a, b = Recorder(), Recorder()
    for v in values:
        a.observe("x", float(v))
    b.observe("x", values)
    sa, sb = a.summary("x"), b.summary("x")
    assert {k: v for k, v in sa.items() if k not in ("sum", "mean")} == {
        k: v for k, v in sb.items() if k not in ("sum", "mean")
    }
    assert sa["sum"] == pytest.approx(sb["sum"], rel=1e-12)


def test_empty_histograms() -> None:
    rec = Recorder()
    expected = {
        "p50": 0.0,
        "p90": 0.0,
        "p99": 0.0,
        "p999": 0.0,
        "max": 0.0,
        "count": 0,
        "sum": 0.0,
        "mean": 0.0,
        "min": 0.0,
    }
    assert rec.summary("never_seconds") == expected
    assert rec.summary("never_seconds", process="nobody") == expected
    assert rec.quantile("never_seconds", 0.99) == 0.0
    rec.observe("fork_pause_seconds", np.array([]))
    assert rec.summary("fork_pause_seconds") == expected
    assert rec.to_dict()["histograms"] == {"fork_pause_seconds": expected}
    assert rec.buckets("fork_pause_seconds")[-1] == (math.inf, 0)
    assert rec.is_exact("fork_pause_seconds")


def test_observe_rejects_bad_values() -> None:
    rec = Recorder()
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="finite and >= 0"):
            rec.observe("x", bad)
        with pytest.raises(ValueError, match="finite and >= 0"):
            rec.observe("x", np.array([1.0, bad]))
    assert rec.summary("x")["count"] == 0
    with pytest.raises(ValueError, match="metric name"):
        rec.observe("bad name", 1.0)
    with pytest.raises(ValueError, match="quantile"):
        rec.quantile("x", 1.5)


def test_observe_copies_the_callers_array() -> None:
    rec = Recorder()
    values = np.array([1.0, 2.0, 3.0])
    rec.observe("x", values)
    values[:] = 100.0
    assert rec.summary("x")["max"] == 3.0


def test_vectorized_observe_of_a_million_values() -> None:
    rec = Recorder()
    values = np.random.default_rng(3).lognormal(mean=-9.0, sigma=1.0, size=1_000_000)
    rec.observe("request_latency_seconds", values, process="web")
    s = rec.summary("request_latency_seconds", process="web")
    assert s["count"] == 1_000_000
    assert s["p99"] == nearest_rank(values, Fraction(99, 100))
    assert rec.is_exact("request_latency_seconds")


# --- switching to buckets ---------------------------------------------------------------


def test_max_relative_error_is_within_one_percent() -> None:
    assert 0.004 < MAX_RELATIVE_ERROR < 0.0051


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    mu=st.floats(-14.0, 3.0),
    sigma=st.floats(0.1, 2.5),
    n=st.integers(200, 20_000),
    batches=st.integers(1, 5),
)
def test_bucketed_percentiles_within_one_percent(
    seed: int, mu: float, sigma: float, n: int, batches: int
) -> None:
    values = np.random.default_rng(seed).lognormal(mean=mu, sigma=sigma, size=n)
    bucketed = Recorder(max_exact_samples=n // 3)
    for chunk in np.array_split(values, batches):
        bucketed.observe("lat_seconds", chunk)
    assert not bucketed.is_exact("lat_seconds")
    s = bucketed.summary("lat_seconds")
    for key, q in QUANTILES:
        exact = nearest_rank(values, q)
        if 1e-9 <= exact < 1e4:  # the bucketed range
            assert abs(s[key] - exact) <= 0.01 * exact, key
            assert abs(s[key] - exact) <= MAX_RELATIVE_ERROR * exact * (1 + 1e-9), key
    assert s["count"] == n
    assert s["max"] == values.max()
    assert s["min"] == values.min()
    assert s["sum"] == pytest.approx(values.sum(), rel=1e-12)


def test_switch_happens_above_the_limit_and_is_independent_of_batching() -> None:
    values = np.random.default_rng(4).lognormal(mean=-6.0, sigma=2.0, size=10_000)
    at_limit = Recorder(max_exact_samples=10_000)
    at_limit.observe("x", values)
    assert at_limit.is_exact("x")
    at_limit.observe("x", 0.5)
    assert not at_limit.is_exact("x")

    one = Recorder(max_exact_samples=1000)
    one.observe("x", values)
    many = Recorder(max_exact_samples=1000)
    for chunk in np.array_split(values, 37):
        many.observe("x", chunk)
    scalars = Recorder(max_exact_samples=1000)
    for v in values[:500]:
        scalars.observe("x", float(v))
    scalars.observe("x", values[500:])
    for other in (many, scalars):
        s1, s2 = one.summary("x"), other.summary("x")
        for key in ("p50", "p90", "p99", "p999", "max", "min", "count"):
            assert s1[key] == s2[key], key
        assert one.buckets("x") == other.buckets("x")


def test_always_bucketed_and_out_of_range_values() -> None:
    rec = Recorder(max_exact_samples=0)
    rec.observe("x", [0.0, 1e-12, 5e-10, 2e4, 3e4])
    assert not rec.is_exact("x")
    s = rec.summary("x")
    assert (s["min"], s["max"], s["count"]) == (0.0, 3e4, 5)
    assert s["p50"] <= 1e-9  # underflow bucket: reported within [min, 1 ns)
    assert s["p90"] == 3e4  # the top rank is the exact maximum
    assert 1e4 <= rec.quantile("x", 0.8) <= 3e4  # overflow bucket is clamped to the maximum


# --- Prometheus-style buckets -----------------------------------------------------------


def test_buckets_exact() -> None:
    rec = Recorder()
    rec.observe("x", [1e-6, 2e-6, 1e-3, 0.5, 20.0])
    got = rec.buckets("x", bounds=[1e-6, 1e-3, 1.0])
    assert got == [(1e-6, 1), (1e-3, 3), (1.0, 4), (math.inf, 5)]
    default = rec.buckets("x")
    assert [le for le, _ in default] == [*DEFAULT_BOUNDS, math.inf]
    counts = [c for _, c in default]
    assert counts == sorted(counts)
    assert counts[-1] == 5
    assert DEFAULT_BOUNDS[0] == 1e-6
    assert DEFAULT_BOUNDS[-1] == 10.0
    with pytest.raises(ValueError, match="increasing"):
        rec.buckets("x", bounds=[1.0, 0.5])


def test_buckets_bucketed_close_to_exact() -> None:
    values = np.random.default_rng(5).lognormal(mean=-7.0, sigma=2.0, size=50_000)
    exact, bucketed = Recorder(), Recorder(max_exact_samples=10)
    exact.observe("x", values)
    bucketed.observe("x", values)
    for (le1, c1), (le2, c2) in zip(exact.buckets("x"), bucketed.buckets("x"), strict=True):
        assert le1 == le2
        # only values within one fine bucket (~1%) of a bound may move
        near = np.count_nonzero(np.abs(values - le1) <= 0.011 * le1) if math.isfinite(le1) else 0
        assert abs(c1 - c2) <= near


# --- counters, scopes, gauges -----------------------------------------------------------


def test_counters_with_labels_and_processes() -> None:
    rec = Recorder()
    rec.count("cow_copies_total", 3, process="a", cause="fork")
    rec.count("cow_copies_total", 2, process="b", cause="fork")
    rec.count("cow_copies_total", 1, process="b", cause="unshare")
    rec.count("cow_copies_total", np.int64(4), cause="zero_page")
    rec.count("page_faults_total")
    rec.count("violations_total", kind="leak", kernel_era="5_8")

    assert rec.counter("cow_copies_total") == 10
    assert rec.counter("cow_copies_total", process="a") == 3
    assert rec.counter("cow_copies_total", process="b") == 3
    assert rec.counter("cow_copies_total", cause="fork") == 5
    assert rec.counter("cow_copies_total", process="b", cause="fork") == 2
    assert rec.counter("page_faults_total") == 1
    assert rec.counter("page_faults_total", process="a") == 0
    assert rec.counter("nothing_total") == 0
    assert rec.by_label("cow_copies_total", "cause") == {"fork": 5, "unshare": 1, "zero_page": 4}
    assert rec.by_label("cow_copies_total", "cause", process="b") == {"fork": 2, "unshare": 1}
    assert rec.labelled("violations_total") == {(("kernel_era", "5_8"), ("kind", "leak")): 1}

    d = rec.to_dict()
    assert d["counters"] == {"cow_copies_total": 10, "page_faults_total": 1, "violations_total": 1}
    assert d["counters_by_label"]["cow_copies_total"] == {"cause": {"fork": 5, "unshare": 1, "zero_page": 4}}
    assert d["counters_by_label"]["violations_total"] == {"kernel_era": {"5_8": 1}, "kind": {"leak": 1}}
    assert d["counters_by_labelset"]["violations_total"] == [
        {"labels": {"kernel_era": "5_8", "kind": "leak"}, "value": 1}
    ]
    assert d["processes"]["a"]["counters"] == {"cow_copies_total": 3}
    assert d["processes"]["b"]["counters_by_label"] == {
        "cow_copies_total": {"cause": {"fork": 2, "unshare": 1}}
    }
    assert rec.processes() == ["a", "b"]


def test_counter_validation_and_bounded_labels() -> None:
    rec = Recorder(max_label_sets=3)
    with pytest.raises(ValueError, match=">= 0"):
        rec.count("x_total", -1)
    with pytest.raises(TypeError):
        rec.count("x_total", 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label name"):
        rec.count("x_total", 1, **{"bad-label": "v"})
    with pytest.raises(ValueError, match="reserved"):
        rec.count("x_total", __name__="v")
    with pytest.raises(ValueError, match="process"):
        rec.count("x_total", process="")
    for cause in ("a", "b", "c"):
        rec.count("x_total", cause=cause)
    rec.count("x_total", cause="a")  # a known combination is always fine
    with pytest.raises(ValueError, match="more than 3 label combinations"):
        rec.count("x_total", cause="d")
    assert rec.counter("x_total") == 4


def test_histograms_per_process_are_separate_and_add_up_to_the_run() -> None:
    rec = Recorder()
    a = np.array([1.0, 2.0, 3.0])
    b = np.array([10.0, 20.0])
    rec.observe("lat_seconds", a, process="a")
    rec.observe("lat_seconds", b, process="b")
    rec.observe("lat_seconds", 100.0)
    assert rec.summary("lat_seconds", process="a")["max"] == 3.0
    assert rec.summary("lat_seconds", process="b")["min"] == 10.0
    run = rec.summary("lat_seconds")
    assert (run["count"], run["min"], run["max"], run["sum"]) == (6, 1.0, 100.0, 136.0)
    assert rec.histogram_names() == ["lat_seconds"]
    assert rec.histogram_names(process="a") == ["lat_seconds"]
    assert rec.summary("lat_seconds", process="c")["count"] == 0


def test_gauge_max() -> None:
    rec = Recorder()
    for v in (10, 30, 20):
        rec.gauge_max("memory_peak_bytes", v)
    rec.gauge_max("memory_peak_bytes", 50, process="a")
    rec.gauge_max("ratio", 0.25)
    rec.gauge_max("ratio", 0.5)
    assert rec.gauge("memory_peak_bytes") == 30  # per-process gauges do not roll up
    assert rec.gauge("memory_peak_bytes", process="a") == 50
    assert rec.gauge("unknown") == 0
    d = rec.to_dict()
    assert d["gauges"] == {"memory_peak_bytes": 30, "ratio": 0.5}
    assert isinstance(d["gauges"]["memory_peak_bytes"], int)
    assert d["processes"]["a"]["gauges"] == {"memory_peak_bytes": 50}
    with pytest.raises(ValueError, match="finite"):
        rec.gauge_max("ratio", math.nan)


# --- determinism ------------------------------------------------------------------------


def _populate(rec: Recorder, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i, proc in enumerate(("web", "cache", "batch")):
        rec.observe("request_latency_seconds", rng.lognormal(-8, 1.5, size=5000), process=proc)
        rec.observe("fork_pause_seconds", float(rng.exponential(1e-3)), process=proc)
        rec.count("cow_copies_total", int(rng.integers(0, 1000)), process=proc, cause="fork")
        rec.count("page_faults_total", 7 * i, process=proc)
        rec.gauge_max("memory_peak_bytes", int(rng.integers(1, 2**40)), process=proc)
        rec.sample("rss_bytes", 0.1 * i, float(rng.integers(0, 2**30)), process=proc)
    rec.gauge_max("memory_peak_bytes", 2**41)
    rec.observe("io_latency_seconds", rng.lognormal(-5, 1, size=3000))


def test_to_dict_bytes_are_deterministic() -> None:
    dumps = set()
    for _ in range(3):
        rec = Recorder(max_exact_samples=4000)
        _populate(rec, seed=42)
        dumps.add(json.dumps(rec.to_dict(include_buckets=True), sort_keys=True))
    assert len(dumps) == 1
    d = json.loads(dumps.pop())
    assert set(d) == {
        "counters",
        "counters_by_label",
        "counters_by_labelset",
        "histograms",
        "gauges",
        "processes",
    }
    assert set(d["histograms"]["request_latency_seconds"]) >= {
        "p50",
        "p90",
        "p99",
        "p999",
        "max",
        "count",
        "sum",
        "mean",
        "min",
        "buckets",
    }
    # insertion order does not matter either: to_dict sorts its keys itself
    rec = Recorder(max_exact_samples=4000)
    _populate(rec, seed=42)
    assert json.dumps(rec.to_dict()) == json.dumps(rec.to_dict(), sort_keys=True)
    other = Recorder(max_exact_samples=4000)
    _populate(other, seed=43)
    assert json.dumps(other.to_dict(), sort_keys=True) != json.dumps(rec.to_dict(), sort_keys=True)


def test_to_dict_floats_are_rounded() -> None:
    rec = Recorder()
    rec.observe("x", [0.1, 0.2])
    h = rec.to_dict()["histograms"]["x"]
    assert h["sum"] == 0.3  # 0.30000000000000004 rounded to 12 significant digits
    assert h["count"] == 2
    assert isinstance(h["count"], int)


# --- time series ------------------------------------------------------------------------


def test_series_round_trip_through_csv(tmp_path: Path) -> None:
    rec = Recorder()
    rng = np.random.default_rng(6)
    times = np.cumsum(rng.exponential(0.01, size=1000))
    values = rng.normal(size=1000) * 1e9
    for t, v in zip(times, values, strict=True):
        rec.sample("memory_used_bytes", t, v)
    rec.sample("shared_pages", 0.0, 10, process="web/1")
    rec.sample("shared_pages", 0.0, 11, process="web/1")  # equal times are fine
    rec.sample("shared_pages", 1.0, 5, process="..")
    assert rec.series_names() == ["memory_used_bytes"]
    assert rec.series_names(process="web/1") == ["shared_pages"]

    paths = rec.write_series(tmp_path)
    assert paths == [
        tmp_path / "memory_used_bytes.csv",
        tmp_path / "processes" / "%2E%2E" / "shared_pages.csv",
        tmp_path / "processes" / "web%2F1" / "shared_pages.csv",
    ]
    t2, v2 = read_series_csv(paths[0])
    np.testing.assert_array_equal(t2, times)
    np.testing.assert_array_equal(v2, values)
    assert paths[2].read_text() == "time_s,value\n0.0,10.0\n0.0,11.0\n"
    st_, sv = rec.series("shared_pages", process="web/1")
    np.testing.assert_array_equal(st_, [0.0, 0.0])
    np.testing.assert_array_equal(sv, [10.0, 11.0])
    assert not list(tmp_path.rglob("*.tmp"))

    # writing again gives the same bytes
    before = {p: p.read_bytes() for p in paths}
    rec.write_series(tmp_path)
    assert before == {p: p.read_bytes() for p in paths}


def test_series_validation_and_empty() -> None:
    rec = Recorder()
    t, v = rec.series("nothing")
    assert t.size == 0
    assert v.size == 0
    rec.sample("x", 1.0, 1.0)
    with pytest.raises(ValueError, match="before the previous sample"):
        rec.sample("x", 0.5, 1.0)
    with pytest.raises(ValueError, match="finite"):
        rec.sample("x", 2.0, math.inf)
    # per-process series do not affect the run's
    rec.sample("x", 0.0, 3.0, process="p")
    np.testing.assert_array_equal(rec.series("x")[0], [1.0])


def test_read_series_csv_rejects_other_files(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="header"):
        read_series_csv(p)


@st.composite
def _bucket_probe(draw: st.DrawFn) -> float:
    """A float anywhere, or on, just below or just above a bucket edge."""
    if draw(st.booleans()):
        return draw(st.floats(min_value=0.0, allow_nan=False, allow_infinity=True))
    edge = float(BUCKET_EDGES[draw(st.integers(0, BUCKET_EDGES.size - 1))])
    return float(draw(st.sampled_from([edge, np.nextafter(edge, 0.0), np.nextafter(edge, np.inf)])))


@given(st.lists(_bucket_probe(), min_size=1, max_size=50))
def test_bucket_index_equals_a_binary_search(values: list[float]) -> None:
    array = np.array(values, dtype=np.float64)
    expected = np.searchsorted(BUCKET_EDGES, array, side="right")
    assert bucket_index(array).tolist() == expected.tolist()


def test_bucket_index_on_every_edge_and_its_neighbours() -> None:
    probes = np.concatenate([BUCKET_EDGES, np.nextafter(BUCKET_EDGES, 0.0),
                             np.nextafter(BUCKET_EDGES, np.inf), [0.0, 5e-324, 1e300, np.inf]])
    assert bucket_index(probes).tolist() == np.searchsorted(BUCKET_EDGES, probes, side="right").tolist()
