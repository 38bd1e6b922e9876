"""Metrics in simulated time: counters, histograms, gauges and time series.

A :class:`Recorder` is what workloads write to while a simulation runs and what
a run reads when it builds its result.  It knows nothing of Prometheus (the
service exports from it later), of wall-clock time, or of random numbers: every
time and duration it is given is *simulated* seconds, and the same sequence of
calls always produces the same numbers and the same JSON bytes.

Four kinds of metric
--------------------

*Counters* (:meth:`Recorder.count`) only go up: COW copies, page faults, TLB
shootdowns.  A counter may carry a few labels (``cause="fork"``); the set of
label combinations per counter is bounded (``max_label_sets``) because every
combination becomes one Prometheus time series.

*Histograms* (:meth:`Recorder.observe`) hold distributions of durations: fault
latency, request latency, fork pause.  What matters about a latency
distribution is its tail, so a summary reports percentiles, not just a mean.

*Gauges* (:meth:`Recorder.gauge_max`) keep the largest value seen, e.g.
``memory_peak_bytes``.

*Time series* (:meth:`Recorder.sample`) are ``(time_s, value)`` points — memory
in use, shared versus exclusive pages — written out as CSV files for plotting.

Scopes: the run and its processes
---------------------------------

Every call may name a ``process``.  Counters and histograms are *additive*: an
event in process ``web`` is also an event of the run, so a call with
``process="web"`` updates both the run-wide metric and ``web``'s own.  Gauges
and time series are *point values* and are not additive (the run's memory peak
is the peak of the sum, not the largest process peak), so a call with a process
updates only that process's gauge or series; record the run-wide value with
``process=None``.

Percentiles: definition
-----------------------

Percentiles use the *nearest-rank* definition: the q-quantile of n samples is
the k-th smallest sample with ``k = max(1, ceil(q * n))``.  It is always a value
that was actually observed (no interpolation between two latencies that never
happened), it equals ``numpy.quantile(a, q, method="inverted_cdf")``, and ``k``
is computed in exact rational arithmetic so that ``0.999 * 1000`` is 999, not
999.0000000000001.

What p999 means for a sample of n: it is the value that at most 0.1% of the
samples exceed.  With n = 1,000 samples it is the 999th smallest (one sample
lies above it); with n <= 1,000 samples ``ceil(0.999 n) = n``, so p999 *is* the
maximum and says nothing more than ``max``.  A tail percentile 1 - 1/m needs
well over m samples before it is a statement about the distribution rather than
about the single worst sample: p99 wants thousands of observations, p999 tens
of thousands.  The summary carries ``count`` so readers can judge this.

Exact samples, then log buckets
-------------------------------

Up to ``max_exact_samples`` observations (default 2,000,000, i.e. 16 MB of
float64) a histogram keeps every value in a growable numpy buffer (doubling
capacity, amortized O(1) per value, no per-value Python work), and its
percentiles are exact.  A long simulation can observe far more than that, so
when the next batch would exceed the limit the histogram switches, once and
for good, to fixed logarithmic buckets (HDR-histogram style): 230 buckets per
decade from 1 ns to 10,000 s (2,990 buckets plus an underflow bucket for
[0, 1 ns) and an overflow bucket for >= 10,000 s; 24 KB whatever the number of
samples).  Neighbouring bucket edges differ by the factor ``g = 10**(1/230)``
(about 1.01), and a percentile is reported as the geometric midpoint of the
bucket holding the nearest-rank sample, so its relative error is at most
``sqrt(g) - 1`` ≈ 0.5% inside the 1 ns – 10,000 s range.  ``count``, ``sum``,
``min`` and ``max`` stay exact in both modes, and the top rank (``k = n``) is
always reported as the exact maximum.

The switch is deterministic: it depends only on the number of samples, and
the bucket counts after it depend only on the multiset of values, not on how
they were split into batches.  :meth:`Recorder.is_exact` tells which mode a
histogram is in.

Determinism of the JSON
-----------------------

:meth:`Recorder.to_dict` returns plain dicts, lists, ints and floats.  Floats are
rounded to 12 significant digits (``float(f"{x:.12g}")``) so that a last-bit
difference in a platform's math library cannot change the bytes of a result;
``json.dumps(recorder.to_dict(), sort_keys=True)`` is byte-identical for
identical inputs.
"""

