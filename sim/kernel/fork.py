"""fork(): ``dup_mmap`` → ``copy_page_range`` → ``copy_pte_range`` for anonymous memory.

The child gets a copy of every VMA (except MADV_DONTFORK ones; MADV_WIPEONFORK
ones come empty) and, for private regions, a copy of the page table: each
present page is now mapped twice (mapcount +1, refcount +1) and both PTEs are
write-protected (``ptep_set_wrprotect``), so the first write on either side
faults and goes through do_wp_page.  Swap entries are duplicated (swap count
+1).  MAP_SHARED regions are not copied: the child faults them in from the
shared object.  One ``flush_tlb_mm`` of the parent ends the walk.

Era rules:

* 5.9+ (70e806e4e645): if the mm has ever pinned (``has_pinned``) and a page
  is maybe pinned (refcount >= 1024), the child gets its own copy at once
  and the parent's PTE is left alone, still writable, so the pin stays valid.
  FOLL_GET references are invisible to this test.
* 5.19+: a shared anonymous page is never PageAnonExclusive: fork clears the
  flag on every page it shares, and a swap entry shared by fork loses its
  exclusive marker in both page tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from cowsim.sim.kernel.fault import split_runs
from cowsim.sim.kernel.mm import (
    VM_DONTCOPY,
    VM_UFFD_WP,
    VM_WIPEONFORK,
    VMA,
    Pte,
    WpCause,
    with_cause,
)
from cowsim.sim.kernel.pages import ZERO_PFN, FrameSet, PageIndex, PG_anon, PG_anon_exclusive

if TYPE_CHECKING:
    from cowsim.sim.kernel.kernel import Kernel
    from cowsim.sim.kernel.mm import Process


def dup_mmap(k: Kernel, parent: Process, child: Process, cpu: int) -> None:
    """dup_mmap(): copy the parent's address space into the (new, empty) child, VMA by VMA
    (vm_area_dup), and each private page table (copy_page_range)."""
    child.mm.cpus = set(parent.mm.cpus)
    wrprotected = False
    for region, vma in parent.mm.vmas.items():
        if vma.vm_flags & VM_DONTCOPY:
            continue
        copies_ptes = not (vma.shared or vma.vm_flags & VM_WIPEONFORK)
        child_vma = VMA.new(region, vma.npages, vma.shared, initialized=not copies_ptes)
        child_vma.prot = vma.prot
        child_vma.vm_flags = vma.vm_flags & ~VM_UFFD_WP  # the uffd context is not inherited
        if vma.shared:
            child_vma.shmem = vma.shmem
            assert vma.shmem is not None
            vma.shmem.users += 1
        child.mm.vmas[region] = child_vma
        if vma.shared or vma.vm_flags & VM_WIPEONFORK:
            continue
        if _copy_pte_range_whole(k, parent, vma, child_vma):
            wrprotected = True
            continue
        child_vma.pfn.fill(-1)
        child_vma.pte.fill(0)
        if k.gen.fork_copies_pinned and parent.mm.has_pinned:
            # The early-copy test reads refcounts, which LRU-batch flushes change: walk in
            # order, a page in a batch being a run of its own.
            populated = np.flatnonzero(vma.pfn >= 0)
            wrprotected |= populated.size > 0
            for run in split_runs(k, vma, populated):
                copy_pte_range(k, parent, vma, child_vma, run, cpu)
        else:
            wrprotected |= copy_pte_range(k, parent, vma, child_vma, None, cpu)
    if wrprotected:
        k.flush_tlb(parent.mm, "mm", cpu=cpu)


def copy_pte_range(k: Kernel, parent: Process, src: VMA, dst: VMA, pages: PageIndex | None,
              cpu: int) -> bool:
    """copy_pte_range() (with copy_present_ptes / copy_nonpresent_pte) over ``pages``
    (None: the whole VMA, without index arrays).  Returns whether any PTE was populated."""
    every = slice(None) if pages is None else pages
    pfn = src.pfn[every]
    pte = src.pte[every]
    swapped = pte >= Pte.SWAP.u16
    keep_in_child = Pte.UFFD_WP.inverted  # the child VMA is not uffd-registered
    if np.count_nonzero(swapped):
        # Swap entries: share the slot; the exclusive marker is lost on both sides.
        swap_pages = _positions(pages, swapped)
        np.add.at(k.swap.count, pfn[swapped], 1)
        src.pte[swap_pages] &= Pte.SWP_EXCLUSIVE.inverted
        dst.pfn[swap_pages] = src.pfn[swap_pages]
        dst.pte[swap_pages] = src.pte[swap_pages] & keep_in_child
    any_swapped = bool(np.count_nonzero(swapped))
    present = (pfn >= 0) & ~swapped if any_swapped else pfn >= 0
    if not np.count_nonzero(present):
        return any_swapped
    real = present & (pfn != ZERO_PFN)
    early = np.zeros(pfn.shape[0], dtype=bool)
    # page_needs_cow_for_dma() (folio_needs_cow_for_dma): copy now rather than share.
    if k.gen.fork_copies_pinned and parent.mm.has_pinned and np.count_nonzero(real):
        candidates = pfn[real]
        pinned = k.frames.maybe_dma_pinned(candidates) & k.frames.test(candidates, PG_anon)
        if k.gen.anon_exclusive:
            # 5.19+: only an exclusive page can be pinned; a shared one stays shared.
            pinned &= k.frames.test(candidates, PG_anon_exclusive)
        early[real] = pinned
    if np.count_nonzero(early):
        copy_present_page(k, src, dst, _positions(pages, early), cpu)
        present &= ~early
        real &= ~early
    # Share: one more mapping of each page; write-protect both PTEs.
    shared = FrameSet(pfn if real.all() else pfn[real])
    k.get_page(shared, mapping=True)
    if k.gen.anon_exclusive:
        k.frames.clear(shared, PG_anon_exclusive)
    share_at = every if present.all() else _positions(pages, present)
    old = src.pte[share_at]
    writable = (old & Pte.RW.u16) != 0
    protected = with_cause(old, WpCause.FORK, clear=Pte.RW)
    if not writable.all():
        protected = np.where(writable, protected, old)
    src.pte[share_at] = protected
    dst.pfn[share_at] = pfn if share_at is every else src.pfn[share_at]
    dst.pte[share_at] = protected & keep_in_child
    return True


def _copy_pte_range_whole(k: Kernel, parent: Process, src: VMA, dst: VMA) -> bool:
    """copy_pte_range() in the common case, with no index arrays at all: every PTE present,
    writable and mapping a real page, and no early copy to consider (one reduction checks
    each condition)."""
    pfn, pte = src.pfn, src.pte
    if pfn.size == 0 or (k.gen.fork_copies_pinned and parent.mm.has_pinned):
        return False
    lowest = int(pfn.min())
    if lowest <= ZERO_PFN or pte.max() >= Pte.SWAP.u16:
        return False
    if not np.bitwise_and.reduce(pte) & Pte.RW.u16:
        return False
    shared = FrameSet(pfn, lowest=lowest)
    k.get_page(shared, mapping=True)
    if k.gen.anon_exclusive:
        k.frames.clear(shared, PG_anon_exclusive)
    src.pte = with_cause(pte, WpCause.FORK, clear=Pte.RW)
    dst.pte = src.pte & Pte.UFFD_WP.inverted if src.vm_flags & VM_UFFD_WP else src.pte.copy()
    dst.pfn = pfn.copy()
    return True


def _positions(pages: PageIndex | None, mask: npt.NDArray[np.bool_]) -> PageIndex:
    """Page numbers where ``mask`` holds, for a run (``pages``) or the whole VMA (None)."""
    return np.flatnonzero(mask) if pages is None else pages[mask]


def copy_present_page(k: Kernel, src: VMA, dst: VMA, pages: PageIndex, cpu: int) -> None:
    """copy_present_page(): the child gets its own copy now; the parent keeps its PTE."""
    frames = k.frames
    old = src.pfn[pages]
    flags = PG_anon | (PG_anon_exclusive if k.gen.anon_exclusive else np.uint8(0))
    new = k.alloc_pages(int(pages.size), np.uint8(flags), frames.content[old], mapped=True)
    dst.pfn[pages] = new
    child_bits = Pte.DIRTY | Pte.SOFT_DIRTY | (Pte.RW if dst.writable else 0)
    child_pte = (src.pte[pages] & Pte.SOFT_DIRTY.u16) | child_bits.u16
    # In a region mprotect()ed read-only the copy is mapped read-only: for that reason.
    dst.pte[pages] = child_pte if dst.writable else with_cause(child_pte, WpCause.MPROTECT)
    k.counters.add("cow_copies", pages.size)
    k.counters.add("cow_copies_fork_pinned", pages.size)
    k.lru_cache_add(new, cpu)
