"""Processes, address spaces (mm), VMAs and their page tables.

A VMA is one named region of a process (``mmap`` of N pages).  Its page table
is two numpy arrays indexed by page number within the region:

* ``pfn`` (int32): the frame a present PTE maps, the swap slot of a swap
  entry, or -1 for an empty (``pte_none``) entry;
* ``pte`` (uint16): the PTE's bits, below.

A PTE is *present* when ``pfn >= 0`` and ``_PAGE_SWAP`` is clear.  The bits
follow x86: ``_PAGE_RW`` (write), ``_PAGE_DIRTY``, ``_PAGE_SOFT_DIRTY``,
``_PAGE_UFFD_WP``; a swap entry keeps soft-dirty and uffd-wp and, from 5.19,
``_PAGE_SWP_EXCLUSIVE`` (the page was PageAnonExclusive when swapped out).
Three more bits record *why* a present PTE is read-only (fork, clear_refs,
mprotect, uffd-wp, swap-in), so that COW copies can be counted by cause.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from cowsim.sim.kernel.pages import FrameArray

PteArray = npt.NDArray[np.uint16]

_PAGE_RW = np.uint16(1 << 0)
_PAGE_DIRTY = np.uint16(1 << 1)
_PAGE_SOFT_DIRTY = np.uint16(1 << 2)
_PAGE_UFFD_WP = np.uint16(1 << 3)
_PAGE_SWAP = np.uint16(1 << 15)
"""Not a present PTE but a swap entry: ``pfn`` holds the swap slot."""
_PAGE_SWP_EXCLUSIVE = np.uint16(1 << 5)

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

    def present(self, pages: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        return (self.pfn[pages] >= 0) & (self.pte[pages] < _PAGE_SWAP)

    def swapped(self, pages: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        return self.pte[pages] >= _PAGE_SWAP  # the top bit

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