from __future__ import annotations

import math
import operator
import os
import re
import tempfile
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, SupportsIndex, TypeVar, cast
from urllib.parse import quote

import numpy as np
import numpy.typing as npt

__all__ = [
    "BUCKETS_PER_DECADE",
    "BUCKET_EDGES",
    "DEFAULT_BOUNDS",
    "DEFAULT_MAX_EXACT_SAMPLES",
    "DEFAULT_MAX_LABEL_SETS",
    "MAX_RELATIVE_ERROR",
    "QUANTILES",
    "Recorder",
    "bucket_index",
    "read_series_csv",
]

_T = TypeVar("_T")
FloatArray = npt.NDArray[np.float64]
LabelSet = tuple[tuple[str, str], ...]
"""A counter's labels, as sorted ``(name, value)`` pairs: ``(("cause", "fork"),)``."""

DEFAULT_MAX_EXACT_SAMPLES = 2_000_000
DEFAULT_MAX_LABEL_SETS = 100

QUANTILES: tuple[tuple[str, Fraction], ...] = (
    ("p50", Fraction(1, 2)),
    ("p90", Fraction(9, 10)),
    ("p99", Fraction(99, 100)),
    ("p999", Fraction(999, 1000)),
)
"""The percentiles every summary reports, as exact fractions."""

# --- the fixed log buckets ----------------------------------------------------------

BUCKETS_PER_DECADE = 230
_LOW_DECADE, _HIGH_DECADE = -9, 4  # 1 ns .. 10,000 s
_GROWTH = 10.0 ** (1.0 / BUCKETS_PER_DECADE)
MAX_RELATIVE_ERROR = math.sqrt(_GROWTH) - 1.0
"""Worst relative error of a bucketed percentile inside 1 ns – 10,000 s (≈ 0.50%)."""


def _make_edges() -> FloatArray:
    # Each decade starts at an exactly parsed power of ten, so the decade edges
    # are the float literals 1e-9, 1e-8, ... and only the sub-decade steps go
    # through pow().
    steps = [10.0 ** (j / BUCKETS_PER_DECADE) for j in range(BUCKETS_PER_DECADE)]
    edges = [float(f"1e{d}") * s for d in range(_LOW_DECADE, _HIGH_DECADE) for s in steps]
    edges.append(float(f"1e{_HIGH_DECADE}"))
    out = np.array(edges, dtype=np.float64)
    if not (np.diff(out) > 0).all():  # pragma: no cover - a broken libm
        raise RuntimeError("histogram bucket edges are not strictly increasing")
    return out


_EDGES = _make_edges()
"""Bucket edges e_0 = 1 ns < e_1 < ... < e_B = 10,000 s."""
_EDGES.flags.writeable = False
BUCKET_EDGES = _EDGES
"""The histograms' fine bucket edges, seconds (read-only)."""
_NUM_BUCKETS = _EDGES.size + 1
"""Bucket 0 is [0, e_0); bucket i (1 <= i <= B) is [e_(i-1), e_i); bucket B+1 is [e_B, inf)."""


def _make_representatives() -> FloatArray:
    reps = np.empty(_NUM_BUCKETS, dtype=np.float64)
    reps[0] = _EDGES[0] / 2.0
    reps[1:-1] = np.sqrt(_EDGES[:-1] * _EDGES[1:])  # geometric midpoints (IEEE sqrt: exact rounding)
    reps[-1] = np.inf  # clamped to the exact maximum when used
    return reps


_REPS = _make_representatives()


