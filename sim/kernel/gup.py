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
the frames held with the frames the owner maps now.  A device transfer
(:func:`dma_write`, :func:`dma_read`) touches everything an id holds, or only
some of its pages: one chunk holding a whole buffer is the common case, and a
chunk of consecutive pages finds any subset by subtraction, without a search.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from cowsim.sim.errors import KernelOpError
from cowsim.sim.kernel import fault, oracles
from cowsim.sim.kernel.mm import VMA, Prot
from cowsim.sim.kernel.pages import ZERO_PFN, FrameArray, PageIndex, PG_anon, PG_anon_exclusive
from cowsim.sim.kernel.vmfault import FaultReport

if TYPE_CHECKING:
    from cowsim.sim.kernel.kernel import Kernel
    from cowsim.sim.kernel.mm import Process


@dataclass(eq=False)
class HeldChunk:
    """The frames one GUP call took: whose, which pages, how."""

    owner: Process
    vma: VMA
    pages: PageIndex
    """The owner's page numbers, ascending and unique; ``frames[i]`` backs ``pages[i]``."""
    frames: FrameArray
    label: str  # gup, pin, vmsplice, odirect_read, odirect_write, io_uring
    pinned: bool  # FOLL_PIN (else FOLL_GET)
    writable: bool  # FOLL_WRITE
    longterm: bool
    amount: int  # what each reference added to the refcount

    def positions(self, pages: PageIndex) -> tuple[PageIndex, npt.NDArray[np.bool_] | None]:
        """Where the (ascending) ``pages`` sit in this chunk, and which of them it holds
        (None: all of them)."""
        held = self.pages
        if held.size == 0:
            return pages[:0], np.zeros(pages.size, dtype=bool)
        first, last = int(held[0]), int(held[-1])
        if last - first + 1 == held.size:  # consecutive pages: positions by subtraction
            if pages.size == 0 or (int(pages[0]) >= first and int(pages[-1]) <= last):
                return pages - first, None
            inside = (pages >= first) & (pages <= last)
            return pages[inside] - first, inside
        at = np.minimum(np.searchsorted(held, pages), held.size - 1)
        inside = held[at] == pages
        if inside.all():
            return at, None
        return at[inside], inside


@dataclass(eq=False)
class Holder:
    """A pipe or a named reference id and everything it holds."""

    name: str
    is_pipe: bool
    chunks: list[HeldChunk] = field(default_factory=list)

    def all_frames(self) -> FrameArray:
        """Every held frame, chunk by chunk (a single chunk's own array: do not modify)."""
        if not self.chunks:
            return np.zeros(0, dtype=np.int32)
        if len(self.chunks) == 1:
            return self.chunks[0].frames
        return np.concatenate([chunk.frames for chunk in self.chunks])

    @property
    def description(self) -> str:
        return f"pipe {self.name}" if self.is_pipe else f"id {self.name}"

    def select(self, pages: npt.ArrayLike | None
               ) -> Iterator[tuple[HeldChunk, PageIndex | None]]:
        """Each chunk with the positions of ``pages`` in it (None: the whole chunk), chunks
        holding none of them left out.  ``pages`` are page numbers of the one region the
        holder holds, and must all be held: else KernelOpError("pages")."""
        if pages is None:
            yield from ((chunk, None) for chunk in self.chunks)
            return
        regions = {(id(chunk.owner), id(chunk.vma)) for chunk in self.chunks}
        if len(regions) != 1:
            raise KernelOpError("pages", f"{self.description} holds pages of "
                                         f"{'several regions' if regions else 'no region'}; "
                                         "a transfer of some pages needs exactly one")
        index = self.chunks[0].vma.select(pages)
        selected: list[tuple[HeldChunk, PageIndex | None]] = []
        covered: npt.NDArray[np.bool_] | None = None
        for chunk in self.chunks:
            at, inside = chunk.positions(index)
            if inside is None:
                covered = np.ones(index.size, dtype=bool)
                selected.append((chunk, None if at.size == chunk.pages.size else at))
                continue
            covered = inside if covered is None else covered | inside
            if at.size:
                selected.append((chunk, at))
        if covered is not None and not covered.all():
            raise KernelOpError("pages", f"page {int(index[~covered][0])} of "
                                         f"{self.chunks[0].vma.region!r} is not held under "
                                         f"{self.description}")
        yield from selected


