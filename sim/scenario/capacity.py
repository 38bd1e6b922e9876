"""Refusing scenarios the model cannot hold, before running anything.

One walk over the steps, without running them, bounds what the kernel model
will need (:mod:`cowsim.sim.budget` has the bytes per entry):

* **page tables**: every mapped page of every process (fork copies the
  parent's), plus a shared region's object;
* **held references**: every page a ``gup``, ``pin``, ``vmsplice``,
  ``odirect_*`` or ``io_uring_register`` step holds until its ``release``
  (pipes hold theirs to the end);
* **frames**: two bounds, and the smaller is used.  *Cumulative*: a step
  allocates at most one frame per page it may fault in (a page never touched
  yet, or write-protected since the last fork, clear_refs, mprotect or
  uffd-wp) plus one per page that may be swapped out (swap-in, then a copy);
  fork allocates at most one per present page of the parent (the early copy
  of pinned pages).  *Structural*: every frame in use is mapped by a page
  table entry or a shared object, held by a reference, in a per-CPU LRU-add
  batch or in the swap cache, so in-use frames never exceed the sum of those
  before a step plus what the step allocates;
* **transient arrays** of one operation over the largest region;
* **work**: pages touched by each step, and the oracles' check of every held
  reference after every step.

If a step takes the estimate over the :class:`~cowsim.sim.budget.Budget`, the
scenario is refused with :class:`~cowsim.sim.errors.BudgetExceeded` at that
step (``FILE: step 3 (pin): field 'pages': needs about 14 GiB of model
state …``).  Otherwise :func:`check_capacity` returns the frames bound, and
:func:`~cowsim.sim.scenario.runner.run_scenario` builds its kernel model with
exactly that ``max_frames``: a scenario accepted here never fails for
capacity later.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cowsim.sim.budget import (
    BYTES_PER_FRAME,
    BYTES_PER_HELD_PAGE,
    BYTES_PER_PTE,
    TRANSIENT_BYTES_PER_PAGE,
    Budget,
    Cost,
    Estimate,
)
from cowsim.sim.errors import BudgetExceeded
from cowsim.sim.scenario import schema as s

__all__ = ["LRU_SLACK_FRAMES", "ScenarioFootprint", "check_capacity", "scenario_footprint"]

LRU_SLACK_FRAMES = 32 * 4096
"""Frames the per-CPU LRU-add batches may hold (up to 32 per CPU, 4096 CPUs)."""
BYTES_PER_SHMEM_PAGE = 4
BYTES_PER_SWAP_SLOT = 100
"""Swap map, content and cache arrays (doubling), and the free-slot list."""
BYTES_PER_CHUNK = 1024
"""One GUP call's bookkeeping object."""

HOLDING_OPS = frozenset({"gup", "pin", "vmsplice", "odirect_read", "odirect_write",
                         "io_uring_register"})


@dataclass
class _Region:
    """What the walk knows of one mapped region (counts, never page sets)."""

    pages: int
    shared: bool
    fresh: int
    """Pages that may still fault in fresh (never touched, zapped, or on the zero page)."""
    protected: int = 0
    """Pages that may be write-protected: a write may copy them."""
    swapped: int = 0
    """Pages that may be swapped out: an access swaps them in (one frame), then may copy."""


@dataclass
class ScenarioFootprint:
    """The bounds of a scenario, as the walk reached its end (or the step it stopped at)."""

    frames: int = 1
    memory_bytes: int = 0
    page_touches: int = 0
    steps: int = 0
    per_step: list[int] = field(default_factory=list)
    """The frames bound after each step (cumulative, never decreasing)."""


