"""Live histograms: what a run observed since its previous progress event, in buckets.

A run's histograms (request, fault and I/O latency, fork pause, checkpoint
duration) are recorded exactly by the metrics recorder and summarised in the
result.  A server exporting them *while* the run goes on needs something else:
the observations since the last progress event, as Prometheus-style bucket
counts it can add to its own cumulative histograms.

When someone listens to a run's progress, the driver gives the simulation a
:class:`LiveHistograms` tap; every observation a workload records is also
handed to it (a list append: the values are bucketed once per progress event),
and each :class:`~cowsim.sim.driver.ProgressEvent` carries
:meth:`LiveHistograms.take`.  The tap only reads what is recorded, so a run
gives the same result with or without it.

Buckets are :data:`~cowsim.sim.metrics.DEFAULT_BOUNDS` (seconds, ``le``
semantics: bucket *i* counts values ≤ ``bounds[i]`` and > the bound before it;
the last bucket is +Inf).  For example, fault latencies of 3 µs and 40 µs since
the last event give ``bucket_counts`` with a 1 at the 5 µs bound and a 1 at the
50 µs bound, ``count == 2`` and ``sum == 4.3e-05``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cowsim.sim.metrics import DEFAULT_BOUNDS

__all__ = ["BOUNDS_SECONDS", "HistogramDelta", "LiveHistograms"]

BOUNDS_SECONDS: tuple[float, ...] = DEFAULT_BOUNDS
"""The upper bounds of the buckets (seconds); one more bucket, +Inf, follows."""
_BOUNDS = np.array(BOUNDS_SECONDS, dtype=np.float64)


@dataclass(frozen=True)
class HistogramDelta:
    """Observations of one histogram since the previous progress event."""

    bucket_counts: tuple[int, ...]
    """Per bucket of :data:`BOUNDS_SECONDS`, then +Inf (not cumulative)."""
    count: int
    sum_seconds: float

    def cumulative(self) -> list[int]:
        """The counts as Prometheus ``_bucket{le=…}`` values (cumulative; the last is +Inf)."""
        running, out = 0, []
        for count in self.bucket_counts:
            running += count
            out.append(running)
        return out


class LiveHistograms:
    """A tap on a run's histogram observations, emptied by every progress event."""

    def __init__(self) -> None:
        self._pending: dict[str, list[npt.NDArray[np.float64]]] = {}

    def add(self, name: str, values: float | npt.NDArray[np.float64]) -> None:
        """Observations (simulated seconds) of histogram ``name``; kept as given until
        :meth:`take`, so the caller must not change the array afterwards."""
        batch = np.asarray(values, dtype=np.float64).reshape(-1)
        if batch.size:
            self._pending.setdefault(name, []).append(batch)

    def add_batch(self, name: str, batch: npt.NDArray[np.float64]) -> None:
        """:meth:`add` for a 1-D float64 array (a workload's batch of a tick, possibly
        empty): kept as is."""
        pending = self._pending.get(name)
        if pending is None:
            self._pending[name] = [batch]
        else:
            pending.append(batch)

    def take(self) -> dict[str, HistogramDelta]:
        """The observations since the last call, by histogram name, bucketed."""
        deltas: dict[str, HistogramDelta] = {}
        for name, batches in sorted(self._pending.items()):
            values = batches[0] if len(batches) == 1 else np.concatenate(batches)
            if values.size == 0:
                continue
            buckets = np.bincount(np.searchsorted(_BOUNDS, values, side="left"),
                                  minlength=_BOUNDS.size + 1)
            deltas[name] = HistogramDelta(tuple(buckets.tolist()), int(values.size),
                                          float(values.sum()))
        self._pending.clear()
        return deltas
