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

from cowsim.sim.kernel.counters import COW_CAUSES, FAULT_TYPES, VIOLATION_KINDS
from cowsim.sim.live import BOUNDS_SECONDS, LiveHistograms

if TYPE_CHECKING:
    from cowsim.sim.engine import Simulation

__all__ = ["MACHINE_COUNTERS", "TIMELINE_COUNTERS", "WORKLOAD_COUNTERS", "Timeline",
           "series_dict", "workload_label"]

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


def workload_label(sim: Simulation) -> str:
    """The spec's workload kinds, sorted and joined with ``+`` (the ``workload`` label)."""
    kinds = {w.kind for process in sim.spec.processes for w in process.workloads}
    return "+".join(sorted(kinds))


class Timeline:
    """Counters and histograms sampled at the sampler's instants (see the module doc)."""

    def __init__(self) -> None:
        self.tap = LiveHistograms()
        self.times: list[float] = []
        self.counters: dict[str, list[int]] = {name: [] for name in TIMELINE_COUNTERS}
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}
        self.histograms: dict[str, dict[str, list[Any]]] = {}

    def sample(self, sim: Simulation, now: float) -> None:
        """Record the counters and histograms as they stand at simulated time ``now``."""
        if self.times and now <= self.times[-1]:
            return  # (the final sample of :func:`series_dict` may fall on the last one)
        kernel, machine = sim.kernel.counters, sim.machine.counters
        for name in KERNEL_COUNTERS:
            self.counters[name].append(int(kernel[name]))
        for name in MACHINE_COUNTERS:
            self.counters[name].append(int(getattr(machine, name)))
        for name in WORKLOAD_COUNTERS:
            self.counters[name].append(sim.recorder.counter(name))
        for name, delta in self.tap.take().items():
            if name not in self._buckets:
                self._buckets[name] = [0] * (len(BOUNDS_SECONDS) + 1)
                self._sums[name] = 0.0
                self.histograms[name] = {"buckets": [[0] * (len(BOUNDS_SECONDS) + 1)
                                                     for _ in self.times], "sum": [0.0] * len(self.times)}
            running = self._buckets[name]
            for index, count in enumerate(delta.bucket_counts):
                running[index] += count
            self._sums[name] += delta.sum_seconds
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
    sim.timeline.sample(sim, float(sim.env.now))
    recorder = sim.recorder

    def scope(process: str | None) -> dict[str, dict[str, list[float]]]:
        out = {}
        for name in recorder.series_names(process):
            times, values = recorder.series(name, process)
            out[name] = {"t": times.tolist(), "v": values.tolist()}
        return out

    processes = {name: s for name in recorder.processes() if (s := scope(name))}
    return {"interval": float(sim.spec.metrics_interval), "workload": workload_label(sim),
            "run": scope(None), "processes": processes, "timeline": sim.timeline.as_dict()}