class _Walk:
    def __init__(self) -> None:
        self.procs: dict[str, dict[str, _Region]] = {}
        self.held: dict[str, int] = {}
        self.chunks = 0
        self.shmem_pages = 0
        self.paged_out = 0
        self.allocated = 0  # cumulative frames bound
        self.structural_peak = 0
        self.largest = 0
        self.pte_peak = 0
        self.held_peak = 0
        self.chunks_peak = 0
        self.touches = 0

    # -- state -----------------------------------------------------------------------------
    def ptes(self) -> int:
        return sum(r.pages for regions in self.procs.values() for r in regions.values())

    def structural(self) -> int:
        private = sum(r.pages for regions in self.procs.values() for r in regions.values()
                      if not r.shared)
        return private + self.shmem_pages + sum(self.held.values()) + self.paged_out

    def region(self, step: s.Step) -> _Region | None:
        proc, name = getattr(step, "proc", None), getattr(step, "region", None)
        if proc is None or name is None:
            return None
        return self.procs.get(proc, {}).get(name)

    @staticmethod
    def selection(step: s.Step, region: _Region | None) -> int:
        if region is None:
            return 0
        selected = step.selected()
        return region.pages if selected is None else min(len(selected), region.pages)

    # -- one step ----------------------------------------------------------------------------
    def allocations(self, step: s.Step) -> int:
        """Upper bound on frames ``step`` allocates; updates the walk's state."""
        region = self.region(step)
        count = self.selection(step, region)
        whole = region is not None and count == region.pages
        self.touches += count
        match step:
            case s.Mmap():
                regions = self.procs.setdefault(step.proc, {})
                if step.region in regions:
                    return 0  # the kernel refuses a second mmap of a mapped region
                regions[step.region] = _Region(step.pages, step.shared,
                                               fresh=0 if step.populate else step.pages)
                self.largest = max(self.largest, step.pages)
                self.touches += step.pages
                if step.shared:
                    self.shmem_pages += step.pages
                return step.pages if step.populate else 0
            case s.Write() | s.Gup() | s.Pin() | s.OdirectRead() | s.OdirectWrite() \
                    | s.IoUringRegister() | s.Vmsplice():
                if region is None:
                    return 0
                allocated = min(count, region.fresh + region.protected + region.swapped)
                allocated += min(count, region.swapped)
                writes = isinstance(step, s.Write) or getattr(step, "write", False) or isinstance(
                    step, s.OdirectRead | s.IoUringRegister)
                if whole and writes:
                    region.fresh = region.protected = region.swapped = 0
                if step.op in HOLDING_OPS:
                    holder = (f"pipe {step.pipe}" if isinstance(step, s.Vmsplice)
                              else f"id {getattr(step, 'id', '')}")
                    self.held[holder] = self.held.get(holder, 0) + count
                    self.chunks += 1
                return allocated
            case s.Read():
                if region is None:
                    return 0
                allocated = min(count, region.swapped) + (min(count, region.fresh)
                                                          if region.shared else 0)
                if whole:
                    region.swapped = 0
                return allocated
            case s.Fork():
                parent = self.procs.get(step.proc, {})
                if step.child in self.procs:
                    return 0  # the kernel refuses a used name
                present = 0
                child: dict[str, _Region] = {}
                for name, r in parent.items():
                    self.touches += r.pages
                    if not r.shared:
                        present += r.pages - r.fresh
                        r.protected = r.pages - r.fresh
                    child[name] = _Region(r.pages, r.shared, r.fresh, r.protected, r.swapped)
                self.procs[step.child] = child
                return present
            case s.Munmap():
                regions = self.procs.get(step.proc, {})
                gone = regions.pop(step.region, None)
                if gone is not None:
                    self.touches += gone.pages
                return 0
            case s.Exit():
                gone_regions = self.procs.pop(step.proc, {})
                self.touches += sum(r.pages for r in gone_regions.values())
                return 0
            case s.ClearRefs() | s.Mprotect():
                targets = list(self.procs.get(step.proc, {}).values())
                if isinstance(step, s.Mprotect):
                    targets = [region] if region is not None else []
                for r in targets:
                    self.touches += r.pages
                    r.protected = r.pages - r.fresh
                return 0
            case s.UffdWp():
                if region is not None and step.protect:
                    region.protected = min(region.pages, region.protected + count)
                return 0
            case s.Madvise():
                if region is None:
                    return 0
                if step.advice == "pageout":
                    region.swapped = min(region.pages, region.swapped + count)
                    self.paged_out += count
                elif step.advice == "dontneed":
                    region.fresh = min(region.pages, region.fresh + count)
                return 0
            case s.Release():
                self.held.pop(f"id {step.id}", None)
                return 0
            case s.DmaWrite() | s.DmaRead():
                self.touches += self.held.get(f"id {step.id}", 0)
                return 0
            case _:
                return 0

    def memory_bytes(self, frames: int) -> int:
        frame_bytes = BYTES_PER_FRAME + (4 if self.paged_out else 0)
        return (BYTES_PER_PTE * self.pte_peak + BYTES_PER_SHMEM_PAGE * self.shmem_pages
                + BYTES_PER_HELD_PAGE * self.held_peak + BYTES_PER_CHUNK * self.chunks_peak
                + 2 * frame_bytes * frames + TRANSIENT_BYTES_PER_PAGE * self.largest
                + BYTES_PER_SWAP_SLOT * self.paged_out)


