"""Metric families that take whole deltas: counters, gauges and bucketed histograms.

A Prometheus client library's metric objects take one observation at a time
(``histogram.observe(0.003)``).  A simulation run reports differently: every
progress event brings what happened since the previous one — ``cow_copies``
went up by 1,200, and 40,000 fault latencies fell into these buckets
(:class:`cowsim.sim.HistogramDelta`).  The families here keep cumulative
values per label set and add such deltas in one step; a :class:`Families`
collector hands them to a ``prometheus_client`` registry at scrape time::

    families = Families()
    copies = families.counter("cowsim_cow_copies_total", "Pages copied.", ("kernel", "cause"))
    latency = families.histogram("cowsim_fault_latency_seconds", "Fault latency.",
                                 ("kernel",), bounds=(0.001, 0.01))
    copies.add(("6.8", "fork"), 1200)
    latency.add_buckets(("6.8",), bucket_counts=(3, 1, 0), sum_value=0.0042)  # 0.001, 0.01, +Inf
    latency.observe(("6.8",), 0.002)                                          # one value
    registry.register(families)

Histogram bucket counts are *per bucket* (not cumulative) on the way in, one
more than the bounds (the last is +Inf); they are exposed cumulatively, as
``_bucket{le=…}``, with ``_count`` (the +Inf bucket) and ``_sum``.

Nothing here exports ``_created`` series, and :meth:`Family.touch` creates a
label set at zero so that dashboards see it before anything happens.  All
families of one collector share a lock: they are written from the server's
event loop and read from the HTTP exporter's thread.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["CounterFamily", "Families", "Family", "GaugeFamily", "HistogramFamily"]

LabelValues = tuple[str, ...]
_go_float: Callable[[float], str] = floatToGoString  # "+Inf", "0.005": how Go clients write le


class Family:
    """A named metric with fixed label names and a value per label set."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 lock: threading.Lock) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.lock = lock

    def _check(self, labelvalues: LabelValues) -> LabelValues:
        if len(labelvalues) != len(self.labelnames):
            raise ValueError(f"{self.name}: labels {self.labelnames}, got {labelvalues!r}")
        return tuple(str(value) for value in labelvalues)

    def touch(self, labelvalues: LabelValues) -> None:
        """Create the label set at zero if it does not exist yet."""
        raise NotImplementedError

    def metric(self) -> Metric:
        """The family as it stands, for a scrape (call with the lock held)."""
        raise NotImplementedError


class _ScalarFamily(Family):
    """A family with one number per label set (counters and gauges)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 lock: threading.Lock) -> None:
        super().__init__(name, documentation, labelnames, lock)
        self.values: dict[LabelValues, float] = {}

    def touch(self, labelvalues: LabelValues) -> None:
        key = self._check(labelvalues)
        with self.lock:
            self.values.setdefault(key, 0.0)


class CounterFamily(_ScalarFamily):
    """A counter per label set: only ever goes up (``add`` refuses negative amounts)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 lock: threading.Lock) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"a counter's name ends in _total: {name}")
        super().__init__(name, documentation, labelnames, lock)

    def add(self, labelvalues: LabelValues, amount: float) -> None:
        if amount < 0 or math.isnan(amount):
            raise ValueError(f"{self.name}: a counter cannot go down by {amount}")
        key = self._check(labelvalues)
        with self.lock:
            self.values[key] = self.values.get(key, 0.0) + amount

    def metric(self) -> Metric:
        # CounterMetricFamily wants the name without _total and adds it back.
        family = CounterMetricFamily(self.name.removesuffix("_total"), self.documentation,
                                     labels=self.labelnames)
        for key, value in sorted(self.values.items()):
            family.add_metric(key, value)
        return family