def get_user_pages(k: Kernel, owner: Process, vma: VMA, pages: PageIndex, holder: Holder, *,
                   label: str, pin: bool, write: bool, longterm: bool, cpu: int) -> FaultReport:
    """__get_user_pages() (get_user_pages with FOLL_GET, pin_user_pages with FOLL_PIN):
    fault the pages in as the flags require, then reference them.  Returns the faults."""
    check_vma_flags(vma, write)
    # 5.8: break COW for any GUP in a COW mapping (read as: where the VMA may be written).
    force_write = k.gen.gup_breaks_cow and vma.is_cow_mapping and vma.writable
    if write or force_write:
        report = fault.fault_in_writable(k, owner, vma, pages, cpu=cpu)
    else:
        report = fault.fault_in_readable(k, owner, vma, pages, cpu=cpu)
        if pin:
            must = gup_must_unshare(k, vma, pages, longterm)
            if np.count_nonzero(must):
                flags = report.flags.copy()
                flags[must] |= fault.unshare(k, owner, vma, pages[must], cpu=cpu)
                report = FaultReport(pages, flags)
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
    return report


def check_vma_flags(vma: VMA, write: bool) -> None:
    """check_vma_flags(): GUP needs a readable VMA, and a writable one for FOLL_WRITE."""
    if vma.prot is Prot.NONE:
        raise KernelOpError("region", f"GUP on region {vma.region!r} mapped PROT_NONE: EFAULT")
    if write and vma.prot is not Prot.READ_WRITE:
        raise KernelOpError("region", f"GUP for write on read-only region {vma.region!r}: EFAULT")


def gup_must_unshare(k: Kernel, vma: VMA, pages: PageIndex, longterm: bool) -> npt.NDArray[np.bool_]:
    """gup_must_unshare() for a read-only FOLL_PIN: the pages whose pin must not land on a
    page another mm may share (5.19+), so they take an unshare fault first."""
    if not k.gen.anon_exclusive or vma.shared:
        return np.zeros(pages.size, dtype=bool)
    frames = vma.pfn[pages]
    real = frames != ZERO_PFN
    safe = np.where(real, frames, 0)
    anon = real & k.frames.test(safe, PG_anon)
    must: npt.NDArray[np.bool_] = anon & ~k.frames.test(safe, PG_anon_exclusive)
    if k.gen.unshare_cow_mappings and longterm:
        must |= ~real  # 6.2+: the zero page in a COW mapping is unshared too
    return must


def release(k: Kernel, holder: Holder) -> None:
    """put_page() / unpin_user_pages() on everything held."""
    for chunk in holder.chunks:
        # One chunk never holds a frame twice (pages are unique, frames per page distinct).
        k.put_page(chunk.frames, chunk.amount)
    holder.chunks.clear()


def dma_write(k: Kernel, holder: Holder, value: int, pages: npt.ArrayLike | None = None) -> None:
    """The device writes into the held frames (of ``pages`` only, if given) on behalf of
    each chunk's owner; the leak oracle sees every store."""
    if any(not chunk.writable for chunk in holder.chunks):
        raise KernelOpError("id", f"{holder.description} holds read-only references; "
                                  "a device cannot DMA into them")
    label = f"device via {holder.description}"
    for chunk, at in holder.select(pages):
        frames = chunk.frames if at is None else chunk.frames[at]
        chunk_pages = chunk.pages if at is None else chunk.pages[at]
        oracles.check_store(k, chunk.owner, frames, chunk_pages, chunk.vma, writer_label=label)
        k.frames.content[frames] = value


def dma_read(k: Kernel, holder: Holder,
             pages: npt.ArrayLike | None = None) -> npt.NDArray[np.uint32]:
    """What the device reads from the held frames (of ``pages`` only, if given), chunk by
    chunk."""
    parts = [chunk.frames if at is None else chunk.frames[at] for chunk, at in holder.select(pages)]
    if not parts:
        return np.zeros(0, dtype=np.uint32)
    frames = parts[0] if len(parts) == 1 else np.concatenate(parts)
    values: npt.NDArray[np.uint32] = k.frames.content[frames]
    return values