def bucket_index(values: FloatArray) -> npt.NDArray[np.int64]:
    """Each value's bucket: how many edges are <= it (``np.searchsorted(_EDGES, values,
    side="right")``), computed from the logarithm — the edges are 230 per decade — and
    then corrected by one step where rounding put a value next to its edge on the wrong
    side.  Twice as fast as the binary search, and equal to it for every float."""
    with np.errstate(divide="ignore"):  # log10(0) = -inf: bucket 0
        guess = np.floor((np.log10(values) - _LOW_DECADE) * BUCKETS_PER_DECADE)
    index = np.clip(guess, -1, _EDGES.size - 1).astype(np.int64) + 1
    index -= (index > 0) & (_EDGES[np.maximum(index - 1, 0)] > values)
    index += (index < _EDGES.size) & (_EDGES[np.minimum(index, _EDGES.size - 1)] <= values)
    corrected: npt.NDArray[np.int64] = index
    return corrected


def _bucket_counts(values: FloatArray) -> npt.NDArray[np.int64]:
    return np.bincount(bucket_index(values), minlength=_NUM_BUCKETS).astype(np.int64, copy=False)


_QUEUED_VALUES = 1 << 16
"""Observations a histogram queues before absorbing them."""


def _default_bounds() -> tuple[float, ...]:
    return (*(float(f"{m}e{d}") for d in range(-6, 1) for m in ("1", "2.5", "5")), 10.0)


DEFAULT_BOUNDS: tuple[float, ...] = _default_bounds()
"""Prometheus bucket bounds ("le"), in seconds: 1, 2.5, 5 per decade from 1 µs to 10 s."""

# --- names ----------------------------------------------------------------------------

_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


def _check_name(name: str, what: str = "metric name") -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{what} {name!r} must match [a-zA-Z_][a-zA-Z0-9_]*")


def _check_process(process: str | None) -> None:
    if process is not None and (not isinstance(process, str) or not process):
        raise ValueError(f"process must be a non-empty string or None, got {process!r}")


def _rank(q: Fraction, n: int) -> int:
    """Nearest rank (1-based) of quantile ``q`` among ``n`` samples: max(1, ceil(q n))."""
    return max(1, math.ceil(q * n))


def _as_fraction(q: float | Fraction) -> Fraction:
    frac = q if isinstance(q, Fraction) else Fraction(repr(float(q)))
    if not 0 <= frac <= 1:
        raise ValueError(f"quantile must lie in [0, 1], got {q!r}")
    return frac


def _sort_keys(obj: _T) -> _T:
    """The same JSON-able value with every dict's keys in sorted order."""
    if isinstance(obj, dict):
        return cast("_T", {k: _sort_keys(obj[k]) for k in sorted(obj)})
    if isinstance(obj, list):
        return cast("_T", [_sort_keys(v) for v in obj])
    return obj


def _det(x: float) -> float:
    """Round to 12 significant digits (and turn -0.0 into 0.0) for stable JSON."""
    return float(f"{x:.12g}") + 0.0


# --- one histogram --------------------------------------------------------------------


