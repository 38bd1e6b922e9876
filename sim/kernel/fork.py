"""fork(): ``dup_mmap`` / ``copy_page_range`` for anonymous memory.

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

from cowsim.sim.kernel.fault import in_runs
from cowsim.sim.kernel.mm import (
    _PAGE_DIRTY,
    _PAGE_RW,
    _PAGE_SOFT_DIRTY,
    _PAGE_SWAP,
    _PAGE_SWP_EXCLUSIVE,
    _PAGE_UFFD_WP,
    VM_DONTCOPY,
    VM_UFFD_WP,
    VM_WIPEONFORK,
    VMA,
    WpCause,
    with_cause,
)
from cowsim.sim.kernel.pages import PG_anon, PG_anon_exclusive, ZERO_PFN

if TYPE_CHECKING:
    from cowsim.sim.kernel.kernel import Kernel, PageIndex
    from cowsim.sim.kernel.mm import Process


def dup_mmap(k: Kernel, parent: Process, child: Process, cpu: int) -> None:
    """Copy the parent's address space into the (new, empty) child."""
    child.mm.cpus = set(parent.mm.cpus)
    wrprotected = False
    for region, vma in parent.mm.vmas.items():
        if vma.vm_flags & VM_DONTCOPY:
            continue
        child_vma = VMA.new(region, vma.npages, vma.shared)
        child_vma.prot = vma.prot
        child_vma.vm_flags = vma.vm_flags & ~VM_UFFD_WP  # the uffd context is not inherited
        if vma.shared:
            child_vma.shmem = vma.shmem
            assert vma.shmem is not None
            vma.shmem.users += 1
        child.mm.vmas[region] = child_vma
        if vma.shared or vma.vm_flags & VM_WIPEONFORK:
            continue
        populated = np.flatnonzero(vma.pfn >= 0)
        if populated.size:
            # Pages are walked in order; a page in an LRU-add batch is its own run.
            in_runs(k, vma, populated,
                    lambda run, v=vma, c=child_vma: _copy_run(k, parent, v, c, run, cpu))
            wrprotected = True
    if wrprotected:
        k.flush_tlb(parent.mm, "mm", cpu=cpu)


def _copy_run(k: Kernel, parent: Process, src: VMA, dst: VMA, pages: PageIndex, cpu: int) -> None:
    pte = src.pte[pages]
    pfn = src.pfn[pages]
    swapped = (pte & _PAGE_SWAP) != 0
    present = ~swapped
    keep_in_child = ~_PAGE_UFFD_WP  # child VMA is not uffd-registered
    # Swap entries: share the slot; the exclusive marker is lost on both sides.
    if swapped.any():
        swap_pages = pages[swapped]
        np.add.at(k.swap.count, pfn[swapped], 1)
        src.pte[swap_pages] &= ~_PAGE_SWP_EXCLUSIVE
        dst.pfn[swap_pages] = pfn[swapped]
        dst.pte[swap_pages] = src.pte[swap_pages] & keep_in_child
    if not present.any():
        return
    pages, pfn, pte = pages[present], pfn[present], pte[present]
    frames = k.frames
    early = np.zeros(pages.size, dtype=bool)
    real = pfn != ZERO_PFN
    if k.gen.fork_copies_pinned and parent.mm.has_pinned:
        early[real] = frames.maybe_dma_pinned(pfn[real]) & frames.test(pfn[real], PG_anon)
        if k.gen.anon_exclusive:
            # 5.19+: only an exclusive page can be pinned; a shared one stays shared.
            early[real] &= frames.test(pfn[real], PG_anon_exclusive)
    if early.any():
        # copy_present_page(): the child gets its own copy now; the parent keeps its PTE.
        early_pages = pages[early]
        flags = PG_anon | (PG_anon_exclusive if k.gen.anon_exclusive else np.uint8(0))
        new = k.alloc_pages(int(early_pages.size), np.uint8(flags), frames.content[pfn[early]])
        frames.mapcount[new] = 1
        frames.refcount[new] = 1
        dst.pfn[early_pages] = new
        child_bits = _PAGE_DIRTY | _PAGE_SOFT_DIRTY | (_PAGE_RW if dst.writable else 0)
        dst.pte[early_pages] = (pte[early] & _PAGE_SOFT_DIRTY) | np.uint16(child_bits)
        k.counters.add("cow_copies", early_pages.size)
        k.counters.add("cow_copies_fork_pinned", early_pages.size)
        k.lru_cache_add(new, cpu)
    share = ~early
    if not share.any():
        return
    shared_pages, shared_pfn = pages[share], pfn[share]
    shared_real = shared_pfn[shared_pfn != ZERO_PFN]
    frames.mapcount[shared_real] += 1
    k.get_page(shared_real)
    if k.gen.anon_exclusive:
        frames.clear(shared_real, PG_anon_exclusive)
    old = src.pte[shared_pages]
    writable = (old & _PAGE_RW) != 0
    protected = np.where(writable, with_cause(old & ~_PAGE_RW, WpCause.FORK), old)
    src.pte[shared_pages] = protected
    dst.pfn[shared_pages] = shared_pfn
    dst.pte[shared_pages] = protected & keep_in_child
