"""Page faults: handle_pte_fault, do_anonymous_page, do_wp_page (reuse or copy), unshare.

A store needs a present, writable PTE.  When there is none the CPU faults and
the kernel takes one of these paths (``handle_pte_fault``):

* ``pte_none`` in a private region → ``do_anonymous_page``: a read maps the
  shared zero page read-only; a write allocates a zeroed page, exclusive.
* a swap entry → ``do_swap_page`` (swap.py).
* a userfaultfd write-protected PTE → the userfault is delivered first; the
  scenario's monitor resolves it by un-protecting the page (protect.py).
* a present read-only PTE → ``do_wp_page``: in a shared mapping just make it
  writable; in a private one decide **reuse** (make the PTE writable, no copy,
  no TLB flush) or **copy** (allocate, copy 4 KiB, ``ptep_clear_flush`` the old
  PTE, map the copy).  That decision is the one the kernel changed:

  ========  ==========================================================
  ≤5.8      reuse iff mapcount + swap count <= 1 (``reuse_swap_page``)
  5.9–5.17  reuse iff refcount == 1 and mapcount == 1
  5.18      drain the local LRU-add batch, free the swap cache, then
            reuse iff refcount == 1
  5.19+     reuse PageAnonExclusive pages at once; else as 5.18 and mark
            the page exclusive on reuse
  ========  ==========================================================

``FAULT_FLAG_UNSHARE`` (5.19+, a R/O pin of a maybe-shared anonymous page)
runs the same decision but never makes the PTE writable: a reuse only marks
the page exclusive, a copy is mapped read-only.

Order matters only through the per-CPU LRU-add batch: a new page enters it
and, when it fills, the batch flushes every page it held, which changes
``page_count()`` of pages later in the same operation.  Pages are therefore
handled in runs: each page whose frame sits in a batch is a run of its own,
and the pages between them are one vectorized run, exactly as a page-by-page
walk would see them.

Every entry point (:func:`fault_in_writable`, :func:`fault_in_readable`,
:func:`unshare`) tells its caller what it did per page: a
:class:`~cowsim.sim.kernel.vmfault.FaultReport` of
:class:`~cowsim.sim.kernel.vmfault.FaultFlags`.  The handlers share one
:class:`~cowsim.sim.kernel.vmfault.VmFault` (``struct vm_fault``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from cowsim.sim.kernel import protect, swap
from cowsim.sim.kernel.generations import WpReuse
from cowsim.sim.kernel.mm import (
    PTE_WRITTEN,
    VM_SOFTDIRTY,
    VMA,
    WP_CAUSE_MASK,
    WP_CAUSE_SHIFT,
    Pte,
    PteArray,
    WpCause,
    cause_of,
    with_cause,
)
from cowsim.sim.kernel.pages import (
    RUNS_MIN_FRAMES,
    ZERO_PFN,
    FrameArray,
    PageIndex,
    PG_anon,
    PG_anon_exclusive,
    PG_lru_batch,
    PG_swapcache,
)
from cowsim.sim.kernel.vmfault import FaultFlags, FaultReport, FlagArray, VmFault

if TYPE_CHECKING:
    from cowsim.sim.kernel.kernel import Kernel
    from cowsim.sim.kernel.mm import Process


_CAUSE_NAMES = {
    WpCause.FORK: "fork",
    WpCause.CLEAR_REFS: "clear_refs",
    WpCause.MPROTECT: "mprotect",
    WpCause.UFFD_WP: "uffd_wp",
    WpCause.SWAPIN: "swapin",
    WpCause.UNSHARE: "unshare",
}
_CAUSE_COUNTERS = tuple((int(cause), f"cow_copies_{name}") for cause, name in _CAUSE_NAMES.items())
_CAUSE_COUNTER_OF = dict(_CAUSE_COUNTERS)
_CAUSE_BITS = int(WP_CAUSE_MASK)
_COPY_PAGE_FLAGS = {False: np.uint8(PG_anon), True: np.uint8(PG_anon | PG_anon_exclusive)}
"""The flags of a copy, by whether the generation marks new anonymous pages exclusive."""


_RW = Pte.RW.u16
_DIRTY = Pte.DIRTY.u16
_SWAP = Pte.SWAP.u16
_UFFD_WP = Pte.UFFD_WP.u16
# Python ints, for tests of one reduced value (a numpy scalar operation costs more).
_RW_BIT = int(Pte.RW)
_DIRTY_BIT = int(Pte.DIRTY)
_SWAP_OR_UFFD_WP = int(Pte.SWAP | Pte.UFFD_WP)
_LRU_BATCH_BIT = int(PG_lru_batch)
_SWAPCACHE_BIT = int(PG_swapcache)
_BATCH_OR_SWAPCACHE = int(PG_lru_batch | PG_swapcache)
_ANONYMOUS = FaultFlags.ANONYMOUS.u8
_ZERO_READ = (FaultFlags.ANONYMOUS | FaultFlags.ZERO_PAGE).u8
_SHMEM = FaultFlags.SHMEM.u8
_SWAPPED = FaultFlags.SWAP.u8
_UFFD = FaultFlags.UFFD_WP.u8
_REUSE = FaultFlags.WP_REUSE.u8
_COPY = FaultFlags.COW_COPY.u8
_ZERO_COPY = (FaultFlags.COW_COPY | FaultFlags.ZERO_PAGE).u8
_UNSHARE = FaultFlags.UNSHARE.u8


def split_runs(k: Kernel, vma: VMA, pages: PageIndex) -> Iterator[PageIndex]:
    """Consecutive runs of ``pages`` to handle in order, so that LRU-batch effects stay ordered.

    Every page whose current frame (or swap-cache frame) is in an LRU-add
    batch forms a run of its own; the pages between them form one run each.
    The runs are produced lazily: handling one run changes the batches.
    """
    if pages.size == 0:
        return
    if pages.size == vma.npages and int(vma.pfn.max()) < 0:
        yield pages  # a first touch of the whole VMA (read in place): no frame in a batch
        return
    pfn = vma.pfn[pages]  # (a copy: decision_frames may write into it)
    if pfn.max() < 0:  # every PTE empty (a first touch): no frame to be in a batch
        yield pages
        return
    frames = decision_frames(k, vma, pages, pfn)
    batched = k.frames.flags[np.maximum(frames, 0)] & PG_lru_batch
    sensitive = np.flatnonzero(batched)  # frame 0 (the zero page, and -1 clipped) never is
    if sensitive.size == 0:
        yield pages
        return
    start = 0
    for position in sensitive.tolist():  # at most one LRU batch's worth per CPU
        if position > start:
            yield pages[start:position]
        yield pages[position : position + 1]
        start = position + 1
    if start < pages.size:
        yield pages[start:]


def decision_frames(k: Kernel, vma: VMA, pages: PageIndex,
                    pfn: FrameArray | None = None) -> FrameArray:
    """The frame each page's fault decision reads: the mapped one, or the swap-cache one.
    ``pfn``: ``vma.pfn[pages]`` when the caller has it already (it is updated in place)."""
    frames = vma.pfn[pages] if pfn is None else pfn
    swapped = vma.swapped(pages)
    if np.count_nonzero(swapped):
        frames[swapped] = k.swap.cache_frame[frames[swapped]]
    return frames


def fault_in_writable(k: Kernel, owner: Process, vma: VMA, pages: PageIndex, cpu: int, *,
                      store: bool = False) -> FaultReport:
    """faultin_page() with FOLL_WRITE: fault until every page has a present, writable PTE.
    With ``store`` (a CPU store) the hardware then sets the dirty bits (:func:`mark_written`).
    ``pages`` ascending and unique; the report is aligned with them."""
    if pages.size == 0:
        return FaultReport(pages)
    pte = vma.pte[pages]
    common = int(np.bitwise_and.reduce(pte))
    if common & _RW_BIT:
        # The hot path: every PTE is writable already, nothing faults.
        if store and not common & _DIRTY_BIT:
            vma.pte[pages] = pte | _DIRTY
        return FaultReport(pages)
    # Only the pages without a writable PTE fault (only present PTEs carry RW); the
    # writable ones change nothing, so they neither join nor split the runs.
    needs_fault = (pte & _RW) == 0
    nr_faulting = np.count_nonzero(needs_fault)
    flags = np.zeros(pages.size, dtype=np.uint8)
    faulting, faulting_flags = pages, flags
    if nr_faulting < pages.size:
        faulting, faulting_flags = pages[needs_fault], np.zeros(nr_faulting, dtype=np.uint8)
    vmf = VmFault(k, owner, vma, cpu, write=True)
    if not _wp_faults_at_once(vmf, faulting, pte if faulting is pages else pte[needs_fault],
                              faulting_flags):
        offset = 0
        for run in split_runs(k, vma, faulting):
            handle_pte_fault(vmf, run, faulting_flags[offset : offset + run.size])
            offset += run.size
    if faulting_flags is not flags:
        flags[needs_fault] = faulting_flags
    if store:
        mark_written(vma, pages)
    return FaultReport(pages, flags)


def _wp_faults_at_once(vmf: VmFault, pages: PageIndex, pte: PteArray, flags: FlagArray) -> bool:
    """The most common write fault, taken in one step if it applies: every page a present,
    read-only PTE of an anonymous page in a private VMA (no swap entry, no userfault, no
    zero page) whose frame is in no LRU-add batch — then the pages are one run
    (:func:`split_runs`) of write-protect faults (:func:`handle_pte_fault`), and what
    was read to see so is not read again.  Returns whether it applied."""
    k, vma = vmf.k, vmf.vma
    if vma.shared or int(np.bitwise_or.reduce(pte)) & _SWAP_OR_UFFD_WP:
        return False
    whole = pages.size == vma.npages  # (ascending and unique: every page of the VMA)
    frames = vma.pfn if whole else vma.pfn[pages]
    if int(frames.min()) <= ZERO_PFN:
        return False
    if whole:
        frames = frames.copy()  # the handlers remap vma.pfn; keep the old frames
    page_flags = k.frames.flags[frames]
    any_flags = int(np.bitwise_or.reduce(page_flags))
    if any_flags & _LRU_BATCH_BIT:
        return False
    k.counters.fault("wp", pages.size)
    if pages.size < RUNS_MIN_FRAMES and not any_flags & _SWAPCACHE_BIT:
        flags[:] = _wp_copy_few(vmf, pages, frames, page_flags, pte)
        return True
    flags[:], copied = do_wp_page(vmf, pages, frames=frames, page_flags=page_flags, pte=pte,
                                  zero_free=True)
    k.lru_cache_add(copied, vmf.cpu)  # the copies, in page order
    return True


def _wp_copy_few(vmf: VmFault, pages: PageIndex, frames: FrameArray,
                 page_flags: npt.NDArray[np.uint8], pte: PteArray) -> FlagArray:
    """:func:`do_wp_page` then :func:`~cowsim.sim.kernel.kernel.Kernel.lru_cache_add` of
    the copies, for the few write-protect faults of a tick (fewer than ``RUNS_MIN_FRAMES``)
    that :func:`_wp_faults_at_once` found: anonymous pages in no LRU-add batch nor the swap
    cache (so the reuse decision changes nothing), not the zero page.

    The same steps in the same order — the reuse decision, wp_page_reuse(), then
    wp_page_copy() (allocate, copy, map, flush_tlb_page, put_page() of the old page) and
    the copies' entry into the LRU-add batch — with each array read once: the refcounts
    read for the decision are the ones put_page() lowers, the PTEs the caller read are
    the ones wp_page_reuse() rewrites, and copies from one cause (a tick's usually are)
    are counted without a histogram.  Returns each page's flags."""
    k, vma = vmf.k, vmf.vma
    pg = k.frames
    refcount = pg.refcount[frames]
    reuse = wp_can_reuse_anon_folio(k, frames, vmf.cpu, page_flags, refcount)
    nr_reused = int(np.count_nonzero(reuse))
    if nr_reused:
        flags = np.where(reuse, _REUSE, _COPY).astype(np.uint8, copy=False)
        # wp_page_reuse()
        every = nr_reused == pages.size
        reused_frames = frames if every else frames[reuse]
        if k.gen.anon_exclusive:
            pg.flags[reused_frames] |= PG_anon_exclusive
        vma.pte[pages if every else pages[reuse]] = ((pte if every else pte[reuse])
                                                     & ~WP_CAUSE_MASK) | PTE_WRITTEN
        k.counters.add("wp_reuses", nr_reused)
        if every:
            return flags
        copy = ~reuse
        pages, frames, pte, refcount = pages[copy], frames[copy], pte[copy], refcount[copy]
    else:
        flags = np.full(pages.size, _COPY, dtype=np.uint8)
    # wp_page_copy(): every old page is an anonymous page (not the zero page)
    count = int(pages.size)
    k.counters.add("cow_copies", count)
    causes = int(np.bitwise_or.reduce(pte)) & _CAUSE_BITS
    if causes == int(np.bitwise_and.reduce(pte)) & _CAUSE_BITS:  # one cause (the usual)
        name = _CAUSE_COUNTER_OF.get(causes >> WP_CAUSE_SHIFT)
        if name is not None:
            k.counters.add(name, count)
    else:
        by_cause = np.bincount(cause_of(pte), minlength=8).tolist()
        for cause, name in _CAUSE_COUNTERS:
            if by_cause[cause]:
                k.counters.add(name, by_cause[cause])
    new = k.alloc_pages(count, _COPY_PAGE_FLAGS[k.gen.anon_exclusive], pg.content[frames],
                        mapped=True)
    vma.pte[pages] = PTE_WRITTEN
    vma.pfn[pages] = new
    k.flush_tlb(vmf.owner.mm, "page", count=count, cpu=vmf.cpu)
    # put_page() of the old pages: each loses this mapping and its reference
    refcount -= 1
    pg.refcount[frames] = refcount
    pg.mapcount[frames] -= 1
    if int(refcount.min()) == 0:
        k.free_dead(frames[refcount == 0])
    # lru_cache_add() of the copies, in page order
    old_flushed, new_kept = k.lru.add(vmf.cpu, new)
    if new_kept.size:
        pg.flags[new_kept] |= PG_lru_batch
        pg.refcount[new_kept] += 1
    k._release_batch_refs(old_flushed)
    return flags


def fault_in_readable(k: Kernel, owner: Process, vma: VMA, pages: PageIndex,
                      cpu: int) -> FaultReport:
    """faultin_page() without FOLL_WRITE, or a load: fault until every page has a present
    PTE.  No reuse decision is taken, so the pages are handled in one run."""
    if pages.size == 0 or (vma.pfn[pages].min() >= 0 and vma.pte[pages].max() < _SWAP):
        return FaultReport(pages)
    flags = np.zeros(pages.size, dtype=np.uint8)
    handle_pte_fault(VmFault(k, owner, vma, cpu, write=False), pages, flags)
    return FaultReport(pages, flags)


def handle_pte_fault(vmf: VmFault, pages: PageIndex, flags: FlagArray) -> None:
    """handle_pte_fault() for one run of pages: dispatch on each PTE's state, ORing what
    was done into ``flags`` (aligned with ``pages``).  A write leaves every PTE writable."""
    k, vma, write = vmf.k, vmf.vma, vmf.write
    new_frames: list[tuple[PageIndex, FrameArray]] = []
    # The whole VMA (ascending, unique) is read in place: everything derived from pfn and
    # pte below is computed before a handler changes the page table.
    whole = pages.size == vma.npages
    pfn, pte = (vma.pfn, vma.pte) if whole else (vma.pfn[pages], vma.pte[pages])
    if write and not int(np.bitwise_or.reduce(pte)) & _SWAP_OR_UFFD_WP and int(pfn.min()) >= 0:
        # The common write fault: every PTE present, none a swap entry or uffd-protected,
        # so only write-protect faults remain (the same steps as below, read once).
        read_only = (pte & _RW) == 0
        _wp_faults(vmf, pages, None if np.count_nonzero(read_only) == pages.size else read_only,
                   None, flags, new_frames)
        _batch_in_page_order(k, new_frames, vmf.cpu)
        return
    none = pfn < 0
    if np.count_nonzero(none):
        if vma.shared:
            shmem_fault(vmf, pages[none])
            flags[none] |= _SHMEM
        else:
            every = np.count_nonzero(none) == pages.size
            fresh = pages if every else pages[none]
            frames = do_anonymous_page(vmf, fresh)
            flags[none] |= _ANONYMOUS if write else _ZERO_READ
            if write:
                new_frames.append((fresh, frames))
                if every:  # a first touch of every page: each is now mapped writable
                    _batch_in_page_order(k, new_frames, vmf.cpu)
                    return
    swapped = vma.swapped(pages)
    inline: npt.NDArray[np.bool_] | None = None
    if np.count_nonzero(swapped):
        still_read_only = swap.do_swap_page(vmf, pages[swapped])
        flags[swapped] |= _SWAPPED
        if write:
            inline = np.zeros(pages.size, dtype=bool)
            inline[np.flatnonzero(swapped)[still_read_only]] = True
    if not write:
        return
    # Userfaultfd write-protected PTEs: the monitor un-protects, the write is retried.
    protected = (vma.pte[pages] & _UFFD_WP) != 0
    if np.count_nonzero(protected):
        k.counters.fault("uffd_wp", int(np.count_nonzero(protected)))
        protect.uffd_writeprotect(k, vmf.owner, vma, pages[protected], False, cpu=vmf.cpu,
                                  per_page=True)
        flags[protected] |= _UFFD
    inline_only = None if inline is None else inline & ~protected
    _wp_faults(vmf, pages, vma.read_only(pages), inline_only, flags, new_frames)
    _batch_in_page_order(k, new_frames, vmf.cpu)


def _wp_faults(vmf: VmFault, pages: PageIndex, read_only: npt.NDArray[np.bool_] | None,
               inline: npt.NDArray[np.bool_] | None, flags: FlagArray,
               new_frames: list[tuple[PageIndex, FrameArray]]) -> None:
    """The write-protect faults of a run: do_wp_page on its ``read_only`` pages (None: every
    page of the run).  ``inline`` marks pages whose do_wp_page is part of their swap fault
    (not counted again)."""
    if read_only is None:
        vmf.k.counters.fault("wp", pages.size)
        ro_flags, copied = do_wp_page(vmf, pages)
        flags |= ro_flags
        new_frames.append((pages if copied.size == pages.size else pages[(ro_flags & _COPY) != 0],
                           copied))
        return
    if not np.count_nonzero(read_only):
        return
    wp = read_only if inline is None else read_only & ~inline
    vmf.k.counters.fault("wp", int(np.count_nonzero(wp)))
    ro_pages = pages[read_only]
    ro_flags, copied = do_wp_page(vmf, ro_pages)
    flags[read_only] |= ro_flags
    new_frames.append((ro_pages[(ro_flags & _COPY) != 0], copied))


def _batch_in_page_order(k: Kernel, new: list[tuple[PageIndex, FrameArray]], cpu: int) -> None:
    """lru_cache_add() the run's new pages in the order a page-by-page walk would."""
    new = [(p, f) for p, f in new if f.size]
    if not new:
        return
    if len(new) == 1:
        k.lru_cache_add(new[0][1], cpu)
        return
    pages = np.concatenate([p for p, _ in new])
    frames = np.concatenate([f for _, f in new])
    k.lru_cache_add(frames[np.argsort(pages, kind="stable")], cpu)


def do_anonymous_page(vmf: VmFault, pages: PageIndex) -> FrameArray:
    """do_anonymous_page(): a write gets a zeroed page, mapped writable (and exclusive);
    a read maps the shared zero page read-only.  Returns the new frames (none for a read);
    the caller queues them on the LRU-add batch in page order."""
    k, vma = vmf.k, vmf.vma
    k.counters.fault("anonymous", pages.size)
    if not vmf.write:
        vma.pfn[pages] = ZERO_PFN
        vma.pte[pages] = 0
        return np.zeros(0, dtype=np.int32)
    flags = PG_anon | (PG_anon_exclusive if k.gen.anon_exclusive else np.uint8(0))
    frames = k.alloc_pages(int(pages.size), np.uint8(flags), mapped=True)
    every = slice(None) if pages.size == vma.npages else pages  # (ascending and unique)
    vma.pfn[every] = frames
    vma.pte[every] = PTE_WRITTEN
    return frames


def shmem_fault(vmf: VmFault, pages: PageIndex) -> None:
    """shmem_fault(): a fault in a MAP_SHARED anonymous region maps the shmem page,
    allocating it (and adding it to the LRU) if new."""
    k, vma = vmf.k, vmf.vma
    assert vma.shmem is not None
    k.counters.fault("shmem", pages.size)
    frames = vma.shmem.frames[pages]
    missing = frames < 0
    if np.count_nonzero(missing):
        new = k.alloc_pages(int(missing.sum()), np.uint8(0))
        k.frames.refcount[new] = 1  # the page cache's reference
        vma.shmem.frames[pages[missing]] = new
        frames[missing] = new
        k.lru_cache_add(new, vmf.cpu)
    k.frames.mapcount[frames] += 1
    k.get_page(frames)
    vma.pfn[pages] = frames
    # Without soft-dirty tracking a shared writable mapping needs no write notification.
    writable = vmf.write or (vma.writable and bool(vma.vm_flags & VM_SOFTDIRTY))
    bits = PTE_WRITTEN if vmf.write else (_RW if writable else np.uint16(0))
    vma.pte[pages] = np.uint16(bits)


_NO_FRAMES: FrameArray = np.zeros(0, dtype=np.int32)
_NO_FRAMES.flags.writeable = False


_NO_ZERO_PAGE: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)
"""Stands for "which frames are the zero page" when the caller knows: none (never indexed)."""