class _Histogram:
    """Exact samples in a doubling buffer until ``max_exact``, then log-bucket counts.

    Observations are queued and absorbed in batches (at most :data:`_QUEUED_VALUES`
    values wait, and every read absorbs first): a workload observes a few values a
    tick, and one concatenation per batch is cheaper than a copy and a bucket pass per
    call.  ``count``, ``min`` and ``max`` are kept at once; the result does not depend
    on the batching except through the float rounding of ``sum``, which is the same for
    the same sequence of calls.
    """

    __slots__ = ("_buf", "_cache", "_counts", "_n", "_queue", "_queued", "_sum", "count", "max",
                 "max_exact", "min")

    def __init__(self, max_exact: int) -> None:
        self.max_exact = max_exact
        self.count = 0
        self._sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self._buf: FloatArray = np.empty(0, dtype=np.float64)
        self._n = 0  # valid prefix of _buf
        self._counts: npt.NDArray[np.int64] | None = None
        self._queue: list[FloatArray] = []
        self._queued = 0
        self._cache: dict[str, float] | None = None

    @property
    def exact(self) -> bool:
        self._absorb()
        return self._counts is None

    @property
    def sum(self) -> float:
        self._absorb()
        return self._sum

    def _reserve(self, extra: int) -> None:
        need = self._n + extra
        if need > self._buf.size:
            cap = min(max(2 * self._buf.size, need, 1024), self.max_exact)
            buf = np.empty(cap, dtype=np.float64)
            buf[: self._n] = self._buf[: self._n]
            self._buf = buf

    def _switch_to_buckets(self) -> None:
        self._counts = _bucket_counts(self._buf[: self._n])
        self._buf = np.empty(0, dtype=np.float64)
        self._n = 0

    def add_scalar(self, v: float) -> None:
        self.add_array(np.array([v]), v, v)

    def add_array(self, values: FloatArray, lo: float, hi: float) -> None:
        """Queue ``values`` (a private copy: the caller's array is not kept), whose minimum
        and maximum are ``lo`` and ``hi``."""
        self._cache = None
        self.count += values.size
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self._queue.append(values)
        self._queued += values.size
        if self._queued >= _QUEUED_VALUES:
            self._absorb()

    def _absorb(self) -> None:
        """Take the queued values into the exact buffer or the buckets."""
        if not self._queue:
            return
        values = self._queue[0] if len(self._queue) == 1 else np.concatenate(self._queue)
        self._queue.clear()
        self._queued = 0
        k = values.size
        self._sum += float(values.sum())
        if self._counts is None and self._n + k > self.max_exact:
            self._switch_to_buckets()
        if self._counts is None:
            self._reserve(k)
            self._buf[self._n : self._n + k] = values
            self._n += k
        else:
            self._counts += _bucket_counts(values)

    # -- reading --

    def quantiles(self, qs: Sequence[Fraction]) -> list[float]:
        n = self.count
        if n == 0:
            return [0.0] * len(qs)
        ranks = [_rank(q, n) for q in qs]
        self._absorb()
        if self._counts is None:
            data = self._buf[: self._n]
            kth = sorted({r - 1 for r in ranks})
            part = np.partition(data, kth)
            return [float(part[r - 1]) for r in ranks]
        cum = np.cumsum(self._counts)
        out = []
        for r in ranks:
            if r == n:
                out.append(self.max)
            elif r == 1:
                out.append(self.min)
            else:
                b = int(np.searchsorted(cum, r, side="left"))
                out.append(float(min(max(_REPS[b], self.min), self.max)))
        return out

    def summary(self) -> dict[str, float]:
        if self._cache is None:
            if self.count == 0:
                s: dict[str, float] = {name: 0.0 for name, _ in QUANTILES}
                s.update(max=0.0, count=0, sum=0.0, mean=0.0, min=0.0)
            else:
                qs = self.quantiles([q for _, q in QUANTILES])
                s = {name: v for (name, _), v in zip(QUANTILES, qs, strict=True)}
                s.update(
                    max=self.max, count=self.count, sum=self.sum, mean=self.sum / self.count, min=self.min
                )
            self._cache = s
        return dict(self._cache)

    def cumulative(self, bounds: FloatArray) -> npt.NDArray[np.int64]:
        """Counts of values <= each bound (Prometheus ``le`` semantics), then the total."""
        self._absorb()
        if self._counts is None:
            idx = np.searchsorted(bounds, self._buf[: self._n], side="left")
            per = np.bincount(idx, minlength=bounds.size + 1)
        else:
            # Each fine bucket goes to the first bound >= its representative value, so a
            # value within one fine bucket (≈1%) of a bound may land on the wrong side.
            reps = np.clip(_REPS, self.min, self.max) if self.count else _REPS
            idx = np.searchsorted(bounds, reps, side="left")
            per = np.bincount(idx, weights=self._counts, minlength=bounds.size + 1)
        return np.cumsum(per).astype(np.int64)


# --- one time series ------------------------------------------------------------------


class _Series:
    __slots__ = ("times", "values")

    def __init__(self) -> None:
        self.times = array("d")
        self.values = array("d")

    def append(self, name: str, t: float, v: float) -> None:
        if self.times and t < self.times[-1]:
            raise ValueError(
                f"series {name!r}: time_s {t!r} is before the previous sample at {self.times[-1]!r}"
            )
        self.times.append(t)
        self.values.append(v)


