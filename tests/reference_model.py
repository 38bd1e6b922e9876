"""A deliberately plain, page-by-page reference implementation of docs/kernel-model.md.

Everything here is written from the contract in ``docs/kernel-model.md`` (and, where
that text is silent, ``kernel-semantics.md``), one page at a time, with plain Python
objects: a frame is a :class:`Frame`, a swap slot a :class:`Slot`, a page-table entry
a :class:`Pte` or ``None``.  No numpy, no runs, no batching tricks.  The property
tests in ``test_differential.py`` drive this model and the vectorized
``cowsim.sim.kernel.Kernel`` with the same operations and compare canonical
snapshots (``snapshots.py``).

Only the *names* of the operations, their error fields and the rule fields of
:class:`~cowsim.sim.kernel.generations.Generation` are shared with the vectorized
model.

Readings this model takes where the contract leaves room:

* ``do_swap_page`` 5.18+: "if write and refcount == 1 and slot swap count 0, delete
  from swap cache; map": the fault holds its own reference on the page (as the
  kernel does), so the deletion never frees the page being mapped.  Implemented as
  map first, then delete (same end state, no free).
* fork's ``flush_tlb_mm``: issued if a private VMA whose page table fork *walked*
  (not MADV_DONTFORK, not MADV_WIPEONFORK) had a populated (present or swap) PTE.
* The child PTE of an early fork copy in a read-only VMA is read-only with cause
  ``mprotect`` (the region's protection is why it is read-only).
* A write fault that meets a uffd-wp protected PTE resolves it with one
  ``UFFDIO_WRITEPROTECT(0)`` per page, each with its own TLB-flush rule.
* ``leak`` reports against a holder are once per (holder, frame) where *frame* is
  the physical page object, not a recycled frame number.
* A GUP that fails its checks (pages, protection) registers no pipe or id.
* Operations that fault (write, GUP) return ``{"pages": [...], "flags": [...]}``, the
  :class:`~cowsim.sim.kernel.vmfault.FaultFlags` of each selected page (the vocabulary
  is shared, the computation is this model's own).
* A DMA transfer of some pages (``pages``) needs an id holding exactly one region and
  every page held; errors in this order: unknown id, read-only (write), several
  regions, page outside the region, page not held.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cowsim.sim.kernel import KernelOpError, generation_for
from cowsim.sim.kernel.counters import COUNTER_NAMES
from cowsim.sim.kernel.generations import (
    ChangeProtWritable,
    ClearRefsFlush,
    Generation,
    SwapinReuse,
    WpReuse,
)
from cowsim.sim.kernel.kernel import MAX_REGION_PAGES
from cowsim.sim.kernel.oracles import Violation
from cowsim.sim.kernel.vmfault import FaultFlags

FaultReport = dict[str, list[int]]
"""What an operation that faults returns: the selected pages and each one's FaultFlags."""

MAYBE_PINNED = 1024
"""page_maybe_dma_pinned(): refcount >= GUP_PIN_COUNTING_BIAS (whatever pin_bias is)."""

PROTS = ("none", "r", "rw")
FLAG_ADVICE = {
    "dontfork": ("dontcopy", True),
    "dofork": ("dontcopy", False),
    "wipeonfork": ("wipeonfork", True),
    "keeponfork": ("wipeonfork", False),
}


# ----------------------------------------------------------------------
# state
# ----------------------------------------------------------------------
class Frame:
    """One physical page."""

    def __init__(self, serial: int, *, anon: bool, content: int = 0, pae: bool = False) -> None:
        self.serial = serial
        self.refcount = 0
        self.mapcount = 0
        self.content = content
        self.anon = anon
        self.pae = pae
        self.swapcache = False
        self.lru_batch = False
        self.slot: Slot | None = None
        self.free = False

    def __repr__(self) -> str:
        return (f"Frame#{self.serial}(ref={self.refcount}, map={self.mapcount}, "
                f"content={self.content}, anon={self.anon}, pae={self.pae}, "
                f"swapcache={self.swapcache}, lru={self.lru_batch})")