class GaugeFamily(_ScalarFamily):
    """A gauge per label set: set, or moved up and down."""

    def set(self, labelvalues: LabelValues, value: float) -> None:
        key = self._check(labelvalues)
        with self.lock:
            self.values[key] = float(value)

    def add(self, labelvalues: LabelValues, amount: float) -> None:
        key = self._check(labelvalues)
        with self.lock:
            self.values[key] = self.values.get(key, 0.0) + amount

    def metric(self) -> Metric:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, value in sorted(self.values.items()):
            family.add_metric(key, value)
        return family


class _Buckets:
    """One label set of a histogram: per-bucket counts (the last is +Inf) and the sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.sum = 0.0


class HistogramFamily(Family):
    """A histogram per label set over fixed upper bounds (``le``), +Inf added."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 lock: threading.Lock, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds or math.isinf(bounds[-1]):
            raise ValueError(f"{name}: bounds must be finite, increasing and distinct")
        super().__init__(name, documentation, labelnames, lock)
        self.bounds = tuple(float(bound) for bound in bounds)
        self.le = [*(_go_float(bound) for bound in self.bounds), "+Inf"]
        self.series: dict[LabelValues, _Buckets] = {}

    def _series(self, key: LabelValues) -> _Buckets:
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = _Buckets(len(self.bounds) + 1)
        return series

    def add_buckets(self, labelvalues: LabelValues, bucket_counts: Sequence[int],
                    sum_value: float) -> None:
        """Add observations already bucketed: a count per bound, then +Inf (not cumulative)."""
        if len(bucket_counts) != len(self.bounds) + 1:
            raise ValueError(f"{self.name}: {len(self.bounds) + 1} bucket counts expected, "
                             f"got {len(bucket_counts)}")
        if any(count < 0 for count in bucket_counts):
            raise ValueError(f"{self.name}: negative bucket count")
        key = self._check(labelvalues)
        with self.lock:
            series = self._series(key)
            for index, count in enumerate(bucket_counts):
                series.counts[index] += int(count)
            series.sum += float(sum_value)

    def observe(self, labelvalues: LabelValues, value: float) -> None:
        """Add one observation."""
        key = self._check(labelvalues)
        index = bisect.bisect_left(self.bounds, value)  # le: a value on a bound is in it
        with self.lock:
            series = self._series(key)
            series.counts[index] += 1
            series.sum += float(value)

    def touch(self, labelvalues: LabelValues) -> None:
        key = self._check(labelvalues)
        with self.lock:
            self._series(key)

    def metric(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, series in sorted(self.series.items()):
            running, buckets = 0, []
            for le, count in zip(self.le, series.counts, strict=True):
                running += count
                buckets.append((le, float(running)))
            family.add_metric(list(key), buckets, series.sum)
        return family


class Families(Collector):
    """A collector of families sharing one lock (see the module docstring)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.families: dict[str, Family] = {}

    def _add(self, family: Family) -> None:
        if family.name in self.families:
            raise ValueError(f"duplicate metric family {family.name}")
        self.families[family.name] = family

    def counter(self, name: str, documentation: str, labelnames: Iterable[str] = ()
                ) -> CounterFamily:
        family = CounterFamily(name, documentation, tuple(labelnames), self.lock)
        self._add(family)
        return family

    def gauge(self, name: str, documentation: str, labelnames: Iterable[str] = ()) -> GaugeFamily:
        family = GaugeFamily(name, documentation, tuple(labelnames), self.lock)
        self._add(family)
        return family

    def histogram(self, name: str, documentation: str, labelnames: Iterable[str] = (), *,
                  bounds: Sequence[float]) -> HistogramFamily:
        family = HistogramFamily(name, documentation, tuple(labelnames), self.lock, bounds)
        self._add(family)
        return family

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            metrics = [family.metric() for family in self.families.values()]
        yield from metrics

    def describe(self) -> Iterator[Metric]:
        """The families without samples (the registry checks names for duplicates)."""
        for family in self.families.values():
            with self.lock:
                empty = family.metric()
            empty.samples = []
            yield empty
