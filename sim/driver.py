"""Running a workload spec: spec + kernel + seed → result, a pure function.

:func:`build` assembles one :class:`~cowsim.sim.engine.Simulation` — a simpy
environment, the kernel model of the chosen generation, the machine and its
pricing, a metrics recorder and seeded random streams — creates the processes
with their resident memory and starts each workload by its kind
(:mod:`cowsim.sim.workloads.registry`).  :func:`run` drives it to the spec's
duration and returns the result (docs/design.md "run results").

The run contract, for the CLI, a gRPC server and sweep workers alike:

* **Slices.** Simulated time advances in fixed slices of at most
  :data:`SLICE_SECONDS` (fewer for short runs), whoever is listening, so a run
  is the same with or without listeners: same spec and seed, byte-identical
  result.
* **Progress.** After every slice ``progress(event)`` receives a
  :class:`ProgressEvent`: simulated time, events processed, and the deltas of
  every kernel and machine counter since the previous event.  The deltas of all
  events of a run sum to the run's final counters, so a server can export
  metrics while a run progresses.
* **Cancellation.** ``cancel()`` is asked after every slice; when it answers
  true the run stops there (within one slice of simulated time) and the result
  says ``"status": "cancelled"`` with the simulated time reached.
* **Pace.** ``pace=F`` holds the run to F simulated seconds per wall-clock
  second (a live dashboard then shows it as a machine): after each slice the
  driver sleeps until the wall clock catches up, and slices are cut to at most
  :data:`PACED_SLICE_WALL_SECONDS` of wall time.  This is simpy's
  ``RealtimeEnvironment(factor=1/F, strict=False)`` at slice granularity — a run
  that cannot keep up simply runs as fast as it can — and keeps the engine's own
  environment, so a paced run's result equals the unpaced one.
* **Errors.** Invalid input raises :class:`~cowsim.sim.errors.InvalidInput`
  before anything runs.  A kernel-model error raised inside a workload (an
  operation the simulated kernel refuses) stops the run and is raised as an
  ``InvalidInput`` naming the workload (``processes[1].workloads[0]``).

Everything random comes from numpy ``Generator``s spawned from one
``SeedSequence``; ``wall_seconds`` is the only non-deterministic key, and
result.json leaves it null.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from cowsim.sim.budget import Budget
from cowsim.sim.engine import PAGE_SIZE, CountingEnvironment, ProcState, Simulation
from cowsim.sim.errors import InvalidInput
from cowsim.sim.kernel import Kernel, generation_for
from cowsim.sim.kernel.counters import COW_CAUSES, FAULT_TYPES
from cowsim.sim.live import HistogramDelta, LiveHistograms
from cowsim.sim.machine.costs import cost_model
from cowsim.sim.machine.machine import Machine
from cowsim.sim.machine.pricing import Pricing
from cowsim.sim.metrics import Recorder
from cowsim.sim.plan import check_pace, plan_run
from cowsim.sim.sampler import sampler
from cowsim.sim.spec import WorkloadSpec
from cowsim.sim.timeline import series_dict
from cowsim.sim.workloads import starter

__all__ = ["PAGE_SIZE", "SLICE_SECONDS", "WORKLOAD_COUNTERS", "ProgressEvent", "build", "drive",
           "result", "run", "simulate"]

SLICE_SECONDS = 0.1
"""The longest slice of simulated time between progress events and cancellation checks."""
MIN_SLICES = 100
"""Short runs are cut into this many slices (a progress bar moves in 1% steps)."""
PACED_SLICE_WALL_SECONDS = 0.25
"""A paced run's longest slice in wall-clock time (progress and cancellation as often)."""


@dataclass(frozen=True)
class ProgressEvent:
    """Where a run is, and what happened since the previous event."""

    sim_seconds: float
    """Simulated time reached."""
    sim_seconds_total: float
    """The spec's duration."""
    events_processed: int
    """simpy events processed so far."""
    counters: dict[str, int | float] = field(default_factory=dict)
    """Kernel counters (``cow_copies``, ``page_faults`` …), machine counters
    (``tlb_shootdowns``, ``tlb_ipis``, ``tlb_misses``) and the workloads'
    (:data:`WORKLOAD_COUNTERS`) that changed since the previous event, by how much."""
    histograms: dict[str, HistogramDelta] = field(default_factory=dict)
    """Histogram observations since the previous event (``request_latency_seconds``,
    ``fault_latency_seconds``, ``fork_pause_seconds`` …), in the buckets of
    :data:`~cowsim.sim.live.BOUNDS_SECONDS`; a histogram with none is left out."""

    @property
    def fraction(self) -> float:
        return self.sim_seconds / self.sim_seconds_total if self.sim_seconds_total else 1.0


