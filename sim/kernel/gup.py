"""get_user_pages: FOLL_GET references, FOLL_PIN pins, and the devices behind them.

GUP looks up (faulting in as needed) the frames behind a range of a process's
memory and takes a reference on each so that a device, a pipe or the kernel
can use them after the process's page tables change:

* **FOLL_GET** (``get_user_pages``, vmsplice, O_DIRECT before 6.4): refcount
  +1.  Invisible to every "is it pinned?" test.
* **FOLL_PIN** (``pin_user_pages``: io_uring fixed buffers, RDMA, VFIO,
  O_DIRECT from 6.4): refcount +``GUP_PIN_COUNTING_BIAS`` (1024) and the mm's
  sticky ``has_pinned`` flag, so that fork, clear_refs and reclaim can guess
  ``page_maybe_dma_pinned()``.
* **FOLL_WRITE**: the frames must be writable by the process now, so a
  read-only PTE takes a write fault first (do_wp_page): the reference ends on
  a page that is exclusive *at that moment*.
* 5.8 (17839856fd58) treats any FOLL_GET/FOLL_PIN in a COW mapping as a
  write ("break COW"), so a GUP never holds a page shared with another mm.
* 5.19+: a read-only FOLL_PIN of an anonymous page that is not
  PageAnonExclusive first unshares it (FAULT_FLAG_UNSHARE); 6.2+ also for a
  long-term pin of the zero page in a private mapping.

What GUP took is kept in a :class:`Holder` (a pipe or a reference id), chunk
by chunk, remembering the owner process and pages so the oracles can compare
the frames held with the frames the owner maps now.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from cowsim.sim.errors import KernelOpError
from cowsim.sim.kernel import fault, oracles
from cowsim.sim.kernel.mm import VMA, Prot
from cowsim.sim.kernel.pages import ZERO_PFN, FrameArray, PageIndex, PG_anon, PG_anon_exclusive

if TYPE_CHECKING:
    from cowsim.sim.kernel.kernel import Kernel
    from cowsim.sim.kernel.mm import Process


@dataclass(eq=False)
class HeldChunk:
    """The frames one GUP call took: whose, which pages, how."""

    owner: Process
    vma: VMA
    pages: PageIndex
    frames: FrameArray
    label: str  # gup, pin, vmsplice, odirect_read, odirect_write, io_uring
    pinned: bool  # FOLL_PIN (else FOLL_GET)
    writable: bool  # FOLL_WRITE
    longterm: bool
    amount: int  # what each reference added to the refcount


@dataclass(eq=False)
class Holder:
    """A pipe or a named reference id and everything it holds."""

    name: str
    is_pipe: bool
    chunks: list[HeldChunk] = field(default_factory=list)

    def all_frames(self) -> FrameArray:
        if not self.chunks:
            return np.zeros(0, dtype=np.int32)
        return np.concatenate([chunk.frames for chunk in self.chunks])

    @property
    def description(self) -> str:
        return f"pipe {self.name}" if self.is_pipe else f"id {self.name}"


def get_user_pages(k: Kernel, owner: Process, vma: VMA, pages: PageIndex, holder: Holder, *,
                   label: str, pin: bool, write: bool, longterm: bool, cpu: int) -> None:
    """__get_user_pages(): fault the pages in as the flags require, then reference them."""
    check_access(vma, write)
    # 5.8: break COW for any GUP in a COW mapping (read as: where the VMA may be written).
    force_write = k.gen.gup_breaks_cow and vma.is_cow_mapping and vma.writable
    if write or force_write:
        fault.fault_in_writable(k, owner, vma, pages, cpu=cpu)
    else:
        fault.fault_in_readable(k, owner, vma, pages, cpu=cpu)
        if pin:
            _unshare_for_read_only_pin(k, owner, vma, pages, longterm, cpu)
    frames = vma.pfn[pages].copy()
    amount = k.gen.pin_bias if pin else 1
    k.get_page(frames, amount)
    if pin:
        owner.mm.has_pinned = True
        k.counters.add("pin_pages", pages.size)
    else:
        k.counters.add("gup_pages", pages.size)
    holder.chunks.append(HeldChunk(owner=owner, vma=vma, pages=pages, frames=frames, label=label,
                                   pinned=pin, writable=write, longterm=longterm, amount=amount))


def check_access(vma: VMA, write: bool) -> None:
    """check_vma_flags(): GUP needs a readable VMA, and a writable one for FOLL_WRITE."""
    if vma.prot is Prot.NONE:
        raise KernelOpError("region", f"GUP on region {vma.region!r} mapped PROT_NONE: EFAULT")
    if write and vma.prot is not Prot.READ_WRITE:
        raise KernelOpError("region", f"GUP for write on read-only region {vma.region!r}: EFAULT")


def _unshare_for_read_only_pin(k: Kernel, owner: Process, vma: VMA, pages: PageIndex,
                               longterm: bool, cpu: int) -> None:
    """gup_must_unshare(): R/O pins must not land on a page another mm may share."""
    if not k.gen.anon_exclusive or vma.shared:
        return
    frames = vma.pfn[pages]
    real = frames != ZERO_PFN
    safe = np.where(real, frames, 0)
    anon = real & k.frames.test(safe, PG_anon)
    must = anon & ~k.frames.test(safe, PG_anon_exclusive)
    if k.gen.unshare_cow_mappings and longterm:
        must |= ~real  # 6.2+: the zero page in a COW mapping is unshared too
    if must.any():
        fault.unshare(k, owner, vma, pages[must], cpu=cpu)


def release(k: Kernel, holder: Holder) -> None:
    """put_page()/unpin_user_page() on everything held."""
    for chunk in holder.chunks:
        _put_chunk(k, chunk)
    holder.chunks.clear()


def _put_chunk(k: Kernel, chunk: HeldChunk) -> None:
    frames = chunk.frames
    # One chunk never holds a frame twice (pages are unique, frames per page distinct).
    k.put_page(frames, chunk.amount)


def dma_write(k: Kernel, holder: Holder, value: int) -> None:
    """The device writes into the held frames (on behalf of each chunk's owner)."""
    if any(not chunk.writable for chunk in holder.chunks):
        raise KernelOpError("id", f"{holder.description} holds read-only references; "
                                  "a device cannot DMA into them")
    for chunk in holder.chunks:
        oracles.check_store(k, chunk.owner, chunk.frames, chunk.pages, chunk.vma,
                            writer_label=f"device via {holder.description}")
        k.frames.content[chunk.frames] = value
