"""The fault context (``struct vm_fault``) and what each fault did (:class:`FaultReport`).

The kernel threads one ``struct vm_fault`` through its fault handlers
(``handle_pte_fault`` → ``do_wp_page`` → ``wp_page_copy`` …) instead of
passing the VMA, the address and the FAULT_FLAG_* bits to each.
:class:`VmFault` is that context for the model: the kernel state, the
faulting process, its VMA, the CPU, and whether the fault is a write
(FAULT_FLAG_WRITE) or an unshare (FAULT_FLAG_UNSHARE).  The pages are passed
beside it, because one call handles a run of pages at once.

What the handlers did is reported back per page, so that a caller (a
workload pricing faults, a sampler) never has to diff page tables: a
:class:`FaultReport` pairs the selected pages (ascending) with one
:class:`FaultFlags` byte each.  A page can carry several flags, in the order
the kernel would take them: a write through a swap entry whose page is still
shared is ``SWAP | COW_COPY``; a write to a uffd-wp protected page resolved by
the monitor and then reused is ``UFFD_WP | WP_REUSE``.  A page that needed no
fault has no flags.

A small model: after a fork, the parent writes pages ``[0, 1, 2]`` of a
region whose page 0 is shared with the child, page 1 was never touched and
page 2 is already its own, writable::

    report = k.write("parent", "heap", [0, 1, 2], 7)
    report.flags        # [COW_COPY, ANONYMOUS, 0]
    report.count(FaultFlags.COW_COPY)   # 1
    report.faulted      # True

The report of a write that faulted nowhere (the steady state of a server
writing its own pages) holds no flag array at all until one is asked for.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from cowsim.sim.kernel.pages import PageIndex

if TYPE_CHECKING:
    from cowsim.sim.kernel.kernel import Kernel
    from cowsim.sim.kernel.mm import VMA, Process

FlagArray = npt.NDArray[np.uint8]


class FaultFlags(enum.IntFlag):
    """What the fault handlers did to one page (one byte per page in a :class:`FaultReport`)."""

    ANONYMOUS = 1 << 0
    """do_anonymous_page(): a private page that was ``pte_none`` (a new zeroed page on a
    write, the zero page on a read: then with ZERO_PAGE)."""
    ZERO_PAGE = 1 << 1
    """The shared zero page: mapped by a read fault (with ANONYMOUS), or replaced by a
    zeroed page by wp_page_copy() (with COW_COPY: a zero fill rather than a copy)."""
    SHMEM = 1 << 2
    """shmem_fault(): a MAP_SHARED anonymous page mapped from its page cache."""
    SWAP = 1 << 3
    """do_swap_page(): a swap entry faulted back in."""
    UFFD_WP = 1 << 4
    """handle_userfault(): a write hit a uffd-wp protected PTE; the monitor resolved it
    with UFFDIO_WRITEPROTECT(0) and the write was retried."""
    WP_REUSE = 1 << 5
    """do_wp_page() kept the page and made the PTE writable (wp_page_reuse, or
    wp_page_shared in a shared mapping): no copy, no TLB flush."""
    COW_COPY = 1 << 6
    """wp_page_copy(): the page was copied to a new one (and the old PTE flushed)."""
    UNSHARE = 1 << 7
    """A FAULT_FLAG_UNSHARE fault (a read-only pin of a maybe-shared page, 5.19+): with
    COW_COPY if it copied, alone if the page was only marked exclusive."""

    @property
    def u8(self) -> np.uint8:
        """The flags as a numpy uint8, for arithmetic on flag arrays."""
        return np.uint8(self.value)


ALL_FAULTS = FaultFlags(0xFF)


class FaultReport:
    """The faults one operation handled, per selected page.

    ``pages`` are the page numbers the operation selected (ascending, unique);
    ``flags[i]`` are the :class:`FaultFlags` of ``pages[i]`` (uint8; 0: no
    fault).  A report built without flags (nothing faulted) allocates its
    zero array only when :attr:`flags` is read.
    """

    __slots__ = ("_flags", "pages")

    def __init__(self, pages: PageIndex, flags: FlagArray | None = None) -> None:
        self.pages = pages
        self._flags = flags

    @property
    def flags(self) -> FlagArray:
        if self._flags is None:
            self._flags = np.zeros(self.pages.size, dtype=np.uint8)
        return self._flags

    @property
    def faulted(self) -> bool:
        """Whether any page took a fault."""
        return self._flags is not None and bool(np.count_nonzero(self._flags))

    def mask(self, flag: int = ALL_FAULTS) -> npt.NDArray[np.bool_]:
        """Pages carrying any of the bits of ``flag`` (default: any fault at all)."""
        if self._flags is None:
            return np.zeros(self.pages.size, dtype=bool)
        out: npt.NDArray[np.bool_] = (self._flags & np.uint8(flag)) != 0
        return out

    def count(self, flag: int = ALL_FAULTS) -> int:
        """How many pages carry any of the bits of ``flag``."""
        if self._flags is None:
            return 0
        return int(np.count_nonzero(self._flags & np.uint8(flag)))

    def pages_with(self, flag: int = ALL_FAULTS) -> PageIndex:
        """The page numbers carrying any of the bits of ``flag``."""
        out: PageIndex = self.pages[self.mask(flag)]
        return out

    def as_dict(self) -> dict[str, list[int]]:
        return {"pages": self.pages.tolist(), "flags": self.flags.tolist()}

    def __repr__(self) -> str:
        if not self.faulted:
            return f"FaultReport({self.pages.size} pages, no faults)"
        kinds = ", ".join(f"{flag.name}={self.count(flag)}" for flag in FaultFlags if self.count(flag))
        return f"FaultReport({self.pages.size} pages, {kinds})"


@dataclass(eq=False, slots=True)
class VmFault:
    """struct vm_fault: the context every fault handler of one operation shares."""

    k: Kernel
    owner: Process
    """The process whose page table faults (``vmf->vma->vm_mm``)."""
    vma: VMA
    cpu: int = 0
    write: bool = False
    """FAULT_FLAG_WRITE: the fault must leave writable PTEs."""
    unshare: bool = False
    """FAULT_FLAG_UNSHARE: break sharing but leave the PTE read-only (5.19+ R/O pins)."""
