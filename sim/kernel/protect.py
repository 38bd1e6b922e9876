"""mprotect() and userfaultfd write-protect: ``change_protection``.

Both walk the PTEs of a range and change their permissions.  Removing write
permission write-protects every present PTE (and costs a TLB flush).  Giving
it back is where the eras differ (§3.4, §3.5):

* ≤5.19: a private anonymous PTE stays read-only ("let the fault handler do
  COW"), so the next write faults and goes through do_wp_page; in 5.9–5.18
  that copies a pinned page away from its pin (Andrea Arcangeli's objection).
* 6.0–6.1 (64fe24a3e05e): ``can_change_pte_writable()`` maps the PTE writable
  at once if the page is PageAnonExclusive, the PTE is dirty, soft-dirty
  tracking does not need the fault and the PTE is not uffd-wp protected.
* 6.2+: the same without the dirty requirement.
* UFFDIO_WRITEPROTECT(0) gives it back the same way only from 6.3 (931298e103c2);
  before, a resolved private PTE stays read-only and the next write faults.

A shared mapping has no COW: mprotect(RW) makes its PTEs writable again
(unless soft-dirty tracking needs the write fault).

TLB flushes: ≤5.19 one ranged flush if any present PTE was touched; 6.0+
(mmu_gather) only where a permission was removed.  UFFDIO_WRITEPROTECT defers
its flush to the end of the walk in the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from cowsim.sim.errors import KernelOpError
from cowsim.sim.kernel.generations import ChangeProtWritable
from cowsim.sim.kernel.mm import (
    VM_SOFTDIRTY,
    VM_UFFD_WP,
    VMA,
    WP_CAUSE_MASK,
    Prot,
    Pte,
    WpCause,
    with_cause,
)
from cowsim.sim.kernel.pages import ZERO_PFN, PageIndex, PG_anon_exclusive

if TYPE_CHECKING:
    from cowsim.sim.kernel.kernel import Kernel
    from cowsim.sim.kernel.mm import Process


def can_change_pte_writable(k: Kernel, vma: VMA, pages: PageIndex) -> npt.NDArray[np.bool_]:
    """can_change_pte_writable() for present PTEs of a VMA that may be written."""
    rule = k.gen.change_prot_writable
    pte = vma.pte[pages]
    if vma.shared:
        # Shared: writable unless soft-dirty tracking wants the write fault.
        tracked = not (vma.vm_flags & VM_SOFTDIRTY)
        ok: npt.NDArray[np.bool_] = (pte & Pte.UFFD_WP.u16) == 0
        if tracked:
            ok &= (pte & Pte.SOFT_DIRTY.u16) != 0
        return ok
    if rule is ChangeProtWritable.NEVER:
        return np.zeros(pages.size, dtype=bool)
    frames = vma.pfn[pages]
    real = frames != ZERO_PFN
    ok = real & k.frames.test(np.where(real, frames, 0), PG_anon_exclusive)
    ok &= (pte & Pte.UFFD_WP.u16) == 0
    if not vma.vm_flags & VM_SOFTDIRTY:
        ok &= (pte & Pte.SOFT_DIRTY.u16) != 0  # soft-dirty tracking needs the write fault
    if rule is ChangeProtWritable.DIRTY_EXCLUSIVE:
        ok &= (pte & Pte.DIRTY.u16) != 0
    return ok


def mprotect(k: Kernel, owner: Process, vma: VMA, prot: Prot, cpu: int) -> None:
    """mprotect() on the whole region: mprotect_fixup() → change_protection() over its
    present PTEs (change_pte_range)."""
    vma.prot = prot
    pages = np.flatnonzero(vma.present())
    if pages.size == 0:
        return
    pte = vma.pte[pages]
    was_writable = (pte & Pte.RW.u16) != 0
    if prot is Prot.READ_WRITE:
        upgrade = ~was_writable & can_change_pte_writable(k, vma, pages)
        up = pages[upgrade]
        vma.pte[up] = (vma.pte[up] & ~WP_CAUSE_MASK) | Pte.RW.u16
        removed = False
    else:
        down = pages[was_writable]
        vma.pte[down] = with_cause(vma.pte[down] & Pte.RW.inverted, WpCause.MPROTECT)
        removed = bool(down.size)
    _flush_after_change(k, owner, pages, removed, cpu)


def _flush_after_change(k: Kernel, owner: Process, touched: PageIndex, removed: bool,
                        cpu: int, calls: int = 1) -> None:
    """The flush ending a change_protection walk (``calls`` separate walks of
    ``touched.size / calls`` pages each, as when each userfault is resolved alone)."""
    # ≤5.19: flush_tlb_range whenever PTEs were changed; 6.0+ (mmu_gather): only when a
    # PTE lost a permission.
    legacy = k.gen.change_prot_writable is ChangeProtWritable.NEVER
    if (touched.size > 0) if legacy else removed:
        k.flush_tlb(owner.mm, "range", count=calls, pages=max(1, int(touched.size) // calls),
                    cpu=cpu)


def uffd_register(vma: VMA) -> None:
    """UFFDIO_REGISTER with UFFDIO_REGISTER_MODE_WP (userfaultfd_register)."""
    if vma.shared:
        raise KernelOpError("region", "uffd-wp on a MAP_SHARED anonymous region is not modelled")
    vma.vm_flags |= VM_UFFD_WP


def uffd_writeprotect(k: Kernel, owner: Process, vma: VMA, pages: PageIndex, protect: bool,
                      cpu: int, per_page: bool = False) -> None:
    """UFFDIO_WRITEPROTECT (mwriteprotect_range → change_protection with MM_CP_UFFD_WP or
    MM_CP_UFFD_WP_RESOLVE): set or clear uffd-wp on present PTEs and swap entries.

    Empty PTEs are left alone (no PTE markers are modelled).  ``per_page``: one
    ioctl per page (a monitor resolving each write fault on its own), so one
    flush per page where a flush is due.
    """
    if not vma.vm_flags & VM_UFFD_WP:
        raise KernelOpError("region", f"region {vma.region!r} is not registered for uffd-wp")
    populated = pages[vma.pfn[pages] >= 0]
    if populated.size == 0:
        return
    present = populated[vma.present(populated)]
    swapped = populated[vma.swapped(populated)]
    if protect:
        vma.pte[swapped] |= Pte.UFFD_WP.u16
        was_writable = (vma.pte[present] & Pte.RW.u16) != 0
        vma.pte[present] = with_cause((vma.pte[present] & Pte.RW.inverted) | Pte.UFFD_WP.u16,
                                      WpCause.UFFD_WP)
        removed = bool(np.count_nonzero(was_writable))
    else:
        vma.pte[swapped] &= Pte.UFFD_WP.inverted
        vma.pte[present] &= Pte.UFFD_WP.inverted
        if vma.writable and k.gen.uffd_resolve_writable:
            # ≤6.2 leaves the PTE read-only; 6.3+ MM_CP_TRY_CHANGE_WRITABLE (931298e103c2).
            read_only = present[(vma.pte[present] & Pte.RW.u16) == 0]
            up = read_only[can_change_pte_writable(k, vma, read_only)]
            vma.pte[up] = (vma.pte[up] & ~WP_CAUSE_MASK) | Pte.RW.u16
        removed = False
    _flush_after_change(k, owner, present, removed, cpu,
                        calls=int(present.size) if per_page and present.size else 1)
