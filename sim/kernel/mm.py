"""Processes, address spaces (mm), VMAs and their page tables.

A VMA is one named region of a process (``mmap`` of N pages).  Its page table
is two numpy arrays indexed by page number within the region:

* ``pfn`` (int32): the frame a present PTE maps, the swap slot of a swap
  entry, or -1 for an empty (``pte_none``) entry;
* ``pte`` (uint16): the PTE's bits, :class:`Pte`.

A PTE is *present* when ``pfn >= 0`` and :attr:`Pte.SWAP` is clear.  The bits
follow x86 (``_PAGE_RW``, ``_PAGE_DIRTY``, ``_PAGE_SOFT_DIRTY``,
``_PAGE_UFFD_WP``); a swap entry keeps soft-dirty and uffd-wp and, from 5.19,
``_PAGE_SWP_EXCLUSIVE`` (the page was PageAnonExclusive when swapped out).
Three more bits record *why* a present PTE is read-only (fork, clear_refs,
mprotect, uffd-wp, swap-in), so that COW copies can be counted by cause.

Code outside the kernel model asks the VMA instead of reading bits:
:meth:`VMA.present`, :meth:`VMA.swapped`, :meth:`VMA.populated`,
:meth:`VMA.pte_write`, :meth:`VMA.read_only` and :meth:`VMA.mapped_frames`
(``pages=None``: the whole VMA, without building an index array).

A small model: after ``mmap`` of 3 pages, a write to page 0 and a read of
page 1, ``pfn == [5, 0, -1]`` (frame 5, the zero page, none) and ``pte ==
[RW|DIRTY|SOFT_DIRTY, 0, 0]``: ``present() == [T, T, F]``, ``read_only() ==
[F, T, F]``, ``mapped_frames() == [5]``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from cowsim.sim.errors import KernelOpError
from cowsim.sim.kernel.pages import ZERO_PFN, FrameArray, PageIndex

PteArray = npt.NDArray[np.uint16]
BoolArray = npt.NDArray[np.bool_]


class Pte(enum.IntFlag):
    """The bits of a page-table entry (``vma.pte``), x86's ``_PAGE_*``.

    An ``IntFlag`` operand turns a uint16 numpy expression into int64, so
    array arithmetic uses :attr:`u16` (``pte & Pte.RW.u16``) and
    :attr:`inverted` for clearing (``pte & Pte.RW.inverted``, never ``~Pte.RW``,
    which inverts only the flag's own members).
    """

    RW = 1 << 0
    """_PAGE_RW: writable."""
    DIRTY = 1 << 1
    """_PAGE_DIRTY: written since mapped (set by the hardware on a store)."""
    SOFT_DIRTY = 1 << 2
    """_PAGE_SOFT_DIRTY: written since the last clear_refs 4 (set by write faults)."""
    UFFD_WP = 1 << 3
    """_PAGE_UFFD_WP: userfaultfd write-protected."""
    SWP_EXCLUSIVE = 1 << 5
    """_PAGE_SWP_EXCLUSIVE (5.19+, swap entries): the page was PageAnonExclusive."""
    SWAP = 1 << 15
    """Not a present PTE but a swap entry: ``pfn`` holds the swap slot (the top bit, so
    ``pte >= Pte.SWAP`` tests it)."""

    @property
    def u16(self) -> np.uint16:
        """The bits as a numpy uint16, for arithmetic on PTE arrays."""
        return np.uint16(self.value)

    @property
    def inverted(self) -> np.uint16:
        """Every other bit as a numpy uint16: ``pte & flag.inverted`` clears ``flag``."""
        return np.uint16(~self.value & 0xFFFF)


_SWAP = Pte.SWAP.u16
_RW = Pte.RW.u16

PTE_WRITTEN = (Pte.RW | Pte.DIRTY | Pte.SOFT_DIRTY).u16
"""The bits a write fault leaves: ``pte_mkwrite(pte_mkdirty())`` (which sets soft-dirty too)."""

WP_CAUSE_SHIFT = 6
WP_CAUSE_MASK = np.uint16(0b111 << WP_CAUSE_SHIFT)


class WpCause(enum.IntEnum):
    """Why a present private PTE is read-only; names the cause of a later COW copy."""

    NONE = 0
    FORK = 1
    CLEAR_REFS = 2
    MPROTECT = 3
    UFFD_WP = 4
    SWAPIN = 5
    UNSHARE = 6


def with_cause(pte: PteArray, cause: WpCause, clear: int = 0) -> PteArray:
    """The PTE bits less ``clear``, with the read-only cause replaced."""
    return (pte & ~(WP_CAUSE_MASK | np.uint16(clear))) | np.uint16(int(cause) << WP_CAUSE_SHIFT)


def cause_of(pte: PteArray) -> npt.NDArray[np.uint16]:
    causes: npt.NDArray[np.uint16] = ((pte & WP_CAUSE_MASK) >> WP_CAUSE_SHIFT).astype(np.uint16)
    return causes


class Prot(enum.Enum):
    """A VMA's protection: PROT_NONE, PROT_READ or PROT_READ|PROT_WRITE."""

    NONE = "none"
    READ = "r"
    READ_WRITE = "rw"


VM_DONTCOPY = 1 << 0
"""MADV_DONTFORK: the child does not inherit the VMA."""
VM_WIPEONFORK = 1 << 1
"""MADV_WIPEONFORK: the child inherits the VMA empty."""
VM_SOFTDIRTY = 1 << 2
"""Soft-dirty tracking is *off* for the VMA (set on new VMAs, cleared by clear_refs 4)."""
VM_UFFD_WP = 1 << 3
"""Registered with userfaultfd for write-protect faults."""


class ShmemObject:
    """The shmem backing of a MAP_SHARED|MAP_ANONYMOUS region: its page cache.

    Parent and child VMAs of a shared region point at the same object; each
    allocated page holds one page-cache reference.
    """

    def __init__(self, npages: int) -> None:
        self.frames: FrameArray = np.full(npages, -1, dtype=np.int32)
        self.users = 1
        """VMAs mapping the object; its pages are released when the last goes."""


@dataclass(eq=False)
class VMA:
    """One named region of a process and its page table."""

    region: str
    npages: int
    shared: bool
    prot: Prot
    vm_flags: int
    pfn: FrameArray
    pte: PteArray
    shmem: ShmemObject | None = None

    @classmethod
    def new(cls, region: str, npages: int, shared: bool, initialized: bool = True) -> VMA:
        """A new VMA with empty PTEs (``initialized=False``: page tables the caller fills)."""
        return cls(
            region=region,
            npages=npages,
            shared=shared,
            prot=Prot.READ_WRITE,
            vm_flags=VM_SOFTDIRTY,  # mmap() sets VM_SOFTDIRTY on new VMAs
            pfn=np.full(npages, -1, dtype=np.int32) if initialized
            else np.empty(npages, dtype=np.int32),
            pte=np.zeros(npages, dtype=np.uint16) if initialized
            else np.empty(npages, dtype=np.uint16),
            shmem=ShmemObject(npages) if shared else None,
        )

    @property
    def is_cow_mapping(self) -> bool:
        """is_cow_mapping(): private and may be written (all private anonymous VMAs)."""
        return not self.shared

    @property
    def writable(self) -> bool:
        return self.prot is Prot.READ_WRITE

    def select(self, pages: npt.ArrayLike | None) -> PageIndex:
        """Page numbers of the region: all of it (None), or the given ones, checked to lie
        inside it (else KernelOpError("pages")), ascending and unique."""
        if pages is None:
            return np.arange(self.npages, dtype=np.int64)
        if isinstance(pages, range):
            if pages.step != 1 or pages.start < 0 or pages.stop > self.npages:
                bad = pages.start if pages.start < 0 else pages.stop - 1
                raise KernelOpError(
                    "pages", f"page {bad} is outside region {self.region!r} of {self.npages} pages"
                )
            return np.arange(pages.start, pages.stop, dtype=np.int64)
        index = np.asarray(pages, dtype=np.int64)
        if index.ndim != 1:
            index = index.reshape(-1)
        if index.size > 1 and np.count_nonzero(index[1:] <= index[:-1]):
            index = np.sort(index)
            index = index[np.concatenate(([True], index[1:] != index[:-1]))]
        if index.size and (int(index[0]) < 0 or int(index[-1]) >= self.npages):
            bad = int(index[0] if index[0] < 0 else index[-1])
            raise KernelOpError(
                "pages", f"page {bad} is outside region {self.region!r} of {self.npages} pages"
            )
        return index

    # -- page-table queries (pages=None: the whole VMA, no index array) ----------
    def _at(self, pages: PageIndex | None) -> tuple[FrameArray, PteArray]:
        if pages is None:
            return self.pfn, self.pte
        return self.pfn[pages], self.pte[pages]

    def populated(self, pages: PageIndex | None = None) -> BoolArray:
        """Not ``pte_none``: a present PTE or a swap entry."""
        pfn = self.pfn if pages is None else self.pfn[pages]
        out: BoolArray = pfn >= 0
        return out

    def present(self, pages: PageIndex | None = None) -> BoolArray:
        """pte_present(): maps a frame (possibly the zero page)."""
        pfn, pte = self._at(pages)
        out: BoolArray = (pfn >= 0) & (pte < _SWAP)
        return out

    def swapped(self, pages: PageIndex | None = None) -> BoolArray:
        """A swap entry: ``pfn`` is its swap slot."""
        pte = self.pte if pages is None else self.pte[pages]
        out: BoolArray = pte >= _SWAP  # the top bit
        return out

    def pte_write(self, pages: PageIndex | None = None) -> BoolArray:
        """pte_write(): present and writable (a store needs no fault).  Only present PTEs
        carry :attr:`Pte.RW`."""
        pte = self.pte if pages is None else self.pte[pages]
        out: BoolArray = (pte & _RW) != 0
        return out

    def read_only(self, pages: PageIndex | None = None) -> BoolArray:
        """Present and not writable: a store takes a write-protect fault (do_wp_page)."""
        pfn, pte = self._at(pages)
        out: BoolArray = (pfn >= 0) & (pte < _SWAP) & ((pte & _RW) == 0)
        return out

    def mapped_frames(self, pages: PageIndex | None = None, *,
                      zero_page: bool = False) -> FrameArray:
        """The frames present PTEs map, in page order.  The shared zero page is left out
        unless ``zero_page`` (it is never refcounted and costs no memory)."""
        pfn, pte = self._at(pages)
        keep = (pfn >= 0 if zero_page else pfn > ZERO_PFN) & (pte < _SWAP)
        out: FrameArray = pfn[keep]
        return out

    def nbytes(self) -> int:
        total = self.pfn.nbytes + self.pte.nbytes
        if self.shmem is not None:
            total += self.shmem.frames.nbytes
        return total


@dataclass(eq=False)
class MM:
    """An address space: its VMAs by region name, and per-mm GUP state."""

    vmas: dict[str, VMA] = field(default_factory=dict)
    has_pinned: bool = False
    """mm->has_pinned / MMF_HAS_PINNED: sticky once any FOLL_PIN touched this mm."""
    cpus: set[int] = field(default_factory=lambda: {0})
    """mm_cpumask: the CPUs that may hold this mm's translations."""


@dataclass(eq=False)
class Process:
    """A process: a name, a pid and its mm (threads share it)."""

    name: str
    pid: int
    mm: MM
    alive: bool = True
