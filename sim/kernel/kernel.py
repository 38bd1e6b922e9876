"""The kernel model: frames, processes, references and the operations on them.

:class:`Kernel` owns all state of one simulated machine's memory management
and exposes the system calls and device actions that scenario scripts and
workloads perform (``mmap``, ``write``, ``fork``, ``clear_refs``, ``pin`` …).
The decisions live in the modules named after the kernel code they model
(``fault`` for do_wp_page and friends, ``fork`` for copy_page_range, ``gup``,
``swap``, ``proc``, ``protect``, ``madvise``); this class holds the shared
bookkeeping they use: taking and dropping references, the LRU-add batches, TLB
flush accounting and the correctness oracles.

Every operation takes page *index arrays* and works on them with numpy; none
loops over pages in Python.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cowsim.sim.errors import CapacityError, KernelOpError
from cowsim.sim.kernel import fault, fork, gup, madvise, oracles, proc, protect, swap
from cowsim.sim.kernel.counters import Counters
from cowsim.sim.kernel.generations import Generation, generation_for
from cowsim.sim.kernel.gup import Holder
from cowsim.sim.kernel.lru import LruAddBatches
from cowsim.sim.kernel.mm import MM, VMA, Process, Prot, Pte
from cowsim.sim.kernel.oracles import ReportedKeys, Violation
from cowsim.sim.kernel.pages import (
    RUNS_MIN_FRAMES,
    ZERO_PFN,
    FrameArray,
    FrameSet,
    IntArray,
    PageFrames,
    PageIndex,
    PG_lru_batch,
)
from cowsim.sim.kernel.swap import SwapSpace
from cowsim.sim.kernel.vmfault import FaultReport

DEFAULT_MAX_FRAMES = 1 << 27
"""Default bound on physical frames: 128 Mi frames = 512 GiB of simulated memory."""
DEFAULT_MAX_VIOLATIONS = 1000
"""Violation objects a kernel keeps by default; the violations_<kind> counters count all."""
MAX_REGION_PAGES = 1 << 30
"""No single region may exceed 2^30 pages (4 TiB): int32 frame numbers stay valid."""


def _no_zero(frames: FrameArray) -> FrameArray:
    """The frames less the zero page (which is never refcounted)."""
    if frames.size == 0 or int(np.minimum.reduce(frames)) > ZERO_PFN:
        return frames
    nonzero: FrameArray = frames[frames != ZERO_PFN]
    return nonzero


_NOT_LRU_BATCH = np.uint8(~PG_lru_batch & 0xFF)

_WRITABLE_DIRTY = int(Pte.RW) | int(Pte.DIRTY)
"""PTE bits that let a store complete without a fault or a dirty-bit update."""

_FLUSH_COUNTERS = {kind: f"tlb_flushes_{kind}" for kind in ("page", "range", "mm")}


@dataclass(slots=True)
class TlbFlush:
    """One TLB flush the model asked for: on which mm, how wide, from which CPU.  (Not
    frozen: a frozen dataclass costs a microsecond more per flush, one per COW fault.)"""

    mm: MM
    kind: str  # "page" | "range" | "mm"
    count: int  # how many flushes of this kind (e.g. one per copied page)
    pages: int  # pages covered by each (1 for "page")
    cpu: int
    remote_cpus: int


class Kernel:
    """Memory-management state of one machine under one kernel generation."""

    def __init__(
        self,
        generation: Generation | str = "6.8",
        *,
        max_frames: int = DEFAULT_MAX_FRAMES,
        on_tlb_flush: Callable[[TlbFlush], None] | None = None,
        max_violations: int = DEFAULT_MAX_VIOLATIONS,
    ) -> None:
        self.gen = generation if isinstance(generation, Generation) else generation_for(generation)
        self.frames = PageFrames(max_frames)
        self.swap = SwapSpace()
        self.lru = LruAddBatches(self.gen.lru_batch_pages)
        self.procs: dict[str, Process] = {}
        self.pipes: dict[str, Holder] = {}
        self.refs: dict[str, Holder] = {}
        self.counters = Counters()
        self.violations: list[Violation] = []
        """The first ``max_violations`` violations; ``counters["violations_<kind>"]`` count
        them all."""
        self.max_violations = max_violations
        self.reported = ReportedKeys()
        self.step = 0
        """The index of the operation being run, for violation reports."""
        self.on_tlb_flush = on_tlb_flush
        self._next_pid = 1

    # ------------------------------------------------------------------
    # processes and regions
    # ------------------------------------------------------------------
    def process(self, name: str, *, create: bool = False) -> Process:
        """The live process called ``name`` (created if asked and unknown)."""
        existing = self.procs.get(name)
        if existing is not None:
            if not existing.alive:
                raise KernelOpError("proc", f"process {name!r} has exited")
            return existing
        if not create:
            raise KernelOpError("proc", f"no process {name!r}")
        return self._new_process(name, MM())

    def _new_process(self, name: str, mm: MM) -> Process:
        if name in self.procs:
            raise KernelOpError("child", f"process name {name!r} is already used")
        created = Process(name=name, pid=self._next_pid, mm=mm)
        self._next_pid += 1
        self.procs[name] = created
        return created

    def vma(self, proc_name: str, region: str) -> tuple[Process, VMA]:
        owner = self.process(proc_name)
        found = owner.mm.vmas.get(region)
        if found is None:
            raise KernelOpError("region", f"region {region!r} is not mapped in {proc_name!r}")
        return owner, found

    @staticmethod
    def select(vma: VMA, pages: Sequence[int] | npt.ArrayLike | None) -> PageIndex:
        """Page indices of a region: all of it, or the given ones (checked, in order, unique)."""
        return vma.select(pages)

    # ------------------------------------------------------------------
    # references
    # ------------------------------------------------------------------
    def get_page(self, frames: FrameArray | FrameSet, amount: int = 1, *,
                 mapping: bool = False) -> None:
        """Take references (frames unique, no zero page); with ``mapping`` also a mapcount."""
        if not isinstance(frames, FrameSet) and frames.size < RUNS_MIN_FRAMES:
            few = _no_zero(frames)  # few frames: plain fancy indexing is the fastest
            self.frames.refcount[few] += amount
            if mapping:
                self.frames.mapcount[few] += 1
            return
        batch = frames if isinstance(frames, FrameSet) else FrameSet(_no_zero(frames))
        batch.add(self.frames.refcount, amount)
        if mapping:
            batch.add(self.frames.mapcount, 1)

    def put_page(self, frames: FrameArray, amount: int = 1, *, mapping: bool = False) -> None:
        """Drop references (and with ``mapping`` a mapcount); frames reaching refcount zero are
        freed (frames unique, zero page ignored)."""
        frames = _no_zero(frames)
        if frames.size == 0:
            return
        if frames.size < RUNS_MIN_FRAMES:  # few frames: plain fancy indexing is the fastest
            remaining = self.frames.refcount[frames] - amount
            self.frames.refcount[frames] = remaining
            if mapping:
                self.frames.mapcount[frames] -= 1
            dead = frames[remaining == 0]
        else:
            batch = FrameSet(frames)
            batch.add(self.frames.refcount, -amount)
            if mapping:
                batch.add(self.frames.mapcount, -1)
            span = batch.span
            if span is not None:  # exactly the frames start..stop-1 (an exit, a munmap)
                start, stop = span
                zero_refs = np.flatnonzero(self.frames.refcount[start:stop] == 0)
                dead = (zero_refs + start).astype(np.int32)  # (ascending: the order is free)
            else:
                dead = frames[batch.gather(self.frames.refcount) == 0]
        if dead.size:
            self.free_dead(dead)

    def free_dead(self, dead: FrameArray) -> None:
        """Free frames whose last reference :meth:`put_page` dropped (unique, none the zero
        page), forgetting the frame-keyed reports about them."""
        if self.reported.tracks_frames:
            self.reported.forget_frames(dead)
        self.frames.free(dead)
        self.counters.add("pages_freed", dead.size)

    def alloc_pages(self, count: int, flags: np.uint8, content: npt.ArrayLike = 0, *,
                    mapped: bool = False) -> FrameArray:
        """Allocate frames (``mapped``: with their first mapping and its reference)."""
        frames = self.frames.alloc(count, flags, content, mapped=mapped)
        self.counters.add("pages_allocated", count)
        return frames

    # ------------------------------------------------------------------
    # LRU-add batches
    # ------------------------------------------------------------------
    def lru_cache_add(self, frames: FrameArray, cpu: int) -> None:
        """lru_cache_add() for new pages, in order: the batch takes a reference on each."""
        if frames.size == 0:
            return
        old_flushed, new_kept = self.lru.add(cpu, frames)
        self.frames.set(new_kept, PG_lru_batch)
        if new_kept.size < RUNS_MIN_FRAMES:
            self.frames.refcount[new_kept] += 1  # (never the zero page: it is on no LRU)
        else:
            self.get_page(new_kept)
        self._release_batch_refs(old_flushed)

    def lru_add_drain(self, cpu: int | None = None) -> None:
        """lru_add_drain(): flush one CPU's batch, or every CPU's."""
        for each in [cpu] if cpu is not None else self.lru.cpus():
            self._release_batch_refs(self.lru.drain(each))

    def _release_batch_refs(self, frames: FrameArray) -> None:
        if not frames.size:
            return
        if frames.size >= RUNS_MIN_FRAMES:
            self.frames.clear(frames, PG_lru_batch)
            self.put_page(frames)
            return
        # A batch's worth (the common case): put_page() of frames that are never the
        # zero page, by plain fancy indexing.
        pg = self.frames
        pg.flags[frames] &= _NOT_LRU_BATCH
        remaining = pg.refcount[frames] - 1
        pg.refcount[frames] = remaining
        if int(remaining.min()) == 0:
            self.free_dead(frames[remaining == 0])

    # ------------------------------------------------------------------
    # TLB flushes
    # ------------------------------------------------------------------
    def flush_tlb(self, mm: MM, kind: str, *, count: int = 1, pages: int = 1, cpu: int = 0) -> None:
        """Record TLB flushes (``flush_tlb_page``, ``flush_tlb_range``, ``flush_tlb_mm``) and the
        IPIs they need."""
        if count <= 0:
            return
        remote = len(mm.cpus) - (cpu in mm.cpus)  # the mask less the flushing CPU
        self.counters.add("tlb_flushes", count)
        self.counters.add(_FLUSH_COUNTERS[kind], count)
        self.counters.add("tlb_flush_ipis", count * remote)
        if self.on_tlb_flush is not None:
            self.on_tlb_flush(TlbFlush(mm, kind, count, pages, cpu, remote))

    # ------------------------------------------------------------------
    # violations
    # ------------------------------------------------------------------
    def report(self, kind: str, group: tuple[str, ...], keys: IntArray, *,
               frame_keyed: bool = False) -> IntArray:
        """Violations of ``kind`` at ``keys`` (frame or page numbers) of ``group``, each
        reported once per (kind, group, key); a frame-keyed one is forgotten when the frame
        is freed (its number may then be reused).  Counts every new one in
        ``violations_<kind>`` and returns the positions in ``keys`` of those to keep as
        :class:`Violation` objects (while fewer than ``max_violations`` are kept), which the
        caller appends to :attr:`violations`."""
        fresh = self.reported.first_time((kind, *group), keys, frame_keyed=frame_keyed)
        if fresh.size == 0:
            return fresh
        self.counters.add(f"violations_{kind}", fresh.size)
        room = max(0, self.max_violations - len(self.violations))
        return fresh[:room]

    # ------------------------------------------------------------------
    # system calls
    # ------------------------------------------------------------------
    def mmap(self, proc_name: str, region: str, npages: int, *, shared: bool = False,
             populate: bool = False, cpu: int = 0) -> None:
        """mmap(MAP_PRIVATE|MAP_ANONYMOUS) (or MAP_SHARED) of ``npages`` pages."""
        if not 0 < npages <= MAX_REGION_PAGES:
            raise KernelOpError("pages", f"a region needs 1 to {MAX_REGION_PAGES:,} pages, not {npages}")
        owner = self.process(proc_name, create=True)
        if region in owner.mm.vmas:
            raise KernelOpError("region", f"region {region!r} is already mapped in {proc_name!r}")
        if self.frames.nr_in_use + npages > self.frames.max_frames and populate:
            raise CapacityError(
                f"populating {npages:,} pages exceeds the model's {self.frames.max_frames:,} frames"
            )
        vma = VMA.new(region, npages, shared)
        owner.mm.vmas[region] = vma
        if populate:
            # MAP_POPULATE faults every page in for write (zero-filled pages).
            fault.fault_in_writable(self, owner, vma, self.select(vma, None), cpu=cpu)

    def munmap(self, proc_name: str, region: str, *, cpu: int = 0) -> None:
        owner, vma = self.vma(proc_name, region)
        madvise.zap_pte_range(self, owner, vma, None, cpu=cpu)
        madvise.release_vma(self, vma)
        del owner.mm.vmas[region]

    def write(self, proc_name: str, region: str, pages: npt.ArrayLike | None, value: int,
              *, cpu: int = 0) -> FaultReport:
        """The CPU stores ``value`` into each page, faulting as needed.  Returns the faults
        taken, per selected page (ascending)."""
        owner, vma = self.vma(proc_name, region)
        index = vma.select(pages)
        if vma.prot is not Prot.READ_WRITE:
            raise KernelOpError(
                "region", f"{proc_name!r} writes region {region!r} mapped PROT_{vma.prot.name}: SIGSEGV"
            )
        report = fault.fault_in_writable(self, owner, vma, index, cpu=cpu, store=True)
        frames = vma.pfn if index.size == vma.npages else vma.pfn[index]  # (read, not kept)
        oracles.check_store(self, owner, frames, index, vma, writer_label=proc_name, mapped=True)
        if frames.size < RUNS_MIN_FRAMES:
            self.frames.content[frames] = value
        else:  # (a whole region written at once: its frames are usually a few slices)
            FrameSet(frames).assign(self.frames.content, value)
        return report

    def try_store(self, proc_name: str, region: str, pages: npt.NDArray[np.int64], value: int
                  ) -> bool:
        """A CPU store of ``value`` into ``pages`` (any order, repeats allowed) that the MMU
        completes alone: every PTE present, writable and already dirty, and no frame with a
        reference besides its one mapping (so no pipe, pin or other process can see the
        store, and the leak oracle has nothing to check).  Returns False, having changed
        nothing, when any page needs more: then :meth:`write` is the store.  For workloads
        whose steady state is stores to pages they own; equal to :meth:`write` in effect."""
        vma = self.process(proc_name).mm.vmas.get(region)
        if vma is None or vma.prot is not Prot.READ_WRITE or vma.shared or pages.size == 0:
            return False
        if int(np.minimum.reduce(pages)) < 0 or int(np.maximum.reduce(pages)) >= vma.npages:
            return False
        if ~int(np.bitwise_and.reduce(vma.pte[pages])) & _WRITABLE_DIRTY:
            return False
        frames = vma.pfn[pages]
        if int(np.maximum.reduce(self.frames.refcount[frames])) > 1:
            return False
        self.frames.content[frames] = value
        return True

    def read(self, proc_name: str, region: str, pages: npt.ArrayLike | None = None,
             *, cpu: int = 0) -> npt.NDArray[np.uint32]:
        """The CPU loads each page (faulting as needed); returns the values seen."""
        return self.read_with_faults(proc_name, region, pages, cpu=cpu)[0]

    def read_with_faults(self, proc_name: str, region: str, pages: npt.ArrayLike | None = None,
                         *, cpu: int = 0) -> tuple[npt.NDArray[np.uint32], FaultReport]:
        """:meth:`read`, also returning the faults taken per selected page."""
        owner, vma = self.vma(proc_name, region)
        index = vma.select(pages)
        if vma.prot is Prot.NONE:
            raise KernelOpError("region", f"{proc_name!r} reads region {region!r} mapped PROT_NONE: SIGSEGV")
        report = fault.fault_in_readable(self, owner, vma, index, cpu=cpu)
        values: npt.NDArray[np.uint32] = self.frames.content[vma.pfn[index]]
        return values, report

    def fork(self, proc_name: str, child_name: str, *, cpu: int = 0) -> None:
        parent = self.process(proc_name)
        child = self._new_process(child_name, MM())
        fork.dup_mmap(self, parent, child, cpu=cpu)

    def exit(self, proc_name: str, *, cpu: int = 0) -> None:
        owner = self.process(proc_name)
        any_present = False
        for vma in list(owner.mm.vmas.values()):
            any_present |= madvise.zap_pte_range(self, owner, vma, None, cpu=cpu,
                                             flush=False)
            madvise.release_vma(self, vma)
        if any_present:
            self.flush_tlb(owner.mm, "mm", cpu=cpu)
        owner.mm.vmas.clear()
        owner.alive = False

    def mprotect(self, proc_name: str, region: str, prot: Prot | str, *, cpu: int = 0) -> None:
        owner, vma = self.vma(proc_name, region)
        protect.mprotect(self, owner, vma, Prot(prot), cpu=cpu)

    def madvise(self, proc_name: str, region: str, advice: str,
                pages: npt.ArrayLike | None = None, *, cpu: int = 0) -> None:
        owner, vma = self.vma(proc_name, region)
        madvise.madvise(self, owner, vma, advice, pages, cpu=cpu)

    def clear_refs(self, proc_name: str, kind: str = "soft_dirty", *, cpu: int = 0) -> None:
        owner = self.process(proc_name)
        if kind != "soft_dirty":
            raise KernelOpError("type", f"clear_refs type {kind!r} is not modelled (only soft_dirty)")
        proc.clear_refs_write(self, owner, cpu=cpu)

    def pagemap(self, proc_name: str, region: str,
                pages: npt.ArrayLike | None = None) -> dict[str, npt.NDArray[np.bool_]]:
        owner, vma = self.vma(proc_name, region)
        return proc.pagemap_read(self, owner, vma, self.select(vma, pages))

    def uffd_register(self, proc_name: str, region: str) -> None:
        _owner, vma = self.vma(proc_name, region)
        protect.uffd_register(vma)

    def uffd_wp(self, proc_name: str, region: str, pages: npt.ArrayLike | None, protect_: bool,
                *, cpu: int = 0) -> None:
        owner, vma = self.vma(proc_name, region)
        protect.uffd_writeprotect(self, owner, vma, self.select(vma, pages), protect_, cpu=cpu)

    # -- GUP users (each returns the faults GUP took, per selected page) --------
    def gup(self, proc_name: str, region: str, pages: npt.ArrayLike | None, ref_id: str,
            *, write: bool = False, cpu: int = 0) -> FaultReport:
        """get_user_pages() with FOLL_GET, references held under ``ref_id``."""
        return self._take(proc_name, region, pages, ref_id, label="gup", pin=False, write=write,
                          longterm=False, cpu=cpu)

    def pin(self, proc_name: str, region: str, pages: npt.ArrayLike | None, ref_id: str,
            *, write: bool = True, longterm: bool = True, cpu: int = 0) -> FaultReport:
        """pin_user_pages() with FOLL_PIN, pins held under ``ref_id``."""
        return self._take(proc_name, region, pages, ref_id, label="pin", pin=True, write=write,
                          longterm=longterm, cpu=cpu)

    def odirect_read(self, proc_name: str, region: str, pages: npt.ArrayLike | None, ref_id: str,
                     *, cpu: int = 0) -> FaultReport:
        """Start an O_DIRECT read into the pages: GUP for write (FOLL_PIN from 6.4)."""
        return self._take(proc_name, region, pages, ref_id, label="odirect_read",
                          pin=self.gen.odirect_uses_pin, write=True, longterm=False, cpu=cpu)

    def odirect_write(self, proc_name: str, region: str, pages: npt.ArrayLike | None, ref_id: str,
                      *, cpu: int = 0) -> FaultReport:
        """Start an O_DIRECT write from the pages: read-only GUP (FOLL_PIN from 6.4)."""
        return self._take(proc_name, region, pages, ref_id, label="odirect_write",
                          pin=self.gen.odirect_uses_pin, write=False, longterm=False, cpu=cpu)

    def io_uring_register(self, proc_name: str, region: str, pages: npt.ArrayLike | None,
                          ref_id: str, *, cpu: int = 0) -> FaultReport:
        """io_uring_register_buffers(): FOLL_PIN|FOLL_WRITE|FOLL_LONGTERM."""
        return self._take(proc_name, region, pages, ref_id, label="io_uring", pin=True,
                          write=True, longterm=True, cpu=cpu)

    def vmsplice(self, proc_name: str, region: str, pages: npt.ArrayLike | None, pipe: str,
                 *, cpu: int = 0) -> FaultReport:
        """vmsplice() the pages into a pipe: R/O FOLL_GET references the pipe holds."""
        owner, vma = self.vma(proc_name, region)
        index = vma.select(pages)
        gup.check_vma_flags(vma, write=False)
        holder = self.pipes.setdefault(pipe, Holder(name=pipe, is_pipe=True))
        return gup.get_user_pages(self, owner, vma, index, holder, label="vmsplice",
                                  pin=False, write=False, longterm=False, cpu=cpu)

    def _take(self, proc_name: str, region: str, pages: npt.ArrayLike | None, ref_id: str, *,
              label: str, pin: bool, write: bool, longterm: bool, cpu: int) -> FaultReport:
        owner, vma = self.vma(proc_name, region)
        index = vma.select(pages)
        gup.check_vma_flags(vma, write)
        holder = self.refs.setdefault(ref_id, Holder(name=ref_id, is_pipe=False))
        return gup.get_user_pages(self, owner, vma, index, holder, label=label,
                                  pin=pin, write=write, longterm=longterm, cpu=cpu)

    def release(self, ref_id: str) -> None:
        """put_page()/unpin_user_page() for everything held under ``ref_id``."""
        holder = self.refs.pop(ref_id, None)
        if holder is None:
            raise KernelOpError("id", f"nothing is held under id {ref_id!r}")
        gup.release(self, holder)

    def holder(self, ref_id: str) -> Holder:
        found = self.refs.get(ref_id)
        if found is None:
            raise KernelOpError("id", f"nothing is held under id {ref_id!r}")
        return found

    def pipe(self, name: str) -> Holder:
        found = self.pipes.get(name)
        if found is None:
            raise KernelOpError("pipe", f"no pipe {name!r}")
        return found

    def dma_write(self, ref_id: str, value: int, pages: npt.ArrayLike | None = None) -> None:
        """The device writes ``value`` into every frame held under ``ref_id``, or into those
        of ``pages`` only: page numbers of the region the id holds, all of them held
        (else KernelOpError("pages"))."""
        gup.dma_write(self, self.holder(ref_id), value, pages)

    def dma_read(self, ref_id: str, pages: npt.ArrayLike | None = None) -> npt.NDArray[np.uint32]:
        """What the device reads from the frames held under ``ref_id`` (of ``pages`` only, as
        for :meth:`dma_write`), chunk by chunk."""
        return gup.dma_read(self, self.holder(ref_id), pages)

    # -- observation without side effects ----------------------------------
    def frames_at(self, proc_name: str, region: str,
                  pages: npt.ArrayLike | None = None) -> FrameArray:
        """The frame each page maps now (a swapped page: its swap-cache frame), or -1."""
        _owner, vma = self.vma(proc_name, region)
        index = self.select(vma, pages)
        frames = vma.pfn[index].copy()
        swapped = vma.swapped(index)
        frames[swapped] = self.swap.cache_frame[frames[swapped]]
        return frames

    def peek(self, proc_name: str, region: str,
             pages: npt.ArrayLike | None = None) -> npt.NDArray[np.uint32]:
        """What a load would return, without faulting: 0 for untouched pages, swap data for
        pages out on swap."""
        _owner, vma = self.vma(proc_name, region)
        index = self.select(vma, pages)
        frames = self.frames_at(proc_name, region, index)
        values = self.frames.content[np.where(frames > 0, frames, 0)]
        out_on_swap = vma.swapped(index) & (frames < 0)
        values[out_on_swap] = self.swap.content[vma.pfn[index][out_on_swap]]
        return values

    # ------------------------------------------------------------------
    # oracles and accounting
    # ------------------------------------------------------------------
    def end_step(self, ref_ids: Sequence[str] | None = None) -> None:
        """Run the after-step oracles (pin_diverged, stale_pin), on every reference or on
        those held under ``ref_ids``."""
        if ref_ids is None:
            oracles.check_pins(self)
        else:
            oracles.check_pins(self, [self.refs[i] for i in ref_ids if i in self.refs])

    def model_nbytes(self) -> int:
        """Bytes of numpy state held by the model (frames, page tables, swap, batches)."""
        total = self.frames.nbytes() + self.swap.nbytes() + self.lru.nbytes()
        for owner in self.procs.values():
            for vma in owner.mm.vmas.values():
                total += vma.nbytes()
        return total


__all__ = ["DEFAULT_MAX_VIOLATIONS", "FaultReport", "Kernel", "KernelOpError", "PageIndex", "TlbFlush",
           "swap"]
