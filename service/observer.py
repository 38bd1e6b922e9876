"""Observers: how the server tells a metrics exporter what its runs are doing.

The server process (never a worker) calls one :class:`Observer` as things
happen; a Prometheus exporter is one implementation, :class:`NullObserver`
(the default) another, a test's recording list a third.  Labels are bounded
by construction: a run is labelled by its kernel (a release line such as
``"6.8"``) and its workload (the spec's workload kinds joined by ``+``), never
by its id or name::

    class Printer(NullObserver):
        def run_progress(self, labels, deltas):
            print(labels.kernel, labels.workload, deltas)   # {"cow_copies": 3, ...}

    server = CowsimServer(config, observer=Printer())

The calls come from the server's event loop and must return quickly; an
observer that raises is logged and otherwise ignored (:class:`SafeObserver`),
so metrics never break a run.  :class:`ObserverGroup` tells several observers
(the server's Prometheus exporter and one passed in, say).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cowsim.sim import HistogramDelta

__all__ = ["NullObserver", "Observer", "ObserverGroup", "RunLabels", "SafeObserver"]

log = logging.getLogger("cowsim.service")


@dataclass(frozen=True)
class RunLabels:
    """The bounded labels of a run."""

    kernel: str
    """The kernel label its result names (``"6.8"``, ``"5.10"``, an era or what-if name)."""
    workload: str
    """The spec's workload kinds, sorted and joined with ``+`` (``"direct_io+forking_server"``)."""


class Observer(Protocol):
    """What the server reports (every method may be a no-op)."""

    def run_progress(self, labels: RunLabels, deltas: Mapping[str, float]) -> None:
        """A run made progress: the kernel and machine counters that changed since its
        previous report, by how much (``cow_copies``, ``cow_copies_fork``, ``page_faults``,
        ``faults_wp``, ``violations_leak``, ``tlb_shootdowns`` …, the names of the run
        contract).  The deltas of a run sum to its final counters.  Beside the kernel's,
        ``dma_lost_writes`` and ``stale_pin_reads`` (what the workloads saw go wrong, the
        result's ``dma_lost_writes_total`` and ``stale_pin_reads_total``) arrive too: as
        the run goes when the library reports them, else in one last delta when the run
        ends (:mod:`cowsim.service.worker`)."""

    def run_observations(self, labels: RunLabels, histograms: Mapping[str, HistogramDelta]
                         ) -> None:
        """A run's histograms got observations since its previous report, by histogram
        name (``request_latency_seconds``, ``fault_latency_seconds``,
        ``fork_pause_seconds``, ``checkpoint_duration_seconds``, ``io_latency_seconds`` …,
        simulated seconds), bucketed over :data:`cowsim.sim.BOUNDS_SECONDS` then +Inf.
        The deltas of a run sum to its result's histogram counts."""

    def run_state_changed(self, labels: RunLabels, old: str | None, new: str) -> None:
        """A run moved from state ``old`` to ``new`` (``"QUEUED"``, ``"RUNNING"``,
        ``"SUCCEEDED"``, ``"FAILED"``, ``"CANCELLED"``).  ``old`` is None for a new run, and
        for every stored run once at start-up (so gauges of runs by state start right)."""

    def run_finished(self, labels: RunLabels, state: str, wall_seconds: float | None,
                     result: Mapping[str, Any] | None) -> None:
        """A run reached a final state after ``wall_seconds`` in a worker (None if it never
        ran); ``result`` is its result dict (design.md keys, histogram summaries) or None."""

    def cache_hit(self, labels: RunLabels) -> None:
        """A submission was answered from the result cache (no run was started)."""

    def queue_depth(self, depth: int) -> None:
        """The number of jobs waiting for a worker changed to ``depth``."""

    def rpc_handled(self, method: str, code: str, seconds: float) -> None:
        """An RPC finished: its full method name (``/cowsim.v1.CowsimService/GetRun``), the
        status code name (``"OK"``, ``"NOT_FOUND"`` …) and the wall seconds it took."""


class NullObserver:
    """An observer that ignores everything; subclass it to implement a few methods."""

    def run_progress(self, labels: RunLabels, deltas: Mapping[str, float]) -> None:
        pass

    def run_observations(self, labels: RunLabels, histograms: Mapping[str, HistogramDelta]
                         ) -> None:
        pass

    def run_state_changed(self, labels: RunLabels, old: str | None, new: str) -> None:
        pass

    def run_finished(self, labels: RunLabels, state: str, wall_seconds: float | None,
                     result: Mapping[str, Any] | None) -> None:
        pass

    def cache_hit(self, labels: RunLabels) -> None:
        pass

    def queue_depth(self, depth: int) -> None:
        pass

    def rpc_handled(self, method: str, code: str, seconds: float) -> None:
        pass


class SafeObserver:
    """Wraps an observer so that its exceptions are logged, never raised into the server
    (and a method it lacks, such as one added to the protocol later, is skipped)."""

    def __init__(self, inner: Observer) -> None:
        self.inner = inner

    def _call(self, name: str, *args: Any) -> None:
        method = getattr(self.inner, name, None)
        if method is None:  # an observer written before the method was added
            return
        try:
            method(*args)
        except Exception:
            log.exception("observer %s failed", name)

    def run_progress(self, labels: RunLabels, deltas: Mapping[str, float]) -> None:
        self._call("run_progress", labels, deltas)

    def run_observations(self, labels: RunLabels, histograms: Mapping[str, HistogramDelta]
                         ) -> None:
        self._call("run_observations", labels, histograms)

    def run_state_changed(self, labels: RunLabels, old: str | None, new: str) -> None:
        self._call("run_state_changed", labels, old, new)

    def run_finished(self, labels: RunLabels, state: str, wall_seconds: float | None,
                     result: Mapping[str, Any] | None) -> None:
        self._call("run_finished", labels, state, wall_seconds, result)

    def cache_hit(self, labels: RunLabels) -> None:
        self._call("cache_hit", labels)

    def queue_depth(self, depth: int) -> None:
        self._call("queue_depth", depth)

    def rpc_handled(self, method: str, code: str, seconds: float) -> None:
        self._call("rpc_handled", method, code, seconds)


class ObserverGroup:
    """Tells every observer of a group, in order (each behind a :class:`SafeObserver`,
    so one that raises does not keep the others from hearing)."""

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers = [SafeObserver(observer) for observer in observers]

    def run_progress(self, labels: RunLabels, deltas: Mapping[str, float]) -> None:
        for observer in self.observers:
            observer.run_progress(labels, deltas)

    def run_observations(self, labels: RunLabels, histograms: Mapping[str, HistogramDelta]
                         ) -> None:
        for observer in self.observers:
            observer.run_observations(labels, histograms)

    def run_state_changed(self, labels: RunLabels, old: str | None, new: str) -> None:
        for observer in self.observers:
            observer.run_state_changed(labels, old, new)

    def run_finished(self, labels: RunLabels, state: str, wall_seconds: float | None,
                     result: Mapping[str, Any] | None) -> None:
        for observer in self.observers:
            observer.run_finished(labels, state, wall_seconds, result)

    def cache_hit(self, labels: RunLabels) -> None:
        for observer in self.observers:
            observer.cache_hit(labels)

    def queue_depth(self, depth: int) -> None:
        for observer in self.observers:
            observer.queue_depth(depth)

    def rpc_handled(self, method: str, code: str, seconds: float) -> None:
        for observer in self.observers:
            observer.rpc_handled(method, code, seconds)
