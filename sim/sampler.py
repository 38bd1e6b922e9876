"""The metrics sampler: memory in use and shared versus exclusive pages, every interval.

Every ``metrics_interval`` of simulated time the sampler records the run's
physical memory in use and, per process, how many of its resident pages are
*shared* (mapped by more than one process: what fork left to copy) and how
many are *exclusive*.  These are the time series of ``--out``'s series/*.csv.

Counting shared pages reads the mapcount of every resident page, a pass over
the whole resident set (16.7 M pages for 64 GiB).  A sample whose inputs cannot
have changed since the previous one is not recomputed: mappings only change
through faults that map a page, copies, frees, allocations, swap-outs, TLB-flushing
operations (fork, munmap, exit, mprotect) or a process coming or going, all of which
move the kernel's counters (:data:`MAPPING_COUNTERS`); when none moved, the previous
sample is recorded again.

At the same instants it samples the run's :class:`~cowsim.sim.timeline.Timeline`
(cumulative counters and histogram buckets, a few dict reads), so a run's COW rate
and latency quantiles can be drawn over its simulated time.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import numpy.typing as npt

from cowsim.sim.engine import PAGE_SIZE, Simulation
from cowsim.sim.kernel.mm import VMA, Pte
from cowsim.sim.kernel.pages import ZERO_PFN, FrameArray

__all__ = ["MAPPING_COUNTERS", "count_multiply_mapped", "multiply_mapped_mask", "sampler",
           "shared_and_exclusive"]

MAPPING_COUNTERS = ("faults_anonymous", "faults_shmem", "faults_swap", "cow_copies",
                    "pages_allocated", "pages_freed", "swap_outs", "tlb_flushes")
"""Kernel counters at least one of which moves whenever a page's mapping or a frame's
mapcount changes: a fault that maps a page (anonymous, shmem, swap-in), a copy, an
allocation or a free, a swap-out, and every operation that flushes a TLB (fork, munmap,
exit, mprotect, a copy).  A write fault that reuses its page, a resolved userfault or an
unshare that only marks the page exclusive moves none of them, and changes no sample."""


CHUNK_PAGES = 1 << 18
"""Pages counted per pass of :func:`count_multiply_mapped` (its temporaries stay in cache)."""


def multiply_mapped_mask(mapcount: npt.NDArray[np.int32]) -> npt.NDArray[np.bool_]:
    """Per frame: mapped more than once.  One pass over the frame table, shared by every
    process a sample counts."""
    mask: npt.NDArray[np.bool_] = mapcount > 1
    return mask


def count_multiply_mapped(mapcount: npt.NDArray[np.int32], frames: FrameArray,
                          chunk_pages: int = CHUNK_PAGES, *,
                          mask: npt.NDArray[np.bool_] | None = None) -> int:
    """How many of ``frames`` have a mapcount above one (``mask``: their
    :func:`multiply_mapped_mask`, when the caller has it already).

    A gather of int32 mapcounts at 16.7 M frames is memory-bound; a gather of one byte
    per frame from the mask is four times less memory and, for a region populated at
    once whose frames are mostly consecutive, nearly sequential.  Chunks keep the
    gathered bytes in cache.
    """
    if mask is None:
        mask = multiply_mapped_mask(mapcount)
    shared = 0
    for start in range(0, frames.size, chunk_pages):
        shared += int(np.count_nonzero(mask.take(frames[start : start + chunk_pages])))
    return shared


def shared_and_exclusive(sim: Simulation, vma: VMA,
                         mask: npt.NDArray[np.bool_] | None = None) -> tuple[int, int]:
    """(shared, exclusive) resident pages of a VMA: present PTEs mapping a real frame,
    split by whether the frame has more than one mapping (``mask``: the frames'
    :func:`multiply_mapped_mask`, if the caller has it)."""
    pfn = vma.pfn
    frames = sim.kernel.frames
    if pfn.size and int(pfn.min()) > ZERO_PFN and int(vma.pte.max()) < Pte.SWAP:
        mapped = pfn  # the common case, two reductions: every page resident, no zero page
    else:
        mapped = vma.mapped_frames()
    shared = count_multiply_mapped(frames.mapcount, mapped, mask=mask)
    return shared, int(mapped.size) - shared


def _mapping_key(sim: Simulation) -> tuple[int, ...]:
    counters = sim.kernel.counters
    alive = sum(1 for owner in sim.kernel.procs.values() if owner.alive)
    return (*(counters[name] for name in MAPPING_COUNTERS), len(sim.kernel.procs), alive)


def sampler(sim: Simulation) -> Generator[Any, Any, None]:
    """The simpy process that samples every ``metrics_interval``."""
    interval = sim.spec.metrics_interval
    key: tuple[int, ...] | None = None
    samples: dict[str, tuple[float, float]] = {}
    while True:
        now = sim.env.now
        sim.recorder.sample("memory_bytes", now, float(sim.kernel.frames.nr_in_use * PAGE_SIZE))
        current = _mapping_key(sim)
        if current != key or not sim.shortcuts:
            key = current
            samples = {}
            mask = multiply_mapped_mask(sim.kernel.frames.mapcount)
            for name, state in sim.procs.items():
                owner = sim.kernel.procs.get(name)
                vma = owner.mm.vmas.get(state.region) if owner is not None and owner.alive else None
                if vma is not None:
                    shared_pages, exclusive_pages = shared_and_exclusive(sim, vma, mask)
                    samples[name] = (float(shared_pages), float(exclusive_pages))
        for name, (shared, exclusive) in samples.items():
            sim.recorder.sample("shared_pages", now, shared, process=name)
            sim.recorder.sample("exclusive_pages", now, exclusive, process=name)
        sim.timeline.sample(sim, now)
        sim.note_memory()
        yield sim.env.timeout(interval)
