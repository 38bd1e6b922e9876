"""A run's timeline: cumulative counters and histograms, sampled in simulated time.

The metrics sampler (:mod:`cowsim.sim.sampler`) records memory and shared versus
exclusive pages every ``metrics_interval``.  A dashboard of one run also wants
*rates* and *quantiles* over that time — how fast pages were copied while a fork
child lived, how request latency moved — which the run's final counters cannot
show.  A :class:`Timeline` keeps, at the same instants:

* the cumulative value of every counter in :data:`TIMELINE_COUNTERS` (COW copies
  by cause, write-protect reuses, faults by type, TLB shootdowns and IPIs,
  violations by kind);
* for every histogram observed so far, its cumulative bucket counts over
  :data:`~cowsim.sim.live.BOUNDS_SECONDS` (the last is +Inf, which is the count)
  and its running sum, as Prometheus histograms are.

Both are what an exporter needs to write the run as Prometheus series with
timestamps (``rate()`` and ``histogram_quantile()`` then work on them as on a
live scrape).  Sampling costs a few dict reads; the histogram observations are
handed to a :class:`~cowsim.sim.live.LiveHistograms` tap (a list append) and
bucketed once per sample.  The result's ``"series"`` key is
:func:`series_dict` of a run: the recorder's series plus this timeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from cowsim.sim.kernel.counters import COW_CAUSES, FAULT_TYPES, VIOLATION_KINDS
from cowsim.sim.live import BOUNDS_SECONDS, LiveHistograms

if TYPE_CHECKING:
    from cowsim.sim.engine import Simulation

__all__ = ["MACHINE_COUNTERS", "MAX_POINTS", "TIMELINE_COUNTERS", "WORKLOAD_COUNTERS", "Timeline",
           "series_dict"]

KERNEL_COUNTERS = (
    *(f"cow_copies_{cause}" for cause in COW_CAUSES),
    "cow_copies",
    "wp_reuses",
    *(f"faults_{kind}" for kind in FAULT_TYPES),
    "page_faults",
    *(f"violations_{kind}" for kind in VIOLATION_KINDS),
)
MACHINE_COUNTERS = ("tlb_shootdowns", "tlb_ipis")
WORKLOAD_COUNTERS = ("dma_lost_writes", "stale_pin_reads")
TIMELINE_COUNTERS = (*KERNEL_COUNTERS, *MACHINE_COUNTERS, *WORKLOAD_COUNTERS)
"""The counters a timeline samples, named as progress events name them."""

_SIGNIFICANT = 12
"""Digits a histogram's running sum keeps in the result (byte-stable JSON)."""

MAX_POINTS = 1024
"""Instants a timeline keeps at most, and the result's series.  A longer run is thinned
evenly: when the timeline holds ``2 * MAX_POINTS`` instants every other one is dropped and
from then on only every ``stride``-th sample is kept (the stride doubles each time), so
memory and the result stay bounded however long the run (a week at 1 ms would otherwise be
6·10^8 samples) and the instants kept stay evenly spaced; cumulative values at the kept
instants are exact.  The recorder's series are thinned to at most as many points when the
result is built."""


class Timeline:
    """Counters and histograms sampled at the sampler's instants (see the module doc)."""

    def __init__(self) -> None:
        self.tap = LiveHistograms()
        self.times: list[float] = []
        self.counters: dict[str, list[int]] = {name: [] for name in TIMELINE_COUNTERS}
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}
        self.histograms: dict[str, dict[str, list[Any]]] = {}
        self.stride = 1
        """Every ``stride``-th sample is kept (:data:`MAX_POINTS`)."""
        self._samples = 0

    def sample(self, sim: Simulation, now: float, *, final: bool = False) -> None:
        """Record the counters and histograms as they stand at simulated time ``now`` (the
        ``final`` sample at the end of a run always)."""
        if self.times and now <= self.times[-1]:
            return  # (the final sample of :func:`series_dict` may fall on the last one)
        index = self._samples
        self._samples += 1
        if index % self.stride and not final:
            self._absorb_histograms()  # keep the buckets running; record no instant
            return
        self._record(sim, now)
        if len(self.times) >= 2 * MAX_POINTS and not final:
            self._thin()

    def _thin(self) -> None:
        """Drop every other instant kept (the odd ones) and double the stride."""
        self.times = self.times[::2]
        for name, values in self.counters.items():
            self.counters[name] = values[::2]
        for histogram in self.histograms.values():
            histogram["buckets"] = histogram["buckets"][::2]
            histogram["sum"] = histogram["sum"][::2]
        self.stride *= 2

    def _absorb_histograms(self) -> None:
        for name, delta in self.tap.take().items():
            if name not in self._buckets:
                self._buckets[name] = [0] * (len(BOUNDS_SECONDS) + 1)
                self._sums[name] = 0.0
                self.histograms[name] = {"buckets": [[0] * (len(BOUNDS_SECONDS) + 1)
                                                     for _ in self.times], "sum": [0.0] * len(self.times)}
            running = self._buckets[name]
            for position, count in enumerate(delta.bucket_counts):
                running[position] += count
            self._sums[name] += delta.sum_seconds

    def _record(self, sim: Simulation, now: float) -> None:
        kernel, machine = sim.kernel.counters, sim.machine.counters
        for name in KERNEL_COUNTERS:
            self.counters[name].append(int(kernel[name]))
        for name in MACHINE_COUNTERS:
            self.counters[name].append(int(getattr(machine, name)))
        for name in WORKLOAD_COUNTERS:
            self.counters[name].append(sim.recorder.counter(name))
        self._absorb_histograms()
        for name, running in self._buckets.items():
            cumulative, total = [], 0
            for count in running:
                total += count
                cumulative.append(total)
            self.histograms[name]["buckets"].append(cumulative)
            self.histograms[name]["sum"].append(float(f"{self._sums[name]:.{_SIGNIFICANT}g}"))
        self.times.append(float(now))

    def as_dict(self) -> dict[str, Any]:
        """``{"t": [...], "counters": {name: [...]}, "histograms": {name: {"le": bounds,
        "buckets": [[cumulative per bound, then +Inf] per instant], "sum": [...]}}}``."""
        histograms = {name: {"le": list(BOUNDS_SECONDS), **self.histograms[name]}
                      for name in sorted(self.histograms)}
        return {"t": list(self.times), "counters": dict(self.counters), "histograms": histograms}


def series_dict(sim: Simulation) -> dict[str, Any]:
    """The result's ``"series"``: the recorder's series (run-wide and per process, each
    ``{"t": [...], "v": [...]}``) and the timeline, sampled once more at the end.

    ``{"interval": s, "workload": label, "run": {name: {"t", "v"}},
    "processes": {process: {name: {"t", "v"}}}, "timeline": Timeline.as_dict()}``.
    """
    sim.timeline.sample(sim, float(sim.env.now), final=True)
    recorder = sim.recorder

    def scope(process: str | None) -> dict[str, dict[str, list[float]]]:
        out = {}
        for name in recorder.series_names(process):
            times, values = recorder.series(name, process)
            if times.size > MAX_POINTS:  # evenly thinned, the first and last kept
                keep = np.unique(np.linspace(0, times.size - 1, MAX_POINTS).round().astype(np.int64))
                times, values = times[keep], values[keep]
            out[name] = {"t": times.tolist(), "v": values.tolist()}
        return out

    processes = {name: s for name in recorder.processes() if (s := scope(name))}
    return {"interval": float(sim.spec.metrics_interval), "workload": sim.spec.workload_label,
            "run": scope(None), "processes": processes, "timeline": sim.timeline.as_dict()}