def do_wp_page(vmf: VmFault, pages: PageIndex, *, frames: FrameArray | None = None,
               page_flags: npt.NDArray[np.uint8] | None = None,
               pte: PteArray | None = None, zero_free: bool = False
               ) -> tuple[FlagArray, FrameArray]:
    """do_wp_page(): write-protect (or, with ``vmf.unshare``, unshare) fault on present
    read-only PTEs.  Returns each page's flags (WP_REUSE, COW_COPY, ZERO_PAGE; an unshare
    that keeps the page: none) and the new frames of the copied pages, in page order,
    which the caller queues on the LRU-add batch.  ``frames``, ``page_flags``, ``pte``:
    the pages' frames, their flags and PTEs, when the caller has read them already;
    ``zero_free``: the caller knows none of the frames is the zero page."""
    k, vma, unshare = vmf.k, vmf.vma, vmf.unshare
    empty = _NO_FRAMES
    if vma.shared:
        # wp_page_shared(): no COW in a shared mapping, just make the PTE writable.
        vma.pte[pages] = (vma.pte[pages] & ~WP_CAUSE_MASK) | PTE_WRITTEN
        k.counters.add("wp_reuses", pages.size)
        return np.full(pages.size, _REUSE, dtype=np.uint8), empty
    if frames is None:
        frames = vma.pfn[pages]
    zero = _NO_ZERO_PAGE if zero_free else frames == ZERO_PFN
    zeros = 0 if zero is _NO_ZERO_PAGE else np.count_nonzero(zero)
    if not zeros:  # the common case: no zero page among them
        reuse = wp_can_reuse_anon_folio(k, frames, vmf.cpu, page_flags)
        flags = np.where(reuse, np.uint8(0) if unshare else _REUSE, _COPY).astype(np.uint8,
                                                                                 copy=False)
    else:
        reuse = np.zeros(pages.size, dtype=bool)
        anon = ~zero
        if zeros < pages.size:
            reuse[anon] = wp_can_reuse_anon_folio(k, frames[anon], vmf.cpu)
        flags = np.where(reuse, np.uint8(0) if unshare else _REUSE,
                         np.where(zero, _ZERO_COPY, _COPY)).astype(np.uint8)
    nr_reused = int(np.count_nonzero(reuse))
    if nr_reused:
        # wp_page_reuse()
        every = nr_reused == pages.size
        reused = pages if every else pages[reuse]
        if k.gen.anon_exclusive:
            k.frames.set(frames if every else frames[reuse], PG_anon_exclusive)
        if not unshare:
            vma.pte[reused] = (vma.pte[reused] & ~WP_CAUSE_MASK) | PTE_WRITTEN
            k.counters.add("wp_reuses", nr_reused)
    if nr_reused == pages.size:
        return flags, empty
    if not nr_reused:
        return flags, wp_page_copy(vmf, pages, frames, pte, zero_free=not zeros)
    copy = ~reuse
    return flags, wp_page_copy(vmf, pages[copy], frames[copy], None if pte is None else pte[copy],
                               zero_free=not zeros)


