"""The engine a workload runs in: simulated time, the kernel model, the machine, metrics, randomness.

A :class:`Simulation` is what every workload receives.  It bundles

* ``env``: the simpy environment (simulated seconds), counting the events it
  processes;
* ``kernel``: the memory-management model of one kernel generation;
* ``machine``: CPUs, TLBs and shootdowns; ``pricing``: the one place where
  what the kernel reports becomes nanoseconds (:mod:`cowsim.sim.machine.pricing`);
* ``recorder``: counters, histograms and series in simulated time;
* ``rng()``: independent, deterministic random streams spawned from one seed.

A workload is a simpy process (a generator) that calls the kernel on behalf of
a process through :meth:`Simulation.call`, which also credits the kernel's
counter deltas to that process, and records what it measured.  The engine
knows no workload: :mod:`cowsim.sim.workloads` registers them by kind and
:mod:`cowsim.sim.driver` starts them.

This module imports the kernel, the machine and the metrics recorder, never a
workload or the run driver, so that every workload can import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import simpy

from cowsim.sim.kernel import Kernel
from cowsim.sim.live import LiveHistograms
from cowsim.sim.machine.costs import CostModel
from cowsim.sim.machine.machine import Machine
from cowsim.sim.machine.pricing import Pricing
from cowsim.sim.metrics import Recorder
from cowsim.sim.spec import WorkloadSpec
from cowsim.sim.timeline import Timeline

PAGE_SIZE = 4096
"""Bytes in a base page."""
NS = 1e-9
"""Seconds in a nanosecond: ``ns * NS`` is seconds."""


class CountingEnvironment(simpy.Environment):
    """A simpy environment that counts the events it processes (for events/s reports)."""

    def __init__(self) -> None:
        super().__init__()
        self.events_processed = 0

    def step(self) -> None:
        self.events_processed += 1
        super().step()


@dataclass
class ProcState:
    """Run-time state of one simulated process beyond the kernel model."""

    name: str
    pages: int
    cpus: list[int]
    region: str = "heap"
    mmap_locked_until: float = 0.0
    """The mmap lock is held for writing (fork, clear_refs 5.11+) until this time."""
    children: int = 0


@dataclass
class Simulation:
    """Everything a workload needs: time, kernel, machine, pricing, metrics, randomness."""

    spec: WorkloadSpec
    env: CountingEnvironment
    kernel: Kernel
    machine: Machine
    pricing: Pricing
    recorder: Recorder
    seed: int
    procs: dict[str, ProcState] = field(default_factory=dict)
    failure: Exception | None = None
    """Set when a workload stopped on an error the run must report (see driver.py)."""
    cancelled: bool = False
    """The run was stopped before its duration by its caller."""
    shortcuts: bool = True
    """Skip work a step cannot change (an unchanged sample, a tick of steady-state
    writes); False runs the plain path, which must give the same result."""
    flushers: list[Callable[[], None]] = field(default_factory=list)
    """What workloads keep back to record in batches; :meth:`flush` records it."""
    live: LiveHistograms | None = None
    """Set while someone listens to progress: every observation is also handed to it."""
    timeline: Timeline = field(default_factory=Timeline)
    """Counters and histograms sampled over simulated time (the result's ``"series"``)."""
    _streams: int = 0
    _seen: list[int] = field(default_factory=list)
    """The kernel counters as :meth:`call` last saw them, at ``_seen_changes``."""
    _seen_changes: int = -1
    _pending_proc: str | None = None
    """The process whose calls moved the counters since ``_seen`` (not credited yet)."""
    _pending_end: list[int] = field(default_factory=list)
    """The counters at the end of its last call."""
    _peak_frames: int = -1

    @property
    def costs(self) -> CostModel:
        """The machine's cost model (what :attr:`pricing` multiplies by)."""
        return self.pricing.costs

    def rng(self) -> np.random.Generator:
        """A new independent random stream (deterministic in creation order)."""
        self._streams += 1
        sequence = np.random.SeedSequence(self.seed, spawn_key=(self._streams,))
        return np.random.default_rng(sequence)

    def call(self, proc: str, operation: Callable[..., Any], *args: Any, **kwargs: Any
             ) -> tuple[Any, dict[str, int]]:
        """Run a kernel operation on behalf of ``proc``; return its result and the kernel
        counter deltas, which are also credited to the process."""
        self._credit_pending()
        result = self.call_quiet(proc, operation, *args, **kwargs)
        counters = self.kernel.counters
        if self._pending_proc is None:
            return result, {}  # the common case: nothing counted, nothing to compare
        delta = {name: value - old for (name, value), old in zip(counters.items(), self._seen,
                                                                 strict=True) if value != old}
        self._credit_pending()
        return result, delta

    def call_quiet(self, proc: str, operation: Callable[..., Any], *args: Any, **kwargs: Any
                   ) -> Any:
        """:meth:`call` for a caller that does not need the deltas (a tick's writes): they
        are credited to the process later, in one step for a run of calls by the same
        process — before another process's call, a change outside a call, or a read of
        the results (:meth:`flush`)."""
        counters = self.kernel.counters
        if counters.changes != self._seen_changes:  # moved outside a call: settle, look again
            self._credit_pending()
            self._seen = list(counters.values())
            self._seen_changes = counters.changes
        elif self._pending_proc is not None and self._pending_proc != proc:
            self._credit_pending()
        result = operation(*args, **kwargs)
        if counters.changes != self._seen_changes:
            self._pending_proc = proc
            self._pending_end = list(counters.values())
            self._seen_changes = counters.changes
        return result

    def _credit_pending(self) -> None:
        """Credit the counter deltas of the pending calls (up to the last one's end) to
        their process."""
        if self._pending_proc is None:
            return
        end = self._pending_end
        delta = {name: value - old for name, value, old in zip(self.kernel.counters, end,
                                                                self._seen, strict=True)
                 if value != old}
        if delta:
            self.recorder.count_many(delta, process=self._pending_proc)
        self._seen = end
        self._pending_proc = None

    def observe(self, name: str, values: float | npt.NDArray[np.float64], *, process: str) -> None:
        """Record histogram observations (simulated seconds) for ``process``."""
        self.recorder.observe(name, values, process=process)
        self.timeline.tap.add(name, values)
        if self.live is not None:
            self.live.add(name, values)

    def fork(self, parent: str, child: str, cpu: int) -> float:
        """fork() by a thread of ``parent`` on ``cpu``: the pause in seconds (recorded).

        The pause is priced by :meth:`Pricing.fork_ns` from what the kernel did: the
        PTEs it copied, the pinned pages it copied early and the shootdown of its
        final flush_tlb_mm; the mm's lock is held for writing throughout.
        """
        ptes = self.private_ptes(parent)
        with self.machine.bill(cpu) as bill:
            _result, delta = self.call(parent, self.kernel.fork, parent, child, cpu=cpu)
        pause = self.pricing.fork_ns(ptes, delta, bill.ns) * NS
        self.observe("fork_pause_seconds", pause, process=parent)
        self.recorder.count("forks", process=parent)
        state = self.procs[parent]
        state.mmap_locked_until = max(state.mmap_locked_until, self.env.now + pause)
        self.note_memory()
        return pause

    def private_ptes(self, proc: str) -> int:
        """Populated PTEs of a process's private VMAs (what fork copies)."""
        owner = self.kernel.procs[proc]
        return sum(int(np.count_nonzero(vma.pfn >= 0)) for vma in owner.mm.vmas.values()
                   if not vma.shared)

    def flush(self) -> None:
        """Record everything workloads keep back (before any result is read)."""
        self._credit_pending()
        for flush in self.flushers:
            flush()

    def note_memory(self) -> None:
        """Keep the peak of the physical memory in use (``memory_peak_bytes``)."""
        in_use = self.kernel.frames.nr_in_use
        if in_use > self._peak_frames:  # (a gauge of the maximum: only a new peak changes it)
            self._peak_frames = in_use
            self.recorder.gauge_max("memory_peak_bytes", float(in_use * PAGE_SIZE))


class Observations:
    """Histogram observations kept back and recorded in batches (a few values a tick cost
    more in per-call overhead than in recording); the simulation flushes them before any
    result is read."""

    LIMIT = 1 << 16
    """Values kept back at most."""

    def __init__(self, sim: Simulation, name: str, proc: str) -> None:
        self.sim, self.recorder, self.name, self.proc = sim, sim.recorder, name, proc
        self.batches: list[npt.NDArray[np.float64]] = []
        self.size = 0
        sim.flushers.append(self.flush)

    def add(self, values: npt.NDArray[np.float64]) -> None:
        """A 1-D float64 array of values (kept, not copied: the caller must not change it)
        to record later."""
        sim = self.sim
        sim.timeline.tap.add_batch(self.name, values)
        if sim.live is not None:
            sim.live.add_batch(self.name, values)
        self.batches.append(values)
        self.size += values.size
        if self.size >= self.LIMIT:
            self.flush()

    def flush(self) -> None:
        if self.batches:
            self.recorder.observe(self.name, np.concatenate(self.batches), process=self.proc)
            self.batches.clear()
            self.size = 0