class Slot:
    """One swap slot."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.count = 0
        self.content = 0
        self.cache: Frame | None = None
        self.used = True

    def __repr__(self) -> str:
        return f"Slot#{self.index}(count={self.count}, cache={self.cache!r})"


@dataclass(eq=False)
class Pte:
    """A populated page-table entry: present (``frame``) or a swap entry (``slot``)."""

    frame: Frame | None = None
    slot: Slot | None = None
    write: bool = False
    dirty: bool = False
    soft_dirty: bool = False
    uffd_wp: bool = False
    cause: str = "none"  # why a present PTE is read-only
    swp_exclusive: bool = False

    @property
    def present(self) -> bool:
        return self.frame is not None

    @property
    def swapped(self) -> bool:
        return self.slot is not None


class Shmem:
    """The page cache of a MAP_SHARED anonymous region."""

    def __init__(self, npages: int) -> None:
        self.frames: list[Frame | None] = [None] * npages
        self.users = 1


@dataclass(eq=False)
class RefVMA:
    region: str
    npages: int
    shared: bool
    prot: str = "rw"
    dontcopy: bool = False
    wipeonfork: bool = False
    softdirty: bool = True
    uffd_wp: bool = False
    ptes: list[Pte | None] = field(default_factory=list)
    shmem: Shmem | None = None


@dataclass(eq=False)
class RefMM:
    vmas: dict[str, RefVMA] = field(default_factory=dict)
    has_pinned: bool = False
    cpus: set[int] = field(default_factory=lambda: {0})


@dataclass(eq=False)
class RefProcess:
    name: str
    mm: RefMM
    alive: bool = True


@dataclass(eq=False)
class Chunk:
    owner: RefProcess
    vma: RefVMA
    pages: list[int]
    frames: list[Frame]
    label: str
    pinned: bool
    writable: bool
    longterm: bool
    amount: int


@dataclass(eq=False)
class RefHolder:
    name: str
    is_pipe: bool
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def description(self) -> str:
        return f"pipe {self.name}" if self.is_pipe else f"id {self.name}"


# ----------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------
class RefKernel:
    """The kernel model, page by page."""

    def __init__(self, generation: Generation | str) -> None:
        self.gen = generation if isinstance(generation, Generation) else generation_for(generation)
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self.violations: list[Violation] = []
        self.step = 0
        self.zero = Frame(0, anon=False)
        self.procs: dict[str, RefProcess] = {}
        self.pipes: dict[str, RefHolder] = {}
        self.refs: dict[str, RefHolder] = {}
        self.lru: list[Frame] = []  # CPU 0's LRU-add batch, FIFO
        self.slots: list[Slot] = []  # by index; unused ones have used=False
        self.live: dict[int, Frame] = {}  # serial -> frame, every allocated, not freed frame
        self._serial = 0
        self._reported: set[tuple[str, ...]] = set()

    # ------------------------------------------------------------------
    # bookkeeping
    # ------------------------------------------------------------------
    def _count(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount

    def _fault(self, kind: str) -> None:
        self._count("page_faults")
        self._count(f"faults_{kind}")

    def _cow(self, cause: str | None) -> None:
        self._count("cow_copies")
        if cause is not None:
            self._count(f"cow_copies_{cause}")

    def _flush(self, mm: RefMM, kind: str, count: int = 1) -> None:
        self._count("tlb_flushes", count)
        self._count(f"tlb_flushes_{kind}", count)
        self._count("tlb_flush_ipis", count * len(mm.cpus - {0}))

    def _alloc(self, *, anon: bool, content: int = 0, pae: bool = False) -> Frame:
        self._serial += 1
        frame = Frame(self._serial, anon=anon, content=content, pae=pae)
        self.live[frame.serial] = frame
        self._count("pages_allocated")
        return frame

    def _get(self, frame: Frame, amount: int = 1) -> None:
        if frame is self.zero:
            return
        assert not frame.free, f"reference taken on a free frame {frame!r}"
        frame.refcount += amount

    def _put(self, frame: Frame, amount: int = 1) -> None:
        if frame is self.zero:
            return
        assert not frame.free, f"reference dropped on a free frame {frame!r}"
        frame.refcount -= amount
        assert frame.refcount >= 0, frame
        if frame.refcount == 0:
            assert frame.mapcount == 0, frame
            assert not frame.swapcache, frame
            assert not frame.lru_batch, frame
            frame.free = True
            del self.live[frame.serial]
            self._count("pages_freed")

    # -- LRU-add batch (CPU 0) -------------------------------------------
    def _lru_cache_add(self, frame: Frame) -> None:
        frame.lru_batch = True
        self._get(frame)
        self.lru.append(frame)
        if len(self.lru) >= self.gen.lru_batch_pages:
            self._drain()

    def _drain(self) -> None:
        batch, self.lru = self.lru, []
        for frame in batch:
            frame.lru_batch = False
            self._put(frame)

    # -- swap slots -------------------------------------------------------
    def _alloc_slot(self) -> Slot:
        for index, slot in enumerate(self.slots):
            if not slot.used:
                fresh = Slot(index)
                self.slots[index] = fresh
                return fresh
        fresh = Slot(len(self.slots))
        self.slots.append(fresh)
        return fresh

    def _maybe_free_slot(self, slot: Slot) -> None:
        if slot.used and slot.count == 0 and slot.cache is None:
            slot.used = False

    def _delete_from_swap_cache(self, frame: Frame) -> None:
        slot = frame.slot
        assert frame.swapcache
        assert slot is not None
        assert slot.cache is frame
        slot.content = frame.content
        slot.cache = None
        frame.slot = None
        frame.swapcache = False
        self._put(frame)
        self._maybe_free_slot(slot)

    # -- violations -------------------------------------------------------
    def _report(self, kind: str, key: tuple[str, ...], *, proc: str, region: str, page: int,
                frames: tuple[int, ...], detail: str) -> None:
        full = (kind, *key)
        if full in self._reported:
            return
        self._reported.add(full)
        self._count(f"violations_{kind}")
        self.violations.append(Violation(kind=kind, step=self.step, proc=proc, region=region,
                                         page=page, frames=frames, detail=detail))

    def _check_store(self, writer: RefProcess, frame: Frame, page: int, vma: RefVMA,
                     label: str) -> None:
        """The ``leak`` oracle for one store by ``writer`` into ``frame``."""
        if vma.shared or frame is self.zero or not frame.anon:
            return
        for holder in [*self.pipes.values(), *self.refs.values()]:
            for chunk in holder.chunks:
                if chunk.owner is writer:
                    continue
                if any(held is frame for held in chunk.frames):
                    self._report("leak", (holder.description, f"frame#{frame.serial}"),
                                 proc=writer.name, region=vma.region, page=page,
                                 frames=(frame.serial,),
                                 detail=f"{label} stored into a frame {holder.description} holds")
        for other in self.procs.values():
            if other is writer or not other.alive:
                continue
            for other_vma in other.mm.vmas.values():
                if other_vma.shared:
                    continue
                for other_page, pte in enumerate(other_vma.ptes):
                    if pte is not None and pte.frame is frame:
                        self._report("leak", (other.name, other_vma.region, str(other_page)),
                                     proc=writer.name, region=vma.region, page=page,
                                     frames=(frame.serial,),
                                     detail=f"{label} stored into a frame {other.name} maps")

    # ------------------------------------------------------------------
    # lookups
    # ------------------------------------------------------------------
    def _process(self, name: str, *, create: bool = False) -> RefProcess:
        existing = self.procs.get(name)
        if existing is not None:
            if not existing.alive:
                raise KernelOpError("proc", f"process {name!r} has exited")
            return existing
        if not create:
            raise KernelOpError("proc", f"no process {name!r}")
        created = RefProcess(name, RefMM())
        self.procs[name] = created
        return created

    def _vma(self, proc: str, region: str) -> tuple[RefProcess, RefVMA]:
        owner = self._process(proc)
        vma = owner.mm.vmas.get(region)
        if vma is None:
            raise KernelOpError("region", f"region {region!r} is not mapped in {proc!r}")
        return owner, vma

    @staticmethod
    def _select(vma: RefVMA, pages: Iterable[int] | None) -> list[int]:
        if pages is None:
            return list(range(vma.npages))
        index = sorted({int(page) for page in pages})
        for page in index:
            if page < 0 or page >= vma.npages:
                raise KernelOpError("pages", f"page {page} is outside region {vma.region!r}")
        return index

    # ------------------------------------------------------------------
    # faults
    # ------------------------------------------------------------------
    def _anonymous_write(self, vma: RefVMA, page: int) -> None:
        """do_anonymous_page() for a write."""
        self._fault("anonymous")
        frame = self._alloc(anon=True, pae=self.gen.anon_exclusive)
        frame.mapcount = 1
        frame.refcount = 1
        vma.ptes[page] = Pte(frame=frame, write=True, dirty=True, soft_dirty=True)
        self._lru_cache_add(frame)

    def _shmem_fault(self, vma: RefVMA, page: int, *, write: bool) -> None:
        assert vma.shmem is not None
        self._fault("shmem")
        frame = vma.shmem.frames[page]
        if frame is None:
            frame = self._alloc(anon=False)
            frame.refcount = 1  # the page cache
            vma.shmem.frames[page] = frame
            self._lru_cache_add(frame)
        frame.mapcount += 1
        self._get(frame)
        if write:
            vma.ptes[page] = Pte(frame=frame, write=True, dirty=True, soft_dirty=True)
        else:
            vma.ptes[page] = Pte(frame=frame, write=vma.prot == "rw" and vma.softdirty)

    def _do_swap_page(self, vma: RefVMA, page: int, *, write: bool) -> bool:
        """Fault a swap entry in.  Returns whether the PTE was mapped writable."""
        self._fault("swap")
        old = vma.ptes[page]
        assert old is not None
        assert old.slot is not None
        slot = old.slot
        frame = slot.cache
        if frame is None:
            frame = self._alloc(anon=True, content=slot.content)
            frame.swapcache = True
            frame.slot = slot
            frame.refcount = 1  # the swap cache
            slot.cache = frame
        slot.count -= 1
        exclusive = self.gen.anon_exclusive and old.swp_exclusive
        writable = False
        if self.gen.swapin_reuse is SwapinReuse.MAPCOUNT:
            frame.mapcount += 1
            self._get(frame)
            if write:
                n = frame.mapcount + (slot.count if frame.swapcache else 0)
                writable = n <= 1
                if writable and frame.swapcache:
                    self._delete_from_swap_cache(frame)
        else:
            lone = write and frame.refcount == 1 and slot.count == 0
            frame.mapcount += 1
            self._get(frame)  # the fault's reference keeps the page while the cache lets go
            if lone:
                self._delete_from_swap_cache(frame)
            sole = frame.refcount == 1
            if self.gen.anon_exclusive and (exclusive or sole):
                frame.pae = True
            writable = write and (exclusive or sole)
        if old.uffd_wp:
            writable = False
        clean_writable = (not write and self.gen.swapin_read_maps_writable and vma.prot == "rw"
                          and (exclusive or frame.refcount == 1) and not old.uffd_wp
                          and (vma.softdirty or old.soft_dirty))
        if writable:
            vma.ptes[page] = Pte(frame=frame, write=True, dirty=True, soft_dirty=True,
                                 uffd_wp=old.uffd_wp)
        elif clean_writable:  # 6.11+: a read maps an exclusive page writable, clean
            vma.ptes[page] = Pte(frame=frame, write=True, soft_dirty=old.soft_dirty,
                                 uffd_wp=old.uffd_wp)
        else:
            vma.ptes[page] = Pte(frame=frame, soft_dirty=old.soft_dirty, uffd_wp=old.uffd_wp,
                                 cause="swapin")
        self._maybe_free_slot(slot)
        return writable

    def _wp_can_reuse(self, frame: Frame) -> bool:
        rule = self.gen.wp_reuse
        if rule is WpReuse.MAPCOUNT:
            slot = frame.slot
            n = frame.mapcount + (slot.count if frame.swapcache and slot is not None else 0)
            if n <= 1:
                if frame.swapcache:
                    self._delete_from_swap_cache(frame)
                return True
            return False
        if rule is WpReuse.PAGE_COUNT:
            return frame.refcount == 1 and frame.mapcount == 1
        # PAGE_COUNT_DRAIN
        if self.gen.anon_exclusive and frame.pae:
            return True
        if frame.refcount > 3:
            return False
        if frame.lru_batch:
            self._drain()
        if frame.refcount > 1 + int(frame.swapcache):
            return False
        if frame.swapcache and frame.slot is not None and frame.slot.count == 0:
            self._delete_from_swap_cache(frame)
        return frame.refcount == 1

    def _do_wp_page(self, owner: RefProcess, vma: RefVMA, page: int, *, unshare: bool) -> int:
        """do_wp_page; returns WP_REUSE, COW_COPY (+ZERO_PAGE), or 0 for an unshare reuse."""
        pte = vma.ptes[page]
        assert pte is not None
        assert pte.frame is not None
        if vma.shared:
            pte.write = pte.dirty = pte.soft_dirty = True
            pte.cause = "none"
            self._count("wp_reuses")
            return FaultFlags.WP_REUSE
        old = pte.frame
        if old is not self.zero and self._wp_can_reuse(old):
            if self.gen.anon_exclusive:
                old.pae = True
            if not unshare:
                pte.write = pte.dirty = pte.soft_dirty = True
                pte.cause = "none"
                self._count("wp_reuses")
                return FaultFlags.WP_REUSE
            return 0
        # wp_page_copy()
        if unshare:
            cause: str | None = "unshare"
        elif old is self.zero:
            cause = "zero_page"
        else:
            cause = None if pte.cause == "none" else pte.cause
        self._cow(cause)
        new = self._alloc(anon=True, content=old.content, pae=self.gen.anon_exclusive)
        new.mapcount = 1
        new.refcount = 1
        if unshare:
            vma.ptes[page] = Pte(frame=new, soft_dirty=pte.soft_dirty, uffd_wp=pte.uffd_wp,
                                 cause="unshare")
        else:
            vma.ptes[page] = Pte(frame=new, write=True, dirty=True, soft_dirty=True)
        self._flush(owner.mm, "page")
        if old is not self.zero:
            old.mapcount -= 1
            self._put(old)
        self._lru_cache_add(new)
        return FaultFlags.COW_COPY | (FaultFlags.ZERO_PAGE if old is self.zero else 0)

    def _fault_writable(self, owner: RefProcess, vma: RefVMA, page: int) -> int:
        """Steps 1-4 of a write: leave a present, writable PTE.  Returns the fault flags."""
        flags = 0
        pte = vma.ptes[page]
        inline_swap = False
        if pte is None:
            if vma.shared:
                self._shmem_fault(vma, page, write=True)
                flags |= FaultFlags.SHMEM
            else:
                self._anonymous_write(vma, page)
                flags |= FaultFlags.ANONYMOUS
        elif pte.swapped:
            inline_swap = not self._do_swap_page(vma, page, write=True)
            flags |= FaultFlags.SWAP
        pte = vma.ptes[page]
        assert pte is not None
        assert pte.present
        protected = False
        if pte.uffd_wp:
            self._fault("uffd_wp")
            self._uffd_writeprotect(owner, vma, [page], protect=False)
            protected = True
            flags |= FaultFlags.UFFD_WP
        pte = vma.ptes[page]
        assert pte is not None
        if not pte.write:
            if not (inline_swap and not protected):
                self._fault("wp")
            flags |= self._do_wp_page(owner, vma, page, unshare=False)
        return flags

    def _fault_readable(self, vma: RefVMA, page: int) -> int:
        pte = vma.ptes[page]
        if pte is None:
            if vma.shared:
                self._shmem_fault(vma, page, write=False)
                return FaultFlags.SHMEM
            self._fault("anonymous")
            vma.ptes[page] = Pte(frame=self.zero)
            return FaultFlags.ANONYMOUS | FaultFlags.ZERO_PAGE
        if pte.swapped:
            self._do_swap_page(vma, page, write=False)
            return FaultFlags.SWAP
        return 0

    # ------------------------------------------------------------------
    # zapping
    # ------------------------------------------------------------------
    def _zap(self, owner: RefProcess, vma: RefVMA, pages: Sequence[int], *, flush: bool) -> bool:
        any_present = False
        for page in pages:
            pte = vma.ptes[page]
            if pte is None:
                continue
            vma.ptes[page] = None
            if pte.frame is not None:
                any_present = True
                if pte.frame is not self.zero:
                    pte.frame.mapcount -= 1
                    self._put(pte.frame)
            else:
                slot = pte.slot
                assert slot is not None
                slot.count -= 1
                if slot.count == 0:
                    if slot.cache is not None and slot.cache.refcount == 1:
                        self._delete_from_swap_cache(slot.cache)
                    self._maybe_free_slot(slot)
        if any_present and flush:
            self._flush(owner.mm, "range")
        return any_present

    def _release_vma(self, vma: RefVMA) -> None:
        if vma.shmem is None:
            return
        vma.shmem.users -= 1
        if vma.shmem.users == 0:
            held = [frame for frame in vma.shmem.frames if frame is not None]
            vma.shmem.frames = [None] * vma.npages
            for frame in held:
                self._put(frame)

    # ------------------------------------------------------------------
    # change_protection
    # ------------------------------------------------------------------
    def _can_change_pte_writable(self, vma: RefVMA, pte: Pte) -> bool:
        if vma.shared:
            return not pte.uffd_wp and (vma.softdirty or pte.soft_dirty)
        rule = self.gen.change_prot_writable
        if rule is ChangeProtWritable.NEVER:
            return False
        frame = pte.frame
        if frame is None or frame is self.zero or not frame.pae:
            return False
        if pte.uffd_wp:
            return False
        if not (vma.softdirty or pte.soft_dirty):
            return False
        return not (rule is ChangeProtWritable.DIRTY_EXCLUSIVE and not pte.dirty)

    def _flush_after_change(self, owner: RefProcess, touched: bool, removed: bool) -> None:
        # Before 6.0 any touched PTE costs a flush; from 6.0 only a removed permission does.
        never = self.gen.change_prot_writable is ChangeProtWritable.NEVER
        needed = touched if never else removed
        if needed:
            self._flush(owner.mm, "range")

    def _uffd_writeprotect(self, owner: RefProcess, vma: RefVMA, pages: Sequence[int], *,
                           protect: bool) -> None:
        touched = False
        removed = False
        for page in pages:
            pte = vma.ptes[page]
            if pte is None:
                continue
            if pte.swapped:
                pte.uffd_wp = protect
                continue
            touched = True
            if protect:
                if pte.write:
                    removed = True
                pte.write = False
                pte.uffd_wp = True
                pte.cause = "uffd_wp"
            else:
                pte.uffd_wp = False
                if (vma.prot == "rw" and not pte.write and self.gen.uffd_resolve_writable
                        and self._can_change_pte_writable(vma, pte)):
                    pte.write = True
                    pte.cause = "none"
        self._flush_after_change(owner, touched, removed)

    # ------------------------------------------------------------------
    # GUP
    # ------------------------------------------------------------------
    def _gup(self, proc: str, region: str, pages: Iterable[int] | None, name: str, *,
             is_pipe: bool, label: str, pin: bool, write: bool, longterm: bool) -> FaultReport:
        owner, vma = self._vma(proc, region)
        table = self.pipes if is_pipe else self.refs
        index = self._select(vma, pages)
        if vma.prot == "none":
            raise KernelOpError("region", f"GUP on region {region!r} mapped PROT_NONE: EFAULT")
        if write and vma.prot != "rw":
            raise KernelOpError("region", f"GUP for write on read-only region {region!r}")
        holder = table.setdefault(name, RefHolder(name, is_pipe))
        force = self.gen.gup_breaks_cow and not vma.shared and vma.prot == "rw"
        flags = [0] * len(index)
        if write or force:
            for i, page in enumerate(index):
                flags[i] = self._fault_writable(owner, vma, page)
        else:
            for i, page in enumerate(index):
                flags[i] = self._fault_readable(vma, page)
            if pin and self.gen.anon_exclusive and not vma.shared:
                for i, page in enumerate(index):
                    pte = vma.ptes[page]
                    assert pte is not None
                    assert pte.frame is not None
                    frame = pte.frame
                    if frame is self.zero:
                        must = self.gen.unshare_cow_mappings and longterm
                    else:
                        must = frame.anon and not frame.pae
                    if must:
                        self._fault("unshare")
                        flags[i] |= FaultFlags.UNSHARE | self._do_wp_page(owner, vma, page,
                                                                          unshare=True)
        frames: list[Frame] = []
        for page in index:
            pte = vma.ptes[page]
            assert pte is not None
            assert pte.frame is not None
            frames.append(pte.frame)
        amount = self.gen.pin_bias if pin else 1
        for frame in frames:
            self._get(frame, amount)
        if pin:
            owner.mm.has_pinned = True
            self._count("pin_pages", len(index))
        else:
            self._count("gup_pages", len(index))
        holder.chunks.append(Chunk(owner=owner, vma=vma, pages=index, frames=frames, label=label,
                                   pinned=pin, writable=write, longterm=longterm, amount=amount))
        return {"pages": index, "flags": flags}

    # ------------------------------------------------------------------
    # system calls
    # ------------------------------------------------------------------
    def mmap(self, proc: str, region: str, npages: int, shared: bool = False,
             populate: bool = False) -> None:
        if not 0 < npages <= MAX_REGION_PAGES:
            raise KernelOpError("pages", f"a region needs 1 to {MAX_REGION_PAGES} pages")
        owner = self._process(proc, create=True)
        if region in owner.mm.vmas:
            raise KernelOpError("region", f"region {region!r} is already mapped in {proc!r}")
        vma = RefVMA(region=region, npages=npages, shared=shared, ptes=[None] * npages,
                     shmem=Shmem(npages) if shared else None)
        owner.mm.vmas[region] = vma
        if populate:
            for page in range(npages):
                self._fault_writable(owner, vma, page)

    def munmap(self, proc: str, region: str) -> None:
        owner, vma = self._vma(proc, region)
        self._zap(owner, vma, range(vma.npages), flush=True)
        self._release_vma(vma)
        del owner.mm.vmas[region]

    def write(self, proc: str, region: str, pages: Iterable[int] | None,
              value: int) -> FaultReport:
        owner, vma = self._vma(proc, region)
        index = self._select(vma, pages)
        if vma.prot != "rw":
            raise KernelOpError("region", f"{proc!r} writes region {region!r}: SIGSEGV")
        flags = []
        for page in index:
            flags.append(self._fault_writable(owner, vma, page))
            pte = vma.ptes[page]
            assert pte is not None
            assert pte.frame is not None
            assert pte.write
            self._check_store(owner, pte.frame, page, vma, proc)
            pte.frame.content = value
            pte.dirty = True
        return {"pages": index, "flags": flags}

    def read(self, proc: str, region: str, pages: Iterable[int] | None = None) -> list[int]:
        _owner, vma = self._vma(proc, region)
        index = self._select(vma, pages)
        if vma.prot == "none":
            raise KernelOpError("region", f"{proc!r} reads region {region!r}: SIGSEGV")
        for page in index:
            self._fault_readable(vma, page)
        values = []
        for page in index:
            pte = vma.ptes[page]
            assert pte is not None
            assert pte.frame is not None
            values.append(pte.frame.content)
        return values

    def fork(self, proc: str, child: str) -> None:
        parent = self._process(proc)
        if child in self.procs:
            raise KernelOpError("child", f"process name {child!r} is already used")
        kid = RefProcess(child, RefMM(cpus=set(parent.mm.cpus)))
        self.procs[child] = kid
        walked_populated = False
        for region, vma in parent.mm.vmas.items():
            if vma.dontcopy:
                continue
            copy = RefVMA(region=region, npages=vma.npages, shared=vma.shared, prot=vma.prot,
                          dontcopy=vma.dontcopy, wipeonfork=vma.wipeonfork,
                          softdirty=vma.softdirty, uffd_wp=False, ptes=[None] * vma.npages)
            if vma.shared:
                assert vma.shmem is not None
                copy.shmem = vma.shmem
                vma.shmem.users += 1
            kid.mm.vmas[region] = copy
            if vma.shared or vma.wipeonfork:
                continue
            for page, pte in enumerate(vma.ptes):
                if pte is None:
                    continue
                walked_populated = True
                if pte.slot is not None:
                    pte.slot.count += 1
                    pte.swp_exclusive = False
                    copy.ptes[page] = Pte(slot=pte.slot, soft_dirty=pte.soft_dirty,
                                          uffd_wp=False, cause=pte.cause)
                    continue
                frame = pte.frame
                assert frame is not None
                if (frame is not self.zero and frame.anon and self.gen.fork_copies_pinned
                        and parent.mm.has_pinned and frame.refcount >= MAYBE_PINNED
                        and (not self.gen.anon_exclusive or frame.pae)):
                    new = self._alloc(anon=True, content=frame.content,
                                      pae=self.gen.anon_exclusive)
                    new.mapcount = 1
                    new.refcount = 1
                    copy.ptes[page] = Pte(frame=new, write=copy.prot == "rw", dirty=True,
                                          soft_dirty=True,
                                          cause="none" if copy.prot == "rw" else "mprotect")
                    self._count("cow_copies")
                    self._count("cow_copies_fork_pinned")
                    self._lru_cache_add(new)
                    continue
                if frame is not self.zero:
                    frame.mapcount += 1
                    self._get(frame)
                    if self.gen.anon_exclusive:
                        frame.pae = False
                if pte.write:
                    pte.write = False
                    pte.cause = "fork"
                copy.ptes[page] = Pte(frame=frame, write=pte.write, dirty=pte.dirty,
                                      soft_dirty=pte.soft_dirty, uffd_wp=False, cause=pte.cause)
        if walked_populated:
            self._flush(parent.mm, "mm")

    def exit(self, proc: str) -> None:
        owner = self._process(proc)
        any_present = False
        for vma in list(owner.mm.vmas.values()):
            if self._zap(owner, vma, range(vma.npages), flush=False):
                any_present = True
            self._release_vma(vma)
        if any_present:
            self._flush(owner.mm, "mm")
        owner.mm.vmas.clear()
        owner.alive = False

    def mprotect(self, proc: str, region: str, prot: str) -> None:
        owner, vma = self._vma(proc, region)
        if prot not in PROTS:
            raise ValueError(f"{prot!r} is not a valid Prot")
        vma.prot = prot
        present = [pte for pte in vma.ptes if pte is not None and pte.present]
        if not present:
            return
        removed = False
        for pte in present:
            if prot == "rw":
                if not pte.write and self._can_change_pte_writable(vma, pte):
                    pte.write = True
                    pte.cause = "none"
            elif pte.write:
                pte.write = False
                pte.cause = "mprotect"
                removed = True
        self._flush_after_change(owner, True, removed)

    def madvise(self, proc: str, region: str, advice: str,
                pages: Iterable[int] | None = None) -> None:
        owner, vma = self._vma(proc, region)
        if advice in FLAG_ADVICE:
            if pages is not None:
                raise KernelOpError("pages", f"madvise {advice} applies to the whole region")
            flag, on = FLAG_ADVICE[advice]
            if flag == "wipeonfork" and on and vma.shared:
                raise KernelOpError("advice", "MADV_WIPEONFORK needs a private region: EINVAL")
            setattr(vma, flag, on)
            return
        index = self._select(vma, pages)
        if advice == "dontneed":
            self._zap(owner, vma, index, flush=True)
        elif advice == "pageout":
            self._pageout(owner, vma, index)
        else:
            raise KernelOpError("advice", f"unknown advice {advice!r}")

    def _pageout(self, owner: RefProcess, vma: RefVMA, pages: Sequence[int]) -> None:
        self._drain()
        if vma.shared:
            return
        refuse_pinned = self.gen.swapcache_refuses_pinned or self.gen.anon_exclusive
        candidates: list[int] = []
        for page in pages:
            pte = vma.ptes[page]
            if pte is None or pte.frame is None or pte.frame is self.zero:
                continue
            if pte.frame.mapcount != 1:
                continue
            if refuse_pinned and pte.frame.refcount >= MAYBE_PINNED:
                continue
            candidates.append(page)
        if not candidates:
            return
        out: list[Frame] = []
        for page in candidates:
            pte = vma.ptes[page]
            assert pte is not None
            assert pte.frame is not None
            frame = pte.frame
            if not frame.swapcache:
                fresh = self._alloc_slot()
                fresh.cache = frame
                frame.slot = fresh
                frame.swapcache = True
                self._get(frame)
            slot = frame.slot
            assert slot is not None
            exclusive = self.gen.anon_exclusive and frame.pae
            if self.gen.anon_exclusive:
                frame.pae = False
            vma.ptes[page] = Pte(slot=slot, soft_dirty=pte.soft_dirty, uffd_wp=pte.uffd_wp,
                                 swp_exclusive=exclusive)
            slot.count += 1
            frame.mapcount -= 1
            self._put(frame)
            self._count("swap_outs")
            out.append(frame)
        self._flush(owner.mm, "range")
        for frame in out:
            if frame.refcount == 1:
                self._delete_from_swap_cache(frame)

    def clear_refs(self, proc: str, kind: str = "soft_dirty") -> None:
        owner = self._process(proc)
        if kind != "soft_dirty":
            raise KernelOpError("type", f"clear_refs type {kind!r} is not modelled")
        for vma in owner.mm.vmas.values():
            vma.softdirty = False
            for pte in vma.ptes:
                if pte is None:
                    continue
                if pte.swapped:
                    pte.soft_dirty = False
                    continue
                frame = pte.frame
                if (self.gen.clear_refs_skips_pinned and not vma.shared and owner.mm.has_pinned
                        and pte.write and frame is not self.zero and frame is not None
                        and frame.refcount >= MAYBE_PINNED):
                    continue
                was_writable = pte.write
                pte.write = False
                pte.soft_dirty = False
                if was_writable:
                    pte.cause = "clear_refs"
        if self.gen.clear_refs_flush is not ClearRefsFlush.NONE:
            self._flush(owner.mm, "mm")

    def pagemap(self, proc: str, region: str,
                pages: Iterable[int] | None = None) -> dict[str, list[bool]]:
        _owner, vma = self._vma(proc, region)
        index = self._select(vma, pages)
        out: dict[str, list[bool]] = {"present": [], "swapped": [], "soft_dirty": [],
                                      "exclusive": []}
        for page in index:
            pte = vma.ptes[page]
            present = pte is not None and pte.present
            out["present"].append(present)
            out["swapped"].append(pte is not None and pte.swapped)
            out["soft_dirty"].append((pte is not None and pte.soft_dirty) or vma.softdirty)
            frame = pte.frame if pte is not None else None
            out["exclusive"].append(present and frame is not None and frame is not self.zero
                                    and frame.mapcount == 1)
        return out

    def uffd_register(self, proc: str, region: str) -> None:
        _owner, vma = self._vma(proc, region)
        if vma.shared:
            raise KernelOpError("region", "uffd-wp on a MAP_SHARED region is not modelled")
        vma.uffd_wp = True

    def uffd_wp(self, proc: str, region: str, pages: Iterable[int] | None,
                protect_: bool) -> None:
        owner, vma = self._vma(proc, region)
        index = self._select(vma, pages)
        if not vma.uffd_wp:
            raise KernelOpError("region", f"region {region!r} is not registered for uffd-wp")
        self._uffd_writeprotect(owner, vma, index, protect=protect_)

    # -- GUP users -------------------------------------------------------
    def gup(self, proc: str, region: str, pages: Iterable[int] | None, ref_id: str,
            write: bool = False) -> FaultReport:
        return self._gup(proc, region, pages, ref_id, is_pipe=False, label="gup", pin=False, write=write,
                  longterm=False)

    def pin(self, proc: str, region: str, pages: Iterable[int] | None, ref_id: str,
            write: bool = True, longterm: bool = True) -> FaultReport:
        return self._gup(proc, region, pages, ref_id, is_pipe=False, label="pin", pin=True, write=write,
                  longterm=longterm)

    def odirect_read(self, proc: str, region: str, pages: Iterable[int] | None,
                     ref_id: str) -> FaultReport:
        return self._gup(proc, region, pages, ref_id, is_pipe=False, label="odirect_read",
                  pin=self.gen.odirect_uses_pin, write=True, longterm=False)

    def odirect_write(self, proc: str, region: str, pages: Iterable[int] | None,
                      ref_id: str) -> FaultReport:
        return self._gup(proc, region, pages, ref_id, is_pipe=False, label="odirect_write",
                  pin=self.gen.odirect_uses_pin, write=False, longterm=False)

    def io_uring_register(self, proc: str, region: str, pages: Iterable[int] | None,
                          ref_id: str) -> FaultReport:
        return self._gup(proc, region, pages, ref_id, is_pipe=False, label="io_uring", pin=True,
                  write=True, longterm=True)

    def vmsplice(self, proc: str, region: str, pages: Iterable[int] | None, pipe: str) -> FaultReport:
        return self._gup(proc, region, pages, pipe, is_pipe=True, label="vmsplice", pin=False,
                  write=False, longterm=False)

    def release(self, ref_id: str) -> None:
        holder = self.refs.pop(ref_id, None)
        if holder is None:
            raise KernelOpError("id", f"nothing is held under id {ref_id!r}")
        for chunk in holder.chunks:
            for frame in chunk.frames:
                self._put(frame, chunk.amount)
        holder.chunks.clear()

    def _holder(self, ref_id: str) -> RefHolder:
        holder = self.refs.get(ref_id)
        if holder is None:
            raise KernelOpError("id", f"nothing is held under id {ref_id!r}")
        return holder

    def _transfer(self, holder: RefHolder,
                  pages: Iterable[int] | None) -> list[tuple[Chunk, list[int]]]:
        """The chunks a device transfer touches, and the positions in each."""
        if pages is None:
            return [(chunk, list(range(len(chunk.pages)))) for chunk in holder.chunks]
        regions = {(id(chunk.owner), id(chunk.vma)) for chunk in holder.chunks}
        if len(regions) != 1:
            raise KernelOpError("pages", f"{holder.description} does not hold exactly one region")
        wanted = set(self._select(holder.chunks[0].vma, pages))
        out = []
        for chunk in holder.chunks:
            positions = [i for i, page in enumerate(chunk.pages) if page in wanted]
            if positions:
                out.append((chunk, positions))
        held = {chunk.pages[i] for chunk, positions in out for i in positions}
        if wanted - held:
            raise KernelOpError("pages", f"page {min(wanted - held)} is not held")
        return out

    def dma_write(self, ref_id: str, value: int, pages: Iterable[int] | None = None) -> None:
        holder = self._holder(ref_id)
        if any(not chunk.writable for chunk in holder.chunks):
            raise KernelOpError("id", f"{holder.description} holds read-only references")
        for chunk, positions in self._transfer(holder, pages):
            for i in positions:
                page, frame = chunk.pages[i], chunk.frames[i]
                self._check_store(chunk.owner, frame, page, chunk.vma,
                                  f"device via {holder.description}")
                if frame is not self.zero:
                    frame.content = value

    def dma_read(self, ref_id: str, pages: Iterable[int] | None = None) -> list[int]:
        holder = self._holder(ref_id)
        return [chunk.frames[i].content for chunk, positions in self._transfer(holder, pages)
                for i in positions]

    def lru_add_drain(self, cpu: int | None = None) -> None:
        if cpu is None or cpu == 0:
            self._drain()

    # ------------------------------------------------------------------
    # oracles
    # ------------------------------------------------------------------
    def end_step(self) -> None:
        """pin_diverged / stale_pin for every id chunk whose owner still maps its VMA."""
        for holder in self.refs.values():
            for chunk in holder.chunks:
                if not (chunk.writable or chunk.pinned):
                    continue
                owner = chunk.owner
                if not owner.alive or owner.mm.vmas.get(chunk.vma.region) is not chunk.vma:
                    continue
                kind = "pin_diverged" if chunk.writable else "stale_pin"
                for page, held in zip(chunk.pages, chunk.frames, strict=True):
                    pte = chunk.vma.ptes[page]
                    if pte is None:
                        continue
                    now = pte.frame if pte.frame is not None else (
                        pte.slot.cache if pte.slot is not None else None)
                    if now is held:
                        continue
                    self._report(kind, (holder.description, owner.name, chunk.vma.region,
                                        str(page)),
                                 proc=owner.name, region=chunk.vma.region, page=page,
                                 frames=(held.serial, now.serial if now is not None else -1),
                                 detail=f"{holder.description} ({chunk.label}) holds a frame "
                                        f"{owner.name} no longer maps")