_FIELDS = {"mmap": "pages", "fork": "proc", "exit": "proc", "munmap": "region",
           "clear_refs": "proc", "mprotect": "region", "release": "id", "dma_write": "id",
           "dma_read": "id"}


def _field(step: s.Step) -> str:
    return _FIELDS.get(step.op, "pages" if hasattr(step, "pages") else "op")


def scenario_footprint(scenario: s.Scenario, *, budget: Budget | None = None,
                       file: str | None = None) -> ScenarioFootprint:
    """Walk the steps; with ``budget``, raise :class:`BudgetExceeded` at the first step whose
    bounds do not fit it."""
    walk = _Walk()
    footprint = ScenarioFootprint()
    memory_limit = budget.memory_limit_bytes() if budget is not None else None
    for index, step in enumerate(scenario.steps):
        before = walk.structural()
        allocated = walk.allocations(step)
        walk.allocated += allocated
        walk.structural_peak = max(walk.structural_peak, before + allocated, walk.structural())
        walk.pte_peak = max(walk.pte_peak, walk.ptes())
        held = sum(walk.held.values())
        walk.held_peak = max(walk.held_peak, held)
        walk.chunks_peak = max(walk.chunks_peak, walk.chunks)
        walk.touches += held  # the oracles check every held reference after every step
        frames = min(walk.allocated, walk.structural_peak) + 1 + LRU_SLACK_FRAMES
        footprint.per_step.append(frames)
        footprint.frames = frames
        footprint.memory_bytes = walk.memory_bytes(frames)
        footprint.page_touches = walk.touches
        footprint.steps = index + 1
        if budget is not None:
            estimate = Estimate([Cost(path=("steps", index, _field(step)), what="",
                                      memory_bytes=footprint.memory_bytes,
                                      frames=frames - 1, page_touches=walk.touches)])
            try:
                budget.check(estimate, source=file, memory_limit=memory_limit)
            except BudgetExceeded as exc:
                pages = walk.pte_peak
                raise BudgetExceeded(
                    f"{exc.message.removesuffix('.')}; by this step: {pages:,} mapped pages "
                    f"({pages * 4096 / 2**30:,.1f} GiB simulated), {held:,} held",
                    path=exc.path, source=file, op=step.op) from None
    return footprint


def check_capacity(scenario: s.Scenario, file: str, budget: Budget | None = None) -> int:
    """Refuse the scenario (BudgetExceeded at the step that crosses the budget, default
    :meth:`Budget.from_env`) or return the frames bound to build its kernel model with."""
    limits = budget if budget is not None else Budget.from_env()
    return scenario_footprint(scenario, budget=limits, file=file).frames
