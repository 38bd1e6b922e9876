"""madvise() and zapping: MADV_DONTFORK/DOFORK/WIPEONFORK/KEEPONFORK/DONTNEED/PAGEOUT.

Zapping a range (munmap, exit, MADV_DONTNEED) clears its PTEs: each present
page loses a mapping (mapcount -1) and, after the TLB flush, the reference
that mapping held; a page nothing else holds is freed.  A page that a pipe,
a GUP reference or a pin still holds survives unmapped: the "orphaned GUP'd
page" of the vmsplice scenarios.  Swap entries drop their swap count.

The fork advice only flip VMA flags (and apply to the whole region here).
MADV_PAGEOUT is in swap.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from cowsim.sim.errors import KernelOpError
from cowsim.sim.kernel import swap
from cowsim.sim.kernel.mm import VM_DONTCOPY, VM_WIPEONFORK, VMA, Pte
from cowsim.sim.kernel.pages import ZERO_PFN, PageIndex

if TYPE_CHECKING:
    from cowsim.sim.kernel.kernel import Kernel
    from cowsim.sim.kernel.mm import Process

FLAG_ADVICE = {
    "dontfork": (VM_DONTCOPY, True),
    "dofork": (VM_DONTCOPY, False),
    "wipeonfork": (VM_WIPEONFORK, True),
    "keeponfork": (VM_WIPEONFORK, False),
}
ADVICE = (*FLAG_ADVICE, "dontneed", "pageout")


def madvise(k: Kernel, owner: Process, vma: VMA, advice: str, pages: npt.ArrayLike | None,
            cpu: int) -> None:
    """do_madvise() for one region: flag advice (madvise_update_vma), MADV_DONTNEED
    (zap_page_range), MADV_PAGEOUT (madvise_pageout)."""
    if advice in FLAG_ADVICE:
        if pages is not None:
            raise KernelOpError("pages", f"madvise {advice} applies to the whole region here; "
                                         "omit pages")
        flag, on = FLAG_ADVICE[advice]
        if flag == VM_WIPEONFORK and on and vma.shared:
            raise KernelOpError("advice", "MADV_WIPEONFORK needs a private region: EINVAL")
        vma.vm_flags = vma.vm_flags | flag if on else vma.vm_flags & ~flag
        return
    index = k.select(vma, pages)
    if advice == "dontneed":
        zap_pte_range(k, owner, vma, index, cpu=cpu)
    elif advice == "pageout":
        swap.madvise_cold_or_pageout_pte_range(k, owner, vma, index, cpu=cpu)
    else:
        raise KernelOpError("advice", f"unknown advice {advice!r}; one of {', '.join(ADVICE)}")


def zap_pte_range(k: Kernel, owner: Process, vma: VMA, pages: PageIndex | None, cpu: int,
                  flush: bool = True) -> bool:
    """zap_pte_range(): clear PTEs (``pages=None``: the whole VMA, on views of its page
    table, as munmap and exit do).  Returns whether any present PTE was cleared."""
    every = slice(None) if pages is None else pages
    pfn, pte = vma.pfn[every], vma.pte[every]
    swapped = pte >= Pte.SWAP.u16
    if np.count_nonzero(swapped):
        frames, slots = pfn[(pfn >= 0) & ~swapped], pfn[swapped]
    else:  # (every PTE populated, as after an exit's whole-VMA view: no compress needed)
        frames = pfn if pfn.size and int(np.minimum.reduce(pfn)) >= 0 else pfn[pfn >= 0]
        slots = pfn[:0]
    any_present = frames.size > 0
    if any_present and flush:
        k.flush_tlb(owner.mm, "range", pages=int(frames.size), cpu=cpu)
    real = frames if not any_present or frames.min() > ZERO_PFN else frames[frames > ZERO_PFN]
    k.put_page(real, mapping=True)
    swap.free_swap_and_cache(k, slots.copy())
    if pages is None:
        vma.pfn.fill(-1)
        vma.pte.fill(0)
    else:
        vma.pfn[pages] = -1
        vma.pte[pages] = 0
    return any_present


def release_vma(k: Kernel, vma: VMA) -> None:
    """The VMA is gone (munmap/exit, ``remove_vma``): a shmem object with no users drops its
    pages (shmem_evict_inode)."""
    if vma.shmem is None:
        return
    vma.shmem.users -= 1
    if vma.shmem.users == 0:
        held = vma.shmem.frames[vma.shmem.frames >= 0]
        vma.shmem.frames[:] = -1
        k.put_page(np.sort(held))
