"""Running a workload spec: spec + seed → result, a pure function with a progress callback.

:func:`run` builds one :class:`Simulation` — a simpy environment, the kernel
model of the chosen generation, the machine, a metrics recorder and seeded
random streams — creates the processes with their resident memory, starts
each workload as a simpy process and runs for the spec's duration of
simulated time.  Everything random comes from numpy ``Generator``s spawned
from one ``SeedSequence``, so the same spec and seed give the same result,
byte for byte (``wall_seconds`` aside, which result.json leaves null).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from cowsim.sim.kernel import Kernel, generation_for
from cowsim.sim.kernel.counters import COW_CAUSES, FAULT_TYPES
from cowsim.sim.machine.costs import CostModel, cost_model
from cowsim.sim.machine.machine import Machine
from cowsim.sim.metrics import Recorder
from cowsim.sim.spec import Checkpointer, DirectIO, ForkingServer, Tracker, WorkloadSpec

PAGE_SIZE = 4096
NS = 1e-9

Progress = Callable[[float, float, int], None]
"""progress(sim_seconds_done, sim_seconds_total, events_processed)"""


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
    """Everything a workload needs: time, kernel, machine, metrics, randomness."""

    spec: WorkloadSpec
    env: CountingEnvironment
    kernel: Kernel
    machine: Machine
    costs: CostModel
    recorder: Recorder
    seed: int
    procs: dict[str, ProcState] = field(default_factory=dict)
    _streams: int = 0

    def rng(self) -> np.random.Generator:
        """A new independent random stream (deterministic in creation order)."""
        self._streams += 1
        sequence = np.random.SeedSequence(self.seed, spawn_key=(self._streams,))
        return np.random.default_rng(sequence)

    def call(self, proc: str, operation: Callable[..., Any], *args: Any, **kwargs: Any
             ) -> tuple[Any, dict[str, int]]:
        """Run a kernel operation on behalf of ``proc``; return its result and the kernel
        counter deltas, which are also credited to the process."""
        before = dict(self.kernel.counters)
        result = operation(*args, **kwargs)
        delta = {name: value - before[name] for name, value in self.kernel.counters.items()
                 if value != before[name]}
        for name, amount in delta.items():
            self.recorder.count(name, amount, process=proc)
        return result, delta

    def fault_ns(self, delta: dict[str, int]) -> float:
        """Time of the faults a kernel operation handled, from its counter deltas."""
        costs = self.costs
        copies = delta.get("cow_copies", 0) - delta.get("cow_copies_fork_pinned", 0)
        return (
            delta.get("faults_anonymous", 0) * costs.anon_write_fault_ns()
            + copies * costs.cow_fault_ns()
            + delta.get("wp_reuses", 0) * costs.wp_reuse_fault_ns
            + delta.get("faults_swap", 0) * costs.swap_in_fault_ns
            + delta.get("faults_uffd_wp", 0) * costs.uffd_wp_fault_ns
            + delta.get("faults_shmem", 0) * costs.anon_write_fault_ns()
        )

    def fork(self, parent: str, child: str, cpu: int) -> float:
        """fork() by a thread of ``parent`` on ``cpu``: the pause in seconds (recorded).

        The pause is the cost model's fork time for the PTEs copied, the early
        copies of pinned pages, and the shootdown of the final flush_tlb_mm to the
        parent's other CPUs; the mm's lock is held for writing throughout.
        """
        costs = self.costs
        ptes = self.private_ptes(parent)
        with self.machine.bill(cpu) as bill:
            _result, delta = self.call(parent, self.kernel.fork, parent, child, cpu=cpu)
        pause_ns = (costs.fork_ns(ptes) + bill.ns
                    + delta.get("cow_copies_fork_pinned", 0) * costs.copy_ns(PAGE_SIZE))
        pause = float(pause_ns) * NS
        self.recorder.observe("fork_pause_seconds", pause, process=parent)
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

    def note_memory(self) -> None:
        self.recorder.gauge_max("memory_peak_bytes",
                                float(self.kernel.frames.nr_in_use * PAGE_SIZE))


def _sampler(sim: Simulation) -> Any:
    """Every metrics interval: memory in use and shared vs exclusive pages per process."""
    interval = sim.spec.metrics_interval
    while True:
        now = sim.env.now
        sim.recorder.sample("memory_bytes", now, float(sim.kernel.frames.nr_in_use * PAGE_SIZE))
        for name, state in sim.procs.items():
            owner = sim.kernel.procs.get(name)
            if owner is None or not owner.alive:
                continue
            vma = owner.mm.vmas.get(state.region)
            if vma is None:
                continue
            mapped = vma.pfn[(vma.pfn > 0) & (vma.pte < np.uint16(1 << 15))]
            shared = int(np.count_nonzero(sim.kernel.frames.mapcount[mapped] > 1))
            sim.recorder.sample("shared_pages", now, float(shared), process=name)
            sim.recorder.sample("exclusive_pages", now, float(mapped.size - shared), process=name)
        sim.note_memory()
        yield sim.env.timeout(interval)


def build(spec: WorkloadSpec, *, kernel: str | None = None, seed: int | None = None) -> Simulation:
    """Create the simulation: machine, kernel, processes and their resident memory."""
    from cowsim.sim.workloads import checkpointer, direct_io, forking_server, tracker

    env = CountingEnvironment()
    costs = cost_model(spec.machine.profile, **spec.machine.costs)
    machine = Machine(spec.machine.cpus, costs)
    generation = generation_for(kernel or spec.kernel)
    total_pages = sum(p.memory // PAGE_SIZE for p in spec.processes)
    model = Kernel(generation, max_frames=max(1 << 20, 4 * total_pages + (1 << 16)),
                   on_tlb_flush=machine.on_tlb_flush)
    model.frames.reserve(total_pages)
    sim = Simulation(spec=spec, env=env, kernel=model, machine=machine, costs=costs,
                     recorder=Recorder(), seed=seed if seed is not None else spec.seed)
    for process in spec.processes:
        pages = max(1, process.memory // PAGE_SIZE)
        model.mmap(process.name, "heap", pages)
        model.write(process.name, "heap", None, 1)  # the resident set, written before t=0
        model.lru_add_drain()
        cpus = machine.place(model.procs[process.name].mm, process.threads)
        machine.set_working_set(model.procs[process.name].mm, pages)
        sim.procs[process.name] = ProcState(name=process.name, pages=pages, cpus=cpus)
    for name in model.counters:  # the set-up is not part of the run
        model.counters[name] = 0
    for process in spec.processes:
        for workload in process.workloads:
            if isinstance(workload, ForkingServer):
                env.process(forking_server.run(sim, process.name, workload))
            elif isinstance(workload, DirectIO):
                env.process(direct_io.run(sim, process.name, workload))
            elif isinstance(workload, Checkpointer):
                env.process(checkpointer.run(sim, process.name, workload))
            elif isinstance(workload, Tracker):
                env.process(tracker.run(sim, process.name, workload))
    env.process(_sampler(sim))
    return sim


def simulate(spec: WorkloadSpec, *, kernel: str | None = None, seed: int | None = None,
             progress: Progress | None = None, progress_steps: int = 100
             ) -> tuple[Simulation, float]:
    """Build and run a spec to its duration; returns the simulation and the wall seconds."""
    started = time.perf_counter()
    sim = build(spec, kernel=kernel, seed=seed)
    duration = spec.duration
    steps = max(1, progress_steps if progress is not None else 1)
    for step in range(1, steps + 1):
        sim.env.run(until=duration * step / steps)
        if progress is not None:
            progress(sim.env.now, duration, sim.env.events_processed)
    sim.note_memory()
    return sim, time.perf_counter() - started


def run(spec: WorkloadSpec, *, kernel: str | None = None, seed: int | None = None,
        progress: Progress | None = None) -> dict[str, Any]:
    """Run a spec and return the result (the keys of docs/design.md "run results")."""
    sim, wall_seconds = simulate(spec, kernel=kernel, seed=seed, progress=progress)
    return result(sim, wall_seconds=wall_seconds)


def result(sim: Simulation, wall_seconds: float | None) -> dict[str, Any]:
    """The run result: design.md's keys first, then the detail."""
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
        "leaks_total": sum(1 for v in violations if v.kind == "leak"),
        "stale_pin_reads_total": recorder.counter("stale_pin_reads"),
        "pin_diverged_total": sum(1 for v in violations if v.kind == "pin_diverged"),
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
        "sim_seconds": float(sim.env.now),
        "wall_seconds": None if wall_seconds is None else round(wall_seconds, 3),
        "metrics": metrics,
        "processes": processes,
        "violations": [v.as_dict() for v in violations[:100]],
    }