def wp_can_reuse_anon_folio(k: Kernel, frames: FrameArray, cpu: int,
                            page_flags: npt.NDArray[np.uint8] | None = None,
                            refcount: npt.NDArray[np.int32] | None = None
                            ) -> npt.NDArray[np.bool_]:
    """The era's reuse decision for anonymous frames (unique) mapped read-only: the
    kernel's ``wp_can_reuse_anon_folio()`` (6.5+; before it inline in do_wp_page, and
    ``reuse_swap_page()`` up to 5.8).

    Side effects as in the kernel: ≤5.8 drops a reusable page from the swap
    cache; 5.18+ drain the local LRU-add batch and free the swap cache.
    ``page_flags``, ``refcount``: the frames' flags and refcounts, when the caller has read
    them already.
    """
    pg = k.frames
    rule = k.gen.wp_reuse
    if page_flags is None:
        page_flags = pg.flags[frames]
    if rule is WpReuse.MAPCOUNT:
        in_cache = (page_flags & PG_swapcache) != 0
        reuse: npt.NDArray[np.bool_]
        if not np.count_nonzero(in_cache):  # no swap count to add, nothing to delete
            reuse = pg.mapcount[frames] <= 1
            return reuse
        swapcount = np.zeros(frames.size, dtype=np.int64)
        swapcount[in_cache] = k.swap.count[pg.ensure_swap_slots()[frames[in_cache]]]
        reuse = (pg.mapcount[frames] + swapcount) <= 1
        swap.delete_from_swap_cache(k, frames[reuse & in_cache])
        return reuse
    if rule is WpReuse.PAGE_COUNT:
        out: npt.NDArray[np.bool_] = ((pg.refcount[frames] if refcount is None else refcount) == 1) \
            & (pg.mapcount[frames] == 1)
        return out
    # PAGE_COUNT_DRAIN (5.18+), after the PageAnonExclusive shortcut (5.19+).  Flags and
    # refcounts are read once, and again only after a step that changes them.
    if refcount is None:
        refcount = pg.refcount[frames]
    if not int(np.bitwise_or.reduce(page_flags)) & _BATCH_OR_SWAPCACHE:
        # No page in an LRU-add batch or the swap cache: nothing to drain or free, and
        # the steps below reduce to this.
        sole_reference: npt.NDArray[np.bool_] = refcount == 1
        if k.gen.anon_exclusive:
            sole_reference |= (page_flags & PG_anon_exclusive) != 0
        return sole_reference
    exclusive = (page_flags & PG_anon_exclusive) != 0
    reuse = exclusive if k.gen.anon_exclusive else np.zeros(frames.size, dtype=bool)
    todo = ~reuse & (refcount <= 3)
    if np.count_nonzero(todo & ((page_flags & PG_lru_batch) != 0)):
        k.lru_add_drain(cpu)  # only a run of one page can be in a batch (split_runs)
        page_flags, refcount = pg.flags[frames], pg.refcount[frames]
    in_cache = (page_flags & PG_swapcache) != 0
    todo &= refcount <= 1 + in_cache
    freeable = todo & in_cache
    if np.count_nonzero(freeable):
        swap.try_to_free_swap(k, frames[freeable])
        refcount = pg.refcount[frames]
    reuse |= todo & (refcount == 1)
    return reuse


