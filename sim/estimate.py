"""What a workload spec will cost to run: memory, frames, events and pages touched, per workload.

Each workload kind has an estimator in :data:`WORKLOAD_ESTIMATORS`, keyed by
``kind`` like the workloads themselves, that reads the spec and returns its
:class:`~cowsim.sim.budget.Cost` items.  They mirror what the simpy processes
in :mod:`cowsim.sim.workloads` do:

* ``forking_server``: one event per tick; ``rate × duration`` requests ×
  ``pages_per_request`` pages; periodic forks (every ``every`` from
  ``first_at``) each copy and later zap the page table of the resident set,
  and a snapshot child lives ``resident / scan_rate``, so children overlap
  when that exceeds ``every``; per-connection workers arrive at ``rate`` and
  live ``lifetime`` (rounded up to a tick, plus the fork pause), so about
  ``rate × lifetime`` are alive at once, each with its page-table copy;
* ``direct_io``: one event per tick; in ``odirect`` mode ``iodepth`` reads
  always in flight, each done after ``device_latency`` on average, each
  holding references on a block; in ``pinned`` mode the whole buffer held
  and ``dma_rate`` transfers of a block each, and a helper forked every
  ``fork_every`` (one alive at a time, with early copies of the pinned pages);
* ``checkpointer``: every ``interval`` a pagemap scan, clear_refs walk and
  PTE count over the target's resident set; ``tracker``: two uffd-wp walks
  per ``interval``;
* and for every run the metrics sampler, which walks every process's pages
  each ``metrics_interval``, and the set-up that writes the resident sets.

Counts drawn from a Poisson distribution are bounded by ``mean + 8·√mean +
8``, which a run exceeds with probability below 10⁻¹⁴.

The frames bound is structural: with no swap in workloads, every frame in
use is mapped by a page-table entry of a live process (the parents and the
children alive at once), or held by a reference, or sits in a per-CPU
LRU-add batch — so the sum of those is a bound the kernel model never
exceeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cowsim.sim.budget import (
    BYTES_PER_FRAME,
    BYTES_PER_HELD_PAGE,
    BYTES_PER_PTE,
    TRANSIENT_BYTES_PER_PAGE,
    Cost,
    Estimate,
    approx_count,
)
from cowsim.sim.errors import PathPart
from cowsim.sim.kernel.generations import Generation
from cowsim.sim.machine.costs import CostModel
from cowsim.sim.spec import ProcessSpec, WorkloadSpec
from cowsim.sim.units import format_seconds

__all__ = ["WORKLOAD_ESTIMATORS", "WorkloadContext", "estimate_spec", "poisson_bound"]

PAGE_BYTES = 4096
BYTES_PER_REQUEST = 200
"""Per-request arrays of one tick (arrival, thread, cost, latency, queue masks)."""
BYTES_PER_REQUEST_PAGE = 48
"""Per page of a request in one tick (sampled pages, occurrences, their fault times)."""


def poisson_bound(mean: float) -> float:
    """A count a Poisson draw of this mean practically never exceeds."""
    return mean + 8.0 * math.sqrt(mean) + 8.0 if mean > 0 else 0.0


@dataclass(frozen=True)
class WorkloadContext:
    """What an estimator reads: the run, the process, the workload and where it is."""

    spec: WorkloadSpec
    process: ProcessSpec
    workload: Any
    path: tuple[PathPart, ...]
    costs: CostModel
    generation: Generation

    @property
    def pages(self) -> int:
        return pages_of(self.process)

    @property
    def duration(self) -> float:
        return self.spec.duration

    @property
    def ticks(self) -> float:
        return math.ceil(self.spec.duration / self.spec.tick)

    def pages_of(self, name: str) -> int:
        for process in self.spec.processes:
            if process.name == name:
                return pages_of(process)
        return 0

    def fork_pause_seconds(self) -> float:
        return float(self.costs.fork_ns(self.pages)) * 1e-9


def pages_of(process: ProcessSpec) -> int:
    return max(1, process.memory // PAGE_BYTES)


def _occurrences(duration: float, first: float, every: float) -> float:
    """How many times a periodic event at ``first``, ``first + every`` … falls before the end."""
    if first >= duration:
        return 0.0
    return math.floor((duration - first) / every) + 1


def _children(ctx: WorkloadContext, alive: float, forks: float, dirty: float, what: str) -> Cost:
    """``alive`` children at once (of ``forks`` in all), each a page-table copy of the parent,
    that first copy and at exit zap ``pages`` entries; frames: each child's PTEs may map
    their own frames (the parent's copies while they share)."""
    pages = ctx.pages
    return Cost(
        path=ctx.path, what=what,
        memory_bytes=alive * pages * BYTES_PER_PTE,
        frames=alive * pages,
        events=forks,
        page_touches=forks * (2 * pages + dirty),
        batch_elements=dirty,
    )


def _ticks(ctx: WorkloadContext, kind: str) -> Cost:
    """One simpy event per tick, for the whole duration."""
    return Cost(path=("duration",),
                what=f"{kind}: {approx_count(ctx.ticks)} ticks of {format_seconds(ctx.spec.tick)} "
                     f"over {format_seconds(ctx.duration)}",
                events=ctx.ticks)


def _forking_server(ctx: WorkloadContext) -> list[Cost]:
    spec = ctx.workload
    requests = spec.requests
    per_tick = poisson_bound(requests.rate * ctx.spec.tick)
    total = requests.rate * ctx.duration
    costs = [_ticks(ctx, "forking_server"), Cost(
        path=(*ctx.path, "requests", "rate"),
        what=f"forking_server: {approx_count(total)} requests of {requests.pages_per_request} "
             f"pages, {approx_count(per_tick)} in a tick",
        memory_bytes=per_tick * (BYTES_PER_REQUEST + BYTES_PER_REQUEST_PAGE
                                 * requests.pages_per_request),
        page_touches=total * requests.pages_per_request,
        batch_elements=per_tick * requests.pages_per_request,
    )]
    fork = spec.fork
    if fork is None:
        return costs
    if fork.mode == "periodic":
        first = fork.first_at if fork.first_at is not None else fork.every
        forks = _occurrences(ctx.duration, first, fork.every)
        lifetime = ctx.pages * PAGE_BYTES / fork.snapshot.scan_rate + ctx.fork_pause_seconds()
        lifetime += ctx.spec.tick  # reaped at the next tick
        forks = min(forks, ctx.ticks)  # at most one fork per tick
        alive = min(forks, math.floor(lifetime / max(fork.every, ctx.spec.tick)) + 1)
        costs.append(_children(ctx, alive, forks, 0.0,
                               f"forking_server: {forks:,.0f} snapshot forks, {alive:,.0f} alive "
                               "at once"))
        return costs
    workers = fork.connections
    lifetime = workers.lifetime + ctx.spec.tick + ctx.fork_pause_seconds()
    forks = poisson_bound(workers.rate * ctx.duration)
    alive = min(forks, poisson_bound(workers.rate * lifetime))
    costs.append(_children(ctx, alive, forks, float(workers.dirty_pages),
                           f"forking_server: {forks:,.0f} connection workers, {alive:,.0f} alive "
                           "at once"))
    return costs


def _direct_io(ctx: WorkloadContext) -> list[Cost]:
    spec = ctx.workload
    block_pages = max(1, spec.block // PAGE_BYTES)
    buffer_pages = min(ctx.pages, max(1, spec.buffer // PAGE_BYTES))
    blocks = max(1, buffer_pages // block_pages)
    ticks = _ticks(ctx, "direct_io")
    if spec.mode == "odirect":
        depth = min(spec.iodepth, blocks)
        ios = depth * ctx.duration / spec.device_latency
        held = depth * block_pages
        return [ticks, Cost(
            path=(*ctx.path, "device_latency"),
            what=f"direct_io: {approx_count(ios)} O_DIRECT reads ({depth} in flight, "
                 f"{format_seconds(spec.device_latency)} each)",
            memory_bytes=held * (BYTES_PER_HELD_PAGE + BYTES_PER_FRAME) + depth * 1024,
            frames=held,
            events=2 * ios,
            page_touches=3 * ios * block_pages,
        )]
    pinned = blocks * block_pages
    rate = spec.dma_rate or 1000.0
    per_tick = poisson_bound(rate * ctx.spec.tick)
    costs = [ticks, Cost(
        path=(*ctx.path, "dma_rate"),
        what=f"direct_io: {approx_count(rate * ctx.duration)} transfers over a {pinned:,}-page pinned buffer",
        memory_bytes=pinned * BYTES_PER_HELD_PAGE + per_tick * block_pages * 64,
        frames=pinned,
        page_touches=rate * ctx.duration * block_pages * 2,
        batch_elements=per_tick * block_pages,
    )]
    if spec.fork_every:
        forks = min(ctx.ticks, _occurrences(ctx.duration, spec.fork_every, spec.fork_every))
        helper = _children(ctx, min(1.0, forks), forks, 0.0,
                           f"direct_io: {forks:,.0f} helper forks")
        costs.append(Cost(path=(*ctx.path, "fork_every"), what=helper.what,
                          memory_bytes=helper.memory_bytes, frames=helper.frames + pinned,
                          events=helper.events, page_touches=helper.page_touches + forks * pinned))
    return costs


def _walks(ctx: WorkloadContext, walks_per_round: int, kind: str) -> list[Cost]:
    spec = ctx.workload
    first = spec.first_at if spec.first_at is not None else spec.interval
    rounds = _occurrences(ctx.duration, first, spec.interval)
    pages = ctx.pages_of(spec.target)
    return [Cost(
        path=(*ctx.path, "interval"),
        what=f"{kind}: {rounds:,.0f} rounds over {pages:,} pages",
        events=rounds * walks_per_round,
        page_touches=rounds * walks_per_round * pages,
    )]


def _checkpointer(ctx: WorkloadContext) -> list[Cost]:
    return _walks(ctx, 3, "checkpointer")  # pagemap, clear_refs, the PTE count


def _tracker(ctx: WorkloadContext) -> list[Cost]:
    return _walks(ctx, 2, "tracker")  # protect, unprotect


WorkloadEstimator = Callable[[WorkloadContext], list[Cost]]

WORKLOAD_ESTIMATORS: dict[str, WorkloadEstimator] = {
    "forking_server": _forking_server,
    "direct_io": _direct_io,
    "checkpointer": _checkpointer,
    "tracker": _tracker,
}
"""Workload kind → its estimator; a new kind registers one here."""


def estimate_spec(spec: WorkloadSpec, costs: CostModel, generation: Generation) -> Estimate:
    """Everything a run of ``spec`` costs (see the module docstring)."""
    estimate = Estimate()
    largest = 0
    total_pages = 0
    for index, process in enumerate(spec.processes):
        pages = pages_of(process)
        largest = max(largest, pages)
        total_pages += pages
        estimate.add(Cost(
            path=("processes", index, "memory"), what=f"process {process.name}: {pages:,} pages",
            memory_bytes=pages * BYTES_PER_PTE, frames=pages, page_touches=3 * pages, events=1))
        for number, workload in enumerate(process.workloads):
            ctx = WorkloadContext(spec=spec, process=process, workload=workload,
                                  path=("processes", index, "workloads", number), costs=costs,
                                  generation=generation)
            estimate.extend(WORKLOAD_ESTIMATORS[workload.kind](ctx))
    samples = _occurrences(spec.duration, 0.0, spec.metrics_interval)
    estimate.add(Cost(
        path=("metrics_interval",), what=f"the metrics sampler: {samples:,.0f} samples",
        memory_bytes=samples * (1 + 2 * len(spec.processes)) * 64,
        events=samples, page_touches=samples * total_pages * 2))
    frames = math.fsum(cost.frames for cost in estimate.costs)
    estimate.add(Cost(
        path=("processes",), what="frame arrays and the transient arrays of the largest region",
        memory_bytes=2 * BYTES_PER_FRAME * (frames + 1) + TRANSIENT_BYTES_PER_PAGE * largest,
        frames=generation.lru_batch_pages * spec.machine.cpus + frames * 0.01 + 4096))
    return estimate