Progress = Callable[[ProgressEvent], None]
Cancel = Callable[[], bool]


def _guarded(sim: Simulation, process: int, index: int, body: Generator[Any, Any, None]
             ) -> Generator[Any, Any, None]:
    """Run a workload; an operation the kernel model refuses ends the run with an error
    naming the workload (simpy would re-raise a bare copy of it)."""
    try:
        yield from body
    except InvalidInput as error:
        sim.failure = error.within("processes", process, "workloads", index)


def build(spec: WorkloadSpec, *, kernel: str | None = None, seed: int | None = None,
          max_frames: int | None = None, shortcuts: bool = True) -> Simulation:
    """Create the simulation: machine, kernel, processes with their resident memory, and
    every workload started (nothing has run yet).  ``shortcuts=False`` runs the plain
    path (no skipped work), for tests that the shortcuts change nothing."""
    env = CountingEnvironment()
    costs = cost_model(spec.machine.profile, **spec.machine.costs)
    machine = Machine(spec.machine.cpus, costs)
    generation = generation_for(kernel or spec.kernel)
    total_pages = sum(max(1, p.memory // PAGE_SIZE) for p in spec.processes)
    frames = max_frames if max_frames is not None else max(1 << 20, 4 * total_pages + (1 << 16))
    model = Kernel(generation, max_frames=frames, on_tlb_flush=machine.on_tlb_flush)
    model.frames.reserve(total_pages)
    sim = Simulation(spec=spec, env=env, kernel=model, machine=machine, pricing=Pricing(costs),
                     recorder=Recorder(), seed=seed if seed is not None else spec.seed,
                     shortcuts=shortcuts)
    for process in spec.processes:
        pages = max(1, process.memory // PAGE_SIZE)
        model.mmap(process.name, "heap", pages)
        model.write(process.name, "heap", None, 1)  # the resident set, written before t=0
        model.lru_add_drain()
        mm = model.procs[process.name].mm
        cpus = machine.place(mm, process.threads)
        machine.set_working_set(mm, pages)
        sim.procs[process.name] = ProcState(name=process.name, pages=pages, cpus=cpus)
    model.counters.reset()  # the set-up is not part of the run
    for p, process in enumerate(spec.processes):
        for w, workload in enumerate(process.workloads):
            body = starter(workload.kind)(sim, process.name, workload)
            env.process(_guarded(sim, p, w, body))
    env.process(sampler(sim))
    return sim


WORKLOAD_COUNTERS = ("dma_lost_writes", "stale_pin_reads")
"""Counters the workloads keep (not the kernel) that progress events report too: a
device's writes lost to a page the process no longer maps, and reads of a stale pin."""


def _counters(sim: Simulation) -> dict[str, int | float]:
    """Every counter a progress event reports, as they stand."""
    machine = sim.machine.counters
    values: dict[str, int | float] = dict(sim.kernel.counters)
    values["tlb_shootdowns"] = machine.tlb_shootdowns
    values["tlb_ipis"] = machine.tlb_ipis
    values["tlb_misses"] = machine.tlb_misses
    for name in WORKLOAD_COUNTERS:
        values[name] = sim.recorder.counter(name)
    return values


def _slices(duration: float, pace: float | None = None) -> int:
    slices = max(MIN_SLICES, math.ceil(duration / SLICE_SECONDS))
    if pace is not None:
        slices = max(slices, math.ceil(duration / (pace * PACED_SLICE_WALL_SECONDS)))
    return slices


class _Pacer:
    """Holds simulated time to ``pace`` simulated seconds per wall-clock second."""

    def __init__(self, pace: float) -> None:
        self.pace = pace
        self.started = time.monotonic()

    def wait_for(self, sim_seconds: float) -> None:
        """Sleep until the wall clock reaches simulated time ``sim_seconds`` (no catching up
        for a run that fell behind: it goes on as fast as it can)."""
        ahead = self.started + sim_seconds / self.pace - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


def simulate(spec: WorkloadSpec, *, kernel: str | None = None, seed: int | None = None,
             progress: Progress | None = None, cancel: Cancel | None = None,
             max_frames: int | None = None, shortcuts: bool = True, pace: float | None = None
             ) -> tuple[Simulation, float]:
    """Build and run a spec to its duration (or until cancelled), at ``pace`` simulated
    seconds per wall-clock second if given; returns the simulation and the wall seconds
    it took."""
    if pace is not None:
        pace = check_pace(pace)
    started = time.perf_counter()
    sim = build(spec, kernel=kernel, seed=seed, max_frames=max_frames, shortcuts=shortcuts)
    drive(sim, progress=progress, cancel=cancel, pace=pace)
    return sim, time.perf_counter() - started


def drive(sim: Simulation, *, progress: Progress | None = None, cancel: Cancel | None = None,
          pace: float | None = None) -> None:
    """Run a built simulation slice by slice to its duration (the run contract above)."""
    duration = sim.spec.duration
    slices = _slices(duration, pace)
    pacer = _Pacer(check_pace(pace)) if pace is not None else None
    last = _counters(sim) if progress is not None else {}
    if progress is not None:
        sim.live = LiveHistograms()
    for index in range(1, slices + 1):
        sim.env.run(until=duration * index / slices)
        if sim.failure is not None:
            raise sim.failure
        if pacer is not None:
            pacer.wait_for(sim.env.now)
        if progress is not None:
            now = _counters(sim)
            delta = {name: value - last[name] for name, value in now.items() if value != last[name]}
            last = now
            assert sim.live is not None
            progress(ProgressEvent(sim.env.now, duration, sim.env.events_processed, delta,
                                   sim.live.take()))
        if cancel is not None and index < slices and cancel():
            sim.cancelled = True
            break
    sim.flush()
    sim.note_memory()


def run(spec: WorkloadSpec, *, kernel: str | None = None, seed: int | None = None,
        progress: Progress | None = None, cancel: Cancel | None = None,
        budget: Budget | None = None, pace: float | None = None) -> dict[str, Any]:
    """Check a spec (:func:`~cowsim.sim.plan.plan_run`: kernel, seed, machine, budget), run
    it (at ``pace`` simulated seconds per wall-clock second if given) and return the result
    (the keys of docs/design.md "run results")."""
    if pace is not None:
        pace = check_pace(pace)
    plan = plan_run(spec, kernel=kernel, seed=seed, budget=budget)
    sim, wall_seconds = simulate(plan.spec, kernel=plan.kernel, seed=plan.seed, progress=progress,
                                 cancel=cancel, max_frames=plan.max_frames, pace=pace)
    return result(sim, wall_seconds=wall_seconds)


def result(sim: Simulation, wall_seconds: float | None) -> dict[str, Any]:
    """The run result: design.md's keys first, then the detail."""
    sim.flush()
    recorder, counters, machine = sim.recorder, sim.kernel.counters, sim.machine.counters
    histograms = recorder.to_dict()["histograms"]  # rounded: byte-stable JSON

    def latency(name: str, keys: tuple[str, ...]) -> dict[str, float]:
        summary = histograms.get(name, {})
        return {key: summary.get(key, 0.0) for key in keys}

    violations = sim.kernel.violations
    metrics: dict[str, Any] = {
        "cow_copies_total": counters["cow_copies"],
        "cow_copies_by_cause": {cause: counters[f"cow_copies_{cause}"] for cause in COW_CAUSES
                                if counters[f"cow_copies_{cause}"]},
        "wp_reuses_total": counters["wp_reuses"],
        "page_faults_total": counters["page_faults"],
        "page_faults_by_type": {kind: counters[f"faults_{kind}"] for kind in FAULT_TYPES
                                if counters[f"faults_{kind}"]},
        "tlb_shootdowns_total": machine.tlb_shootdowns,
        "tlb_ipis_total": machine.tlb_ipis,
        "tlb_misses_total": round(machine.tlb_misses),
        "dma_lost_writes_total": recorder.counter("dma_lost_writes"),
        "leaks_total": _violations(sim, "leak"),
        "stale_pin_reads_total": recorder.counter("stale_pin_reads"),
        "pin_diverged_total": _violations(sim, "pin_diverged"),
        "memory_peak_bytes": int(recorder.gauge("memory_peak_bytes")),
        "fork_pause_seconds": latency("fork_pause_seconds", ("p50", "p99", "max")),
        "request_latency_seconds": latency("request_latency_seconds",
                                           ("p50", "p90", "p99", "p999", "max")),
        "histograms": histograms,
    }
    processes = [
        {"name": name, "metrics": recorder.process_dict(name)} for name in sim.procs
    ]
    return {
        "name": sim.spec.name,
        "kernel": sim.kernel.gen.label,
        "era": sim.kernel.gen.era,
        "seed": sim.seed,
        "status": "cancelled" if sim.cancelled else "completed",
        "sim_seconds": float(sim.env.now),
        "wall_seconds": None if wall_seconds is None else round(wall_seconds, 3),
        "metrics": metrics,
        "processes": processes,
        "violations": [v.as_dict() for v in violations[:RESULT_VIOLATIONS]],
        "series": series_dict(sim),
    }


RESULT_VIOLATIONS = 100
"""Violations listed in a result (every one is counted in the ``*_total`` metrics)."""


def _violations(sim: Simulation, kind: str) -> int:
    """How many violations of ``kind`` the kernel reported (all, not only those kept)."""
    return int(sim.kernel.counters[f"violations_{kind}"])
