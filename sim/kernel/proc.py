"""/proc/PID/clear_refs (type 4, soft-dirty) and /proc/PID/pagemap.

Soft-dirty tracking (CRIU incremental dumps, live migration) works by
write-protecting every PTE and clearing its soft-dirty bit; the next write to
each page then faults, and the fault sets soft-dirty again.  ``echo 4 >
clear_refs`` also clears VM_SOFTDIRTY on every VMA (that flag, when set,
reports every page soft-dirty).

The write-protection is what collides with GUP: in 5.9–5.18 the next write
copies a page that a FOLL_GET reference (O_DIRECT) holds, and in 5.9–5.10 one
that a pin holds.  Since 5.11 (9348b73c2e1b) clear_refs skips writable PTEs of
maybe-pinned pages in an mm that has pinned: they stay writable and, their
soft-dirty bit untouched, are always reported dirty.  The TLB flush after the
walk: ≤5.4 a full mmu_gather flush, 5.5–5.11 none (0758cd830494), ≈5.12+ one
``flush_tlb_mm``.

``pagemap`` reports, per page: present, swapped, soft-dirty (PTE bit or
VM_SOFTDIRTY) and PM_MMAP_EXCLUSIVE (mapcount == 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from cowsim.sim.kernel.generations import ClearRefsFlush
from cowsim.sim.kernel.mm import VM_SOFTDIRTY, VMA, Pte, WpCause, with_cause
from cowsim.sim.kernel.pages import ZERO_PFN, PageIndex

if TYPE_CHECKING:
    from cowsim.sim.kernel.kernel import Kernel
    from cowsim.sim.kernel.mm import Process


def clear_refs_write(k: Kernel, owner: Process, cpu: int) -> None:
    """clear_refs_write() with CLEAR_REFS_SOFT_DIRTY (``echo 4 > /proc/PID/clear_refs``):
    every VMA loses VM_SOFTDIRTY and its PTEs go through :func:`clear_soft_dirty`
    (clear_refs_pte_range); then the era's TLB flush."""
    for vma in owner.mm.vmas.values():
        vma.vm_flags &= ~VM_SOFTDIRTY
        clear_soft_dirty(k, owner, vma)
    if k.gen.clear_refs_flush is not ClearRefsFlush.NONE:
        k.flush_tlb(owner.mm, "mm", cpu=cpu)


def clear_soft_dirty(k: Kernel, owner: Process, vma: VMA) -> None:
    """clear_soft_dirty() on every populated PTE of the VMA (clear_soft_dirty_pmd aside):
    swap entries lose soft-dirty; present PTEs are write-protected and lose soft-dirty,
    except (5.11+) writable PTEs of maybe-pinned pages in an mm that has pinned."""
    populated = np.flatnonzero(vma.populated())
    if populated.size == 0:
        return
    present = populated[vma.present(populated)]
    swapped = populated[vma.swapped(populated)]
    vma.pte[swapped] &= Pte.SOFT_DIRTY.inverted
    pte = vma.pte[present]
    protect = np.ones(present.size, dtype=bool)
    if k.gen.clear_refs_skips_pinned and vma.is_cow_mapping and owner.mm.has_pinned:
        frames = vma.pfn[present]
        real = frames != ZERO_PFN
        pinned = real & k.frames.maybe_dma_pinned(np.where(real, frames, 0))
        protect &= ~(((pte & Pte.RW.u16) != 0) & pinned)
    chosen = present[protect]
    old = vma.pte[chosen]
    was_writable = (old & Pte.RW.u16) != 0
    cleared = old & (Pte.RW | Pte.SOFT_DIRTY).inverted
    vma.pte[chosen] = np.where(was_writable, with_cause(cleared, WpCause.CLEAR_REFS), cleared)


def pagemap_read(k: Kernel, owner: Process, vma: VMA,
                 pages: PageIndex) -> dict[str, npt.NDArray[np.bool_]]:
    """pagemap_read() (pagemap_pte_range): per page present, swapped, soft_dirty (PTE bit
    or VM_SOFTDIRTY) and exclusive (PM_MMAP_EXCLUSIVE: mapcount == 1)."""
    present = vma.present(pages)
    swapped = vma.swapped(pages)
    soft = ((vma.pte[pages] & Pte.SOFT_DIRTY.u16) != 0) | bool(vma.vm_flags & VM_SOFTDIRTY)
    frames = vma.pfn[pages]
    real = present & (frames != ZERO_PFN)
    exclusive = real & (k.frames.mapcount[np.where(real, frames, 0)] == 1)
    return {"present": present, "swapped": swapped, "soft_dirty": soft, "exclusive": exclusive}