def wp_page_copy(vmf: VmFault, pages: PageIndex, old_frames: FrameArray | None = None,
                 old_pte: PteArray | None = None, *, zero_free: bool = False) -> FrameArray:
    """wp_page_copy(): allocate, copy (or zero-fill, for the zero page), flush the old PTE,
    map the copy (read-only for an unshare).  ``old_frames``, ``old_pte``: the pages'
    frames and PTEs, when the caller has read them already; ``zero_free``: none of the old
    frames is the zero page."""
    k, vma, unshare = vmf.k, vmf.vma, vmf.unshare
    if old_frames is None:
        old_frames = vma.pfn[pages]
    if old_pte is None:
        old_pte = vma.pte[pages]
    zero = _NO_ZERO_PAGE if zero_free else old_frames == ZERO_PFN
    zeros = 0 if zero is _NO_ZERO_PAGE else int(np.count_nonzero(zero))
    shared_old = old_frames[~zero] if zeros else old_frames
    k.counters.add("cow_copies", pages.size)
    if unshare:
        k.counters.add("cow_copies_unshare", pages.size)
    else:
        k.counters.add("cow_copies_zero_page", zeros)
        by_cause = np.bincount(cause_of(old_pte[~zero] if zeros else old_pte), minlength=8).tolist()
        for cause, name in _CAUSE_COUNTERS:
            if by_cause[cause]:
                k.counters.add(name, by_cause[cause])
    flags = PG_anon | (PG_anon_exclusive if k.gen.anon_exclusive else np.uint8(0))
    new = k.alloc_pages(int(pages.size), np.uint8(flags), k.frames.content[old_frames],
                        mapped=True)
    if unshare:
        vma.pte[pages] = with_cause(old_pte & (Pte.SOFT_DIRTY | Pte.UFFD_WP).u16, WpCause.UNSHARE)
    else:
        vma.pte[pages] = PTE_WRITTEN
    vma.pfn[pages] = new
    k.flush_tlb(vmf.owner.mm, "page", count=int(pages.size), cpu=vmf.cpu)
    k.put_page(shared_old, mapping=True)  # the old page loses this mapping and its reference
    return new


def unshare(k: Kernel, owner: Process, vma: VMA, pages: PageIndex, cpu: int) -> FlagArray:
    """FAULT_FLAG_UNSHARE on read-only mapped pages (5.19+ R/O pins): do_wp_page() with
    ``vmf.unshare``.  Returns each page's flags (UNSHARE, plus COW_COPY if copied)."""
    vmf = VmFault(k, owner, vma, cpu, unshare=True)
    flags = np.full(pages.size, _UNSHARE, dtype=np.uint8)
    offset = 0
    for run in split_runs(k, vma, pages):
        k.counters.fault("unshare", run.size)
        run_flags, copied = do_wp_page(vmf, run)
        flags[offset : offset + run.size] |= run_flags
        _batch_in_page_order(k, [(run[(run_flags & _COPY) != 0], copied)], cpu)
        offset += run.size
    return flags


def mark_written(vma: VMA, pages: PageIndex) -> None:
    """A store through writable PTEs: the hardware sets the dirty bit (not soft-dirty)."""
    if pages.size == vma.npages:  # (ascending and unique: every page)
        vma.pte |= _DIRTY
    else:
        vma.pte[pages] |= _DIRTY
