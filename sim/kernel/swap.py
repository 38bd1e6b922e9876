"""Swap: MADV_PAGEOUT, the swap cache and swap-in (``do_swap_page``).

Paging out an anonymous page (MADV_PAGEOUT: ``madvise_cold_or_pageout_pte_range``
picks the pages, ``shrink_folio_list`` — ``shrink_page_list`` before 5.18 — reclaims
them) adds it to the *swap cache* (+1 reference, a swap slot), replaces its PTE by a swap
entry (swap count +1) and, once nothing else holds it, writes it to the slot
and frees the frame.  A page that other references keep alive (a pipe, a GUP
reference, a pin) stays in memory in the swap cache; swap-in then maps that
very frame again.

The era rules that matter here:

* MADV_PAGEOUT leaves pages mapped more than once alone and first drains the
  local LRU-add batch (§3.9).
* 5.11+ (feb889fb40fa): maybe-pinned pages are not added to the swap cache.
  5.19+: unmapping must clear PageAnonExclusive, which fails for maybe-pinned
  pages, so they stay mapped too; a swap entry remembers exclusivity in
  ``_PAGE_SWP_EXCLUSIVE``.
* A write fault through a swap entry: ≤5.17 uses ``reuse_swap_page``
  (mapcount + swap count, GUP references invisible), 5.18+ the page_count
  logic (c145e0b47c77), 5.19+ maps exclusive entries writable at once.
* A read fault through a swap entry maps the page read-only (the next write takes
  do_wp_page) until 6.11, which maps an exclusive page writable (clean) already on the
  read, unless uffd-wp or soft-dirty tracking needs the write fault ("mm: swap: reuse
  exclusive folio directly instead of wp page faults"; the version is [U]).

Simplification: a page read back from swap goes straight onto the LRU rather
than through the per-CPU LRU-add batch.  No reuse decision changes by it:
≤5.17 the swap-cache reference alone forces the copy, and 5.18+ drain the
batch inside the reuse check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from cowsim.sim.kernel.generations import SwapinReuse
from cowsim.sim.kernel.mm import (
    PTE_WRITTEN,
    VM_SOFTDIRTY,
    VMA,
    Pte,
    WpCause,
    with_cause,
)
from cowsim.sim.kernel.pages import ZERO_PFN, FrameArray, PageIndex, PG_anon, PG_anon_exclusive, PG_swapcache
from cowsim.sim.kernel.vmfault import VmFault

if TYPE_CHECKING:
    from cowsim.sim.kernel.kernel import Kernel
    from cowsim.sim.kernel.mm import Process


class SwapSpace:
    """Swap slots: the swap map count, the data written there and the swap-cache frame."""

    def __init__(self) -> None:
        self.count = np.zeros(0, dtype=np.int32)
        """Swap map count: swap PTEs referencing the slot."""
        self.content = np.zeros(0, dtype=np.uint32)
        """The data written to the slot (valid once the frame left the swap cache)."""
        self.cache_frame = np.zeros(0, dtype=np.int32)
        """The swap-cache frame of the slot, or -1."""
        self.used = np.zeros(0, dtype=bool)
        self._next = 0
        self._free: list[int] = []

    def alloc(self, count: int) -> FrameArray:
        """Allocate ``count`` slots (lowest free first, then fresh)."""
        reuse = sorted(self._free)[:count]
        self._free = sorted(set(self._free) - set(reuse))
        fresh = count - len(reuse)
        if self._next + fresh > self.count.shape[0]:
            size = max(self._next + fresh, 2 * self.count.shape[0], 64)
            for name, fill in (("count", 0), ("content", 0), ("cache_frame", -1), ("used", False)):
                old = getattr(self, name)
                grown = np.full(size, fill, dtype=old.dtype)
                grown[: old.shape[0]] = old
                setattr(self, name, grown)
        slots = np.concatenate(
            [np.asarray(reuse, dtype=np.int32),
             np.arange(self._next, self._next + fresh, dtype=np.int32)]
        )
        self._next += fresh
        self.count[slots] = 0
        self.content[slots] = 0
        self.cache_frame[slots] = -1
        self.used[slots] = True
        return slots

    def release(self, slots: FrameArray) -> None:
        """Free slots that have neither swap PTEs nor a swap-cache frame."""
        done = slots[(self.count[slots] == 0) & (self.cache_frame[slots] < 0) & self.used[slots]]
        if done.size:
            self.used[done] = False
            self._free.extend(int(slot) for slot in done)

    def nbytes(self) -> int:
        return int(self.count.nbytes + self.content.nbytes + self.cache_frame.nbytes + self.used.nbytes)


def delete_from_swap_cache(k: Kernel, frames: FrameArray) -> None:
    """Remove frames from the swap cache (dropping its reference), saving their data."""
    if frames.size == 0:
        return
    slots_of = k.frames.ensure_swap_slots()
    slots = slots_of[frames]
    k.swap.content[slots] = k.frames.content[frames]
    k.swap.cache_frame[slots] = -1
    slots_of[frames] = -1
    k.frames.clear(frames, PG_swapcache)
    k.put_page(frames)
    k.swap.release(slots)


def try_to_free_swap(k: Kernel, frames: FrameArray) -> npt.NDArray[np.bool_]:
    """try_to_free_swap(): drop swap-cache frames whose slot no swap PTE uses any more."""
    in_cache = k.frames.test(frames, PG_swapcache)
    if not np.count_nonzero(in_cache):
        return in_cache
    slots = k.frames.ensure_swap_slots()[np.where(in_cache, frames, 0)]
    freeable: npt.NDArray[np.bool_] = in_cache & (k.swap.count[np.where(in_cache, slots, 0)] == 0)
    delete_from_swap_cache(k, frames[freeable])
    return freeable


def free_swap_and_cache(k: Kernel, slots: FrameArray) -> None:
    """free_swap_and_cache(): a swap PTE went away; free cache-only pages nobody holds."""
    if slots.size == 0:
        return
    np.subtract.at(k.swap.count, slots, 1)
    slots = np.unique(slots)
    idle = slots[k.swap.count[slots] == 0]
    cached = k.swap.cache_frame[idle]
    cached_idle = cached[cached >= 0]
    only_cache = cached_idle[k.frames.refcount[cached_idle] == 1]
    delete_from_swap_cache(k, only_cache)
    k.swap.release(idle)


def madvise_cold_or_pageout_pte_range(k: Kernel, owner: Process, vma: VMA, pages: PageIndex,
                                       cpu: int) -> None:
    """MADV_PAGEOUT (``madvise_pageout``): pick the private anonymous pages mapped once,
    then reclaim them (:func:`shrink_folio_list`)."""
    k.lru_add_drain(cpu)
    if vma.shared:
        return  # shmem swap is not modelled; shared pages stay resident
    frames = vma.pfn[pages]
    candidate = vma.present(pages) & (frames != ZERO_PFN)
    candidate &= k.frames.mapcount[np.where(candidate, frames, 0)] == 1
    safe = np.where(candidate, frames, 0)
    pinned = k.frames.maybe_dma_pinned(safe)
    if k.gen.swapcache_refuses_pinned or k.gen.anon_exclusive:
        candidate &= ~pinned
    if np.count_nonzero(candidate):
        shrink_folio_list(k, owner, vma, pages[candidate], frames[candidate], cpu)


def shrink_folio_list(k: Kernel, owner: Process, vma: VMA, pages: PageIndex, frames: FrameArray,
                      cpu: int) -> None:
    """shrink_folio_list() (shrink_page_list before 5.18) on the chosen pages: add_to_swap,
    try_to_unmap, pageout, and free what nothing else holds."""
    slots_of = k.frames.ensure_swap_slots()
    # add_to_swap(): frames not yet in the swap cache get a slot and a cache reference.
    fresh = frames[~k.frames.test(frames, PG_swapcache)]
    new_slots = k.swap.alloc(fresh.size)
    slots_of[fresh] = new_slots
    k.swap.cache_frame[new_slots] = fresh
    k.frames.set(fresh, PG_swapcache)
    k.get_page(fresh)
    # try_to_unmap(): the PTE becomes a swap entry keeping soft-dirty/uffd-wp (and exclusivity).
    slots = slots_of[frames]
    old = vma.pte[pages]
    new = (old & (Pte.SOFT_DIRTY | Pte.UFFD_WP).u16) | Pte.SWAP.u16
    if k.gen.anon_exclusive:
        exclusive = k.frames.test(frames, PG_anon_exclusive)
        new = np.where(exclusive, new | Pte.SWP_EXCLUSIVE.u16, new)
        k.frames.clear(frames, PG_anon_exclusive)
    vma.pte[pages] = new
    vma.pfn[pages] = slots
    k.swap.count[slots] += 1
    k.frames.mapcount[frames] -= 1
    k.put_page(frames)
    k.flush_tlb(owner.mm, "range", pages=int(pages.size), cpu=cpu)
    k.counters.add("swap_outs", pages.size)
    # pageout(): written to the slot; frames nothing else holds leave memory.
    unheld = frames[k.frames.refcount[frames] == 1]
    delete_from_swap_cache(k, unheld)


def do_swap_page(vmf: VmFault, pages: PageIndex) -> npt.NDArray[np.bool_]:
    """do_swap_page(): fault swap entries back in (for a write if ``vmf.write``).  Returns,
    per page, whether a write left it mapped read-only and must still take do_wp_page."""
    k, vma, write = vmf.k, vmf.vma, vmf.write
    k.counters.fault("swap", pages.size)
    slots = vma.pfn[pages]
    old = vma.pte[pages]
    # Look the slot up in the swap cache, or read it into a new swap-cache frame.
    frames = k.swap.cache_frame[slots].copy()
    missing = frames < 0
    if np.count_nonzero(missing):
        read_slots = slots[missing]
        new_frames = k.alloc_pages(int(read_slots.size), PG_anon | PG_swapcache,
                                   k.swap.content[read_slots])
        k.frames.ensure_swap_slots()[new_frames] = read_slots
        k.swap.cache_frame[read_slots] = new_frames
        k.get_page(new_frames)  # the swap cache's reference
        frames[missing] = new_frames
    k.swap.count[slots] -= 1  # swap_free(): this PTE no longer uses the slot
    exclusive = np.zeros(pages.size, dtype=bool)
    if k.gen.anon_exclusive:
        exclusive = (old & Pte.SWP_EXCLUSIVE.u16) != 0
    writable = np.zeros(pages.size, dtype=bool)
    if k.gen.swapin_reuse is SwapinReuse.MAPCOUNT:
        # Map first, then reuse_swap_page(): mapcount + swap count <= 1.
        k.frames.mapcount[frames] += 1
        k.get_page(frames)
        if write:
            in_cache = k.frames.test(frames, PG_swapcache)
            count = k.frames.mapcount[frames] + np.where(in_cache, k.swap.count[slots], 0)
            writable = count <= 1
            delete_from_swap_cache(k, frames[writable & in_cache])
    else:
        # Our reference (it becomes the mapping's) keeps the page while the cache lets go.
        k.frames.mapcount[frames] += 1
        k.get_page(frames)
        if write:
            # should_try_to_free_swap(): only the swap cache and we hold it.
            lone = (k.frames.refcount[frames] == 2) & (k.swap.count[slots] == 0)
            try_to_free_swap(k, frames[lone])
        sole = k.frames.refcount[frames] == 1
        k.frames.set(frames[exclusive | (sole & k.gen.anon_exclusive)], PG_anon_exclusive)
        if write:
            writable = exclusive | sole
    writable &= (old & Pte.UFFD_WP.u16) == 0
    keep = old & (Pte.SOFT_DIRTY | Pte.UFFD_WP).u16
    read_only = with_cause(keep, WpCause.SWAPIN)
    clean_writable = np.zeros(pages.size, dtype=bool)
    if not write and k.gen.swapin_read_maps_writable and vma.writable:
        # The read maps an exclusive page writable but clean (no DIRTY, no soft-dirty set):
        # not for uffd-wp, nor where soft-dirty tracking needs the write fault.
        clean_writable = (exclusive | (k.frames.refcount[frames] == 1)) \
            & ((old & Pte.UFFD_WP.u16) == 0)
        if not vma.vm_flags & VM_SOFTDIRTY:
            clean_writable &= (old & Pte.SOFT_DIRTY.u16) != 0
    vma.pte[pages] = np.where(writable, keep | PTE_WRITTEN,
                              np.where(clean_writable, keep | Pte.RW.u16, read_only))
    vma.pfn[pages] = frames
    k.swap.release(slots)
    still_read_only: npt.NDArray[np.bool_] = ~writable if write else writable
    return still_read_only