# --- one scope (the run, or one process) ----------------------------------------------


@dataclass
class _Scope:
    counters: dict[str, int] = field(default_factory=dict)
    labelled: dict[str, dict[LabelSet, int]] = field(default_factory=dict)
    histograms: dict[str, _Histogram] = field(default_factory=dict)
    gauges: dict[str, int | float] = field(default_factory=dict)
    series: dict[str, _Series] = field(default_factory=dict)


def _marginals(sets: Mapping[LabelSet, int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for labelset, n in sets.items():
        for key, value in labelset:
            per = out.setdefault(key, {})
            per[value] = per.get(value, 0) + n
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


# --- the recorder ---------------------------------------------------------------------


class Recorder:
    """Counters, histograms, gauges and time series for one simulation run.

    ``max_exact_samples`` is how many observations a histogram keeps exactly
    before switching to log buckets (see the module docstring);
    ``max_label_sets`` bounds the distinct label combinations of one counter.

    Reading never fails for a name that was never recorded: counters and
    gauges read 0, summaries are all zeros, series are empty.
    """

    def __init__(
        self,
        *,
        max_exact_samples: int = DEFAULT_MAX_EXACT_SAMPLES,
        max_label_sets: int = DEFAULT_MAX_LABEL_SETS,
    ) -> None:
        if max_exact_samples < 0:
            raise ValueError(f"max_exact_samples must be >= 0, got {max_exact_samples}")
        if max_label_sets < 1:
            raise ValueError(f"max_label_sets must be >= 1, got {max_label_sets}")
        self.max_exact_samples = max_exact_samples
        self.max_label_sets = max_label_sets
        self._run = _Scope()
        self._procs: dict[str, _Scope] = {}
        self._names: set[str] = set()  # names already validated

    # -- plumbing --

    def _name(self, name: str) -> None:
        if name not in self._names:
            _check_name(name)
            self._names.add(name)

    def _scope(self, process: str | None) -> _Scope:
        if process is None:
            return self._run
        scope = self._procs.get(process)
        if scope is None:
            _check_process(process)
            scope = self._procs[process] = _Scope()
        return scope

    def _scopes(self, process: str | None) -> tuple[_Scope, ...]:
        """The scopes an additive metric updates: the run, and the process if any."""
        return (self._run,) if process is None else (self._run, self._scope(process))

    def _peek(self, process: str | None) -> _Scope | None:
        return self._run if process is None else self._procs.get(process)

    # -- counters --

    def count(
        self, name: str, amount: SupportsIndex = 1, *, process: str | None = None, **labels: str
    ) -> None:
        """Add ``amount`` (>= 0) to counter ``name``, run-wide and for ``process``.

        ``labels`` split the counter (``cause="fork"``); the unlabelled total always
        includes labelled increments.  At most ``max_label_sets`` distinct label
        combinations per counter are accepted.
        """
        self._name(name)
        n = operator.index(amount)
        if n < 0:
            raise ValueError(f"counter {name!r}: amount must be >= 0, got {n}")
        labelset = self._labelset(name, labels) if labels else None  # validate before changing anything
        for scope in self._scopes(process):
            scope.counters[name] = scope.counters.get(name, 0) + n
            if labelset is not None:
                sets = scope.labelled.setdefault(name, {})
                sets[labelset] = sets.get(labelset, 0) + n

    def count_many(self, amounts: Mapping[str, int], *, process: str | None = None) -> None:
        """:meth:`count` for several unlabelled counters at once (each amount >= 0)."""
        scopes = self._scopes(process)
        for name, amount in amounts.items():
            self._name(name)
            n = operator.index(amount)
            if n < 0:
                raise ValueError(f"counter {name!r}: amount must be >= 0, got {n}")
            for scope in scopes:
                scope.counters[name] = scope.counters.get(name, 0) + n

    def _labelset(self, name: str, labels: Mapping[str, str]) -> LabelSet:
        labelset = tuple(sorted(labels.items()))
        known = self._run.labelled.get(name, {})
        if labelset not in known:
            for key, value in labelset:
                _check_name(key, "label name")
                if key.startswith("__"):
                    raise ValueError(f"label name {key!r} is reserved (starts with '__')")
                if not isinstance(value, str):
                    raise ValueError(f"counter {name!r}: label {key}={value!r} must be a string")
            if len(known) >= self.max_label_sets:
                raise ValueError(
                    f"counter {name!r}: more than {self.max_label_sets} label combinations; "
                    f"labels must come from a small fixed set (got {dict(labelset)!r})"
                )
        return labelset

    def counter(self, name: str, process: str | None = None, **labels: str) -> int:
        """Value of a counter; with ``labels``, of exactly that label combination."""
        scope = self._peek(process)
        if scope is None:
            return 0
        if labels:
            return scope.labelled.get(name, {}).get(tuple(sorted(labels.items())), 0)
        return scope.counters.get(name, 0)

    def labelled(self, name: str, process: str | None = None) -> dict[LabelSet, int]:
        """Every label combination of a counter and its value, sorted (for exporters)."""
        scope = self._peek(process)
        return dict(sorted(scope.labelled.get(name, {}).items())) if scope else {}

    def by_label(self, name: str, label: str, process: str | None = None) -> dict[str, int]:
        """Counter totals per value of one label, e.g. ``by_label("cow_copies_total", "cause")``."""
        scope = self._peek(process)
        return _marginals(scope.labelled.get(name, {})).get(label, {}) if scope else {}

    # -- histograms --

    def observe(
        self,
        name: str,
        values: float | Sequence[float] | npt.NDArray[Any],
        *,
        process: str | None = None,
    ) -> None:
        """Record one duration or a batch of them (finite, >= 0, simulated seconds).

        A numpy array is recorded with a handful of vectorized passes, however
        long; pass batches rather than looping over values.  The values are
        copied, so the caller may reuse its array.
        """
        self._name(name)
        scopes = self._scopes(process)
        hists = [self._histogram(scope, name) for scope in scopes]
        if isinstance(values, float | int):
            v = float(values)
            if not 0.0 <= v < math.inf:  # also rejects NaN
                raise ValueError(f"histogram {name!r}: observations must be finite and >= 0, got {v!r}")
            for h in hists:
                h.add_scalar(v)
            return
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if arr.size == 0:
            return
        lo, hi = float(arr.min()), float(arr.max())  # NaN propagates into both
        if not (lo >= 0.0 and hi < math.inf):
            raise ValueError(
                f"histogram {name!r}: observations must be finite and >= 0 (batch min {lo!r}, max {hi!r})"
            )
        if isinstance(values, np.ndarray) and np.may_share_memory(arr, values):
            arr = arr.copy()  # the caller may reuse its array
        for h in hists:
            h.add_array(arr, lo, hi)

    def _histogram(self, scope: _Scope, name: str) -> _Histogram:
        h = scope.histograms.get(name)
        if h is None:
            h = scope.histograms[name] = _Histogram(self.max_exact_samples)
        return h

    def _hist_or_none(self, name: str, process: str | None) -> _Histogram | None:
        scope = self._peek(process)
        return scope.histograms.get(name) if scope else None

    def summary(self, name: str, process: str | None = None) -> dict[str, float]:
        """p50, p90, p99, p999, max, count, sum, mean, min of a histogram (seconds).

        Percentiles are nearest-rank (module docstring); everything is 0 when
        nothing was observed.
        """
        h = self._hist_or_none(name, process)
        return (h or _Histogram(0)).summary()

    def quantile(self, name: str, q: float | Fraction, process: str | None = None) -> float:
        """Nearest-rank ``q``-quantile (0 <= q <= 1) of a histogram; 0 if empty."""
        frac = _as_fraction(q)
        h = self._hist_or_none(name, process)
        return h.quantiles([frac])[0] if h else 0.0

    def is_exact(self, name: str, process: str | None = None) -> bool:
        """Whether a histogram still holds every sample (False once it switched to buckets)."""
        h = self._hist_or_none(name, process)
        return h.exact if h else True

    def buckets(
        self, name: str, process: str | None = None, bounds: Iterable[float] = DEFAULT_BOUNDS
    ) -> list[tuple[float, int]]:
        """Cumulative counts ``[(le, count of values <= le), ..., (inf, total)]``.

        This is the shape of a Prometheus histogram's ``_bucket`` series.  Exact
        histograms count exactly; bucketed ones may misplace values within about
        1% of a bound.
        """
        b = np.array(list(bounds), dtype=np.float64)
        if b.size == 0 or not np.isfinite(b).all() or not (np.diff(b) > 0).all():
            raise ValueError("bounds must be finite and strictly increasing (+Inf is implied)")
        h = self._hist_or_none(name, process)
        cum = h.cumulative(b) if h else np.zeros(b.size + 1, dtype=np.int64)
        return [(float(le), int(c)) for le, c in zip([*b.tolist(), math.inf], cum.tolist(), strict=True)]

    # -- gauges --

    def gauge_max(self, name: str, value: float, process: str | None = None) -> None:
        """Keep the largest ``value`` seen for gauge ``name`` (integers stay integers).

        Not additive: a call with ``process`` updates only that process's gauge.
        """
        self._name(name)
        v: int | float
        if isinstance(value, int | np.integer) and not isinstance(value, bool):
            v = int(value)
        else:
            v = float(value)
            if not math.isfinite(v):
                raise ValueError(f"gauge {name!r}: value must be finite, got {v!r}")
        gauges = self._scope(process).gauges
        old = gauges.get(name)
        if old is None or v > old:
            gauges[name] = v

    def gauge(self, name: str, process: str | None = None) -> int | float:
        """Current value of a gauge (0 if never set)."""
        scope = self._peek(process)
        return scope.gauges.get(name, 0) if scope else 0

    # -- time series --

    def sample(self, name: str, time_s: float, value: float, *, process: str | None = None) -> None:
        """Append the point ``(time_s, value)`` to a series; time must not go backwards.

        Not additive: a call with ``process`` updates only that process's series.
        """
        self._name(name)
        t, v = float(time_s), float(value)
        if not (math.isfinite(t) and math.isfinite(v)):
            raise ValueError(f"series {name!r}: time_s and value must be finite, got {t!r}, {v!r}")
        series = self._scope(process).series
        s = series.get(name)
        if s is None:
            s = series[name] = _Series()
        s.append(name, t, v)

    def series(self, name: str, process: str | None = None) -> tuple[FloatArray, FloatArray]:
        """Copies of a series' times and values (empty arrays if never sampled)."""
        scope = self._peek(process)
        s = scope.series.get(name) if scope else None
        if s is None:
            return np.empty(0, dtype=np.float64), np.empty(0, dtype=np.float64)
        return np.array(s.times, dtype=np.float64), np.array(s.values, dtype=np.float64)

    def write_series(self, directory: Path) -> list[Path]:
        """Write every series as a CSV file (header ``time_s,value``); return the paths.

        Run-wide series go to ``directory/<name>.csv``, a process's to
        ``directory/processes/<process>/<name>.csv`` with the process name
        percent-encoded (so any name is one safe path component).  Floats are
        written with ``repr``, which round-trips exactly; each file is written to
        a temporary name and renamed, so none is left half-written.
        """
        directory = Path(directory)
        written: list[Path] = []
        targets: list[tuple[Path, _Scope]] = [(directory, self._run)]
        targets += [
            (directory / "processes" / _path_component(p), self._procs[p]) for p in sorted(self._procs)
        ]
        for folder, scope in targets:
            for name in sorted(scope.series):
                path = folder / f"{name}.csv"
                _write_csv(path, scope.series[name])
                written.append(path)
        return written

    # -- listing --

    def processes(self) -> list[str]:
        """Names of the processes that recorded anything, sorted."""
        return sorted(self._procs)

    def counter_names(self, process: str | None = None) -> list[str]:
        scope = self._peek(process)
        return sorted(scope.counters) if scope else []

    def histogram_names(self, process: str | None = None) -> list[str]:
        scope = self._peek(process)
        return sorted(scope.histograms) if scope else []

    def gauge_names(self, process: str | None = None) -> list[str]:
        scope = self._peek(process)
        return sorted(scope.gauges) if scope else []

    def series_names(self, process: str | None = None) -> list[str]:
        """Names of the run's series, or of one process's, sorted."""
        scope = self._peek(process)
        return sorted(scope.series) if scope else []

    # -- export --

    def to_dict(self, *, include_buckets: bool = False) -> dict[str, Any]:
        """Everything but the time series as a plain, deterministic JSON-able dict.

        ``{"counters": {name: int}, "counters_by_label": {name: {label: {value: int}}},
        "counters_by_labelset": {name: [{"labels": {...}, "value": int}, ...]},
        "histograms": {name: summary}, "gauges": {name: number},
        "processes": {process: {the same keys but "processes"}}}``.

        ``counters_by_label`` gives per-label totals (for a counter with one label,
        such as ``cause``, exactly its breakdown); ``counters_by_labelset`` keeps
        the full combinations.  With ``include_buckets`` each histogram summary
        also has ``"buckets": {"le": [...], "cumulative_counts": [...]}`` over
        :data:`DEFAULT_BOUNDS` (the +Inf bucket is ``count``).
        """
        out = self._scope_dict(self._run, include_buckets)
        out["processes"] = {p: self._scope_dict(self._procs[p], include_buckets) for p in self._procs}
        return _sort_keys(out)

    def process_dict(self, process: str) -> dict[str, Any]:
        """One process's part of :meth:`to_dict` (empty metrics for an unknown process)."""
        scope = self._procs.get(process)
        return _sort_keys(self._scope_dict(scope if scope is not None else _Scope(), include_buckets=False))

    def _scope_dict(self, scope: _Scope, include_buckets: bool) -> dict[str, Any]:
        histograms: dict[str, Any] = {}
        for name in sorted(scope.histograms):
            h = scope.histograms[name]
            entry: dict[str, Any] = {
                k: (v if k == "count" else _det(v)) for k, v in sorted(h.summary().items())
            }
            if include_buckets:
                bounds = np.array(DEFAULT_BOUNDS, dtype=np.float64)
                entry["buckets"] = {
                    "le": list(DEFAULT_BOUNDS),
                    "cumulative_counts": h.cumulative(bounds)[:-1].tolist(),
                }
            histograms[name] = entry
        return {
            "counters": dict(sorted(scope.counters.items())),
            "counters_by_label": {name: _marginals(scope.labelled[name]) for name in sorted(scope.labelled)},
            "counters_by_labelset": {
                name: [{"labels": dict(ls), "value": n} for ls, n in sorted(scope.labelled[name].items())]
                for name in sorted(scope.labelled)
            },
            "histograms": histograms,
            "gauges": {
                name: (v if isinstance(v, int) else _det(v)) for name, v in sorted(scope.gauges.items())
            },
        }


# --- CSV ------------------------------------------------------------------------------

_CSV_HEADER = "time_s,value"


def _path_component(process: str) -> str:
    # quote() leaves '.' alone; encode it too so "." and ".." cannot escape.
    return quote(process, safe="-_").replace(".", "%2E")


def _write_csv(path: Path, s: _Series) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [_CSV_HEADER, *(f"{t!r},{v!r}" for t, v in zip(s.times, s.values, strict=True))]
    data = ("\n".join(lines) + "\n").encode("ascii")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_series_csv(path: Path) -> tuple[FloatArray, FloatArray]:
    """Read back a file written by :meth:`Recorder.write_series`: ``(times, values)``."""
    lines = Path(path).read_text(encoding="ascii").splitlines()
    if not lines or lines[0] != _CSV_HEADER:
        raise ValueError(f"{path}: not a series CSV (expected header {_CSV_HEADER!r})")
    times = np.empty(len(lines) - 1, dtype=np.float64)
    values = np.empty(len(lines) - 1, dtype=np.float64)
    for i, line in enumerate(lines[1:]):
        t, v = line.split(",")
        times[i], values[i] = float(t), float(v)
    return times, values
