"""Canonical snapshots of the vectorized kernel model and of the reference model.

Both snapshot functions first describe their model in the same *raw* form, keyed by
the model's own frame and slot identities (frame numbers for :class:`Kernel`, frame
objects for :class:`RefKernel`), and then :func:`canonicalize` relabels frames and
swap slots by first appearance in one fixed traversal:

1. processes in creation order → their VMAs in insertion order → pages;
2. pipes sorted by name, then ids sorted by name, chunk by chunk, frame by frame;
3. the LRU-add batch of CPU 0 in FIFO order;
4. shmem objects (in order of first appearance) page by page;
5. swap-cache frames by slot label, and slots of swap-cache frames by frame label,
   until nothing new is found;
6. anything still unlabelled but allocated is listed under ``unreached`` (a bug in
   whichever model shows it).

The zero page keeps the label ``"zero"``; free frames and free slots do not appear.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cowsim.sim.kernel import Kernel
from cowsim.sim.kernel.mm import (
    VM_DONTCOPY,
    VM_SOFTDIRTY,
    VM_UFFD_WP,
    VM_WIPEONFORK,
    WP_CAUSE_MASK,
    WP_CAUSE_SHIFT,
    Pte,
    WpCause,
)
from cowsim.sim.kernel.oracles import Violation
from cowsim.sim.kernel.pages import (
    ZERO_PFN,
    PG_anon,
    PG_anon_exclusive,
    PG_buddy,
    PG_lru_batch,
    PG_swapcache,
)
from tests.reference_model import Frame, RefKernel, Slot

Snapshot = dict[str, Any]

CAUSE_NAMES = {
    WpCause.NONE: "none",
    WpCause.FORK: "fork",
    WpCause.CLEAR_REFS: "clear_refs",
    WpCause.MPROTECT: "mprotect",
    WpCause.UFFD_WP: "uffd_wp",
    WpCause.SWAPIN: "swapin",
    WpCause.UNSHARE: "unshare",
}


# ----------------------------------------------------------------------
# the raw, model-keyed description
# ----------------------------------------------------------------------
@dataclass
class RawFrame:
    refcount: int
    mapcount: int
    content: int
    anon: bool
    anon_exclusive: bool
    swapcache: bool
    lru_batch: bool
    slot: Hashable | None  # the swap slot of a swap-cache frame


@dataclass
class RawSlot:
    count: int
    cache: Hashable | None
    content: int


@dataclass
class RawChunk:
    owner: str
    region: str
    vma_live: bool  # the owner is alive and still maps this very VMA
    pages: list[int]
    frames: list[Hashable]
    label: str
    pinned: bool
    writable: bool
    longterm: bool
    amount: int


# A PTE: None, ("present", frame key, write, dirty, soft_dirty, uffd_wp, cause) or
# ("swap", slot key, soft_dirty, uffd_wp, swp_exclusive).
RawPte = tuple[Any, ...] | None


@dataclass
class RawVMA:
    region: str
    npages: int
    shared: bool
    prot: str
    flags: dict[str, bool]
    shmem: Hashable | None
    ptes: list[RawPte]


@dataclass
class RawProc:
    name: str
    alive: bool
    has_pinned: bool
    vmas: list[RawVMA]


@dataclass
class RawModel:
    zero: Hashable
    zero_content: int
    procs: list[RawProc]
    pipes: dict[str, list[RawChunk]]
    ids: dict[str, list[RawChunk]]
    lru: list[Hashable]
    shmem: dict[Hashable, tuple[int, list[Hashable | None]]]  # users, frame per page
    frame: Callable[[Hashable], RawFrame]
    slot: Callable[[Hashable], RawSlot]
    live_frames: list[Hashable]
    used_slots: list[Hashable]
    counters: dict[str, int]
    violations: list[Violation]


# ----------------------------------------------------------------------
# canonical relabelling
# ----------------------------------------------------------------------
class _Labels:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.by_key: dict[Hashable, str] = {}

    def __call__(self, key: Hashable) -> str:
        label = self.by_key.get(key)
        if label is None:
            label = f"{self.prefix}{len(self.by_key)}"
            self.by_key[key] = label
        return label

    def __contains__(self, key: Hashable) -> bool:
        return key in self.by_key


def canonicalize(raw: RawModel) -> Snapshot:
    frames = _Labels("f")
    slots = _Labels("s")
    shmems = _Labels("shm")

    def frame_label(key: Hashable) -> str:
        return "zero" if key == raw.zero else frames(key)

    procs = []
    for proc in raw.procs:
        vmas = []
        for vma in proc.vmas:
            pages: list[Any] = []
            for pte in vma.ptes:
                if pte is None:
                    pages.append(None)
                elif pte[0] == "present":
                    pages.append(("present", frame_label(pte[1]), *pte[2:]))
                else:
                    pages.append(("swap", slots(pte[1]), *pte[2:]))
            vmas.append({
                "region": vma.region, "npages": vma.npages, "shared": vma.shared,
                "prot": vma.prot, "flags": vma.flags,
                "shmem": None if vma.shmem is None else shmems(vma.shmem),
                "pages": pages,
            })
        procs.append({"name": proc.name, "alive": proc.alive, "has_pinned": proc.has_pinned,
                      "vmas": vmas})

    def chunks(table: dict[str, list[RawChunk]]) -> dict[str, list[dict[str, Any]]]:
        out = {}
        for name in sorted(table):
            out[name] = [
                {"owner": c.owner, "region": c.region, "vma_live": c.vma_live, "pages": c.pages,
                 "frames": [frame_label(f) for f in c.frames], "label": c.label,
                 "pinned": c.pinned, "writable": c.writable, "longterm": c.longterm,
                 "amount": c.amount}
                for c in table[name]
            ]
        return out

    pipes = chunks(raw.pipes)
    ids = chunks(raw.ids)
    lru = [frame_label(f) for f in raw.lru]
    shmem_out = {}
    for key in list(shmems.by_key):
        users, page_frames = raw.shmem[key]
        shmem_out[shmems(key)] = {
            "users": users,
            "frames": [None if f is None else frame_label(f) for f in page_frames],
        }
    # Swap-cache frames by slot label, slots of swap-cache frames by frame label.
    changed = True
    while changed:
        changed = False
        for key in list(slots.by_key):
            cache = raw.slot(key).cache
            if cache is not None and cache not in frames:
                frame_label(cache)
                changed = True
        for key in list(frames.by_key):
            slot = raw.frame(key).slot
            if slot is not None and slot not in slots:
                slots(slot)
                changed = True

    frame_out = {}
    for key, label in frames.by_key.items():
        f = raw.frame(key)
        frame_out[label] = (f.refcount, f.mapcount, f.content, f.anon, f.anon_exclusive,
                            f.swapcache, f.lru_batch)
    slot_out = {}
    for key, label in slots.by_key.items():
        s = raw.slot(key)
        cache = None if s.cache is None else frame_label(s.cache)
        slot_out[label] = (s.count, cache, s.content if cache is None else None)
    unreached_frames = sorted(
        (dataclass_tuple(raw.frame(key)) for key in raw.live_frames if key not in frames),
        key=repr,
    )
    unreached_slots = sorted(
        ((raw.slot(key).count, raw.slot(key).content) for key in raw.used_slots
         if key not in slots),
    )
    return {
        "procs": procs,
        "frames": frame_out,
        "slots": slot_out,
        "shmem": shmem_out,
        "pipes": pipes,
        "ids": ids,
        "lru": lru,
        "unreached": {"frames": unreached_frames, "slots": unreached_slots},
        "zero_content": raw.zero_content,
        "counters": dict(raw.counters),
        "violations": sorted((v.kind, v.step, v.proc, v.region, v.page) for v in raw.violations),
    }


def dataclass_tuple(frame: RawFrame) -> tuple[Any, ...]:
    return (frame.refcount, frame.mapcount, frame.content, frame.anon, frame.anon_exclusive,
            frame.swapcache, frame.lru_batch, frame.slot is not None)


# ----------------------------------------------------------------------
# the vectorized model
# ----------------------------------------------------------------------
def raw_kernel(k: Kernel) -> RawModel:
    pg = k.frames
    swap_of = pg.swap_slot

    def frame(key: Hashable) -> RawFrame:
        f = int(key)  # type: ignore[call-overload]
        flags = int(pg.flags[f])
        in_cache = bool(flags & int(PG_swapcache))
        slot = int(swap_of[f]) if in_cache and swap_of is not None else None
        return RawFrame(refcount=int(pg.refcount[f]), mapcount=int(pg.mapcount[f]),
                        content=int(pg.content[f]), anon=bool(flags & int(PG_anon)),
                        anon_exclusive=bool(flags & int(PG_anon_exclusive)),
                        swapcache=in_cache, lru_batch=bool(flags & int(PG_lru_batch)),
                        slot=slot)

    def slot(key: Hashable) -> RawSlot:
        s = int(key)  # type: ignore[call-overload]
        cache = int(k.swap.cache_frame[s])
        return RawSlot(count=int(k.swap.count[s]), cache=None if cache < 0 else cache,
                       content=int(k.swap.content[s]))

    procs = []
    shmem: dict[Hashable, tuple[int, list[Hashable | None]]] = {}
    for proc in k.procs.values():
        vmas = []
        for vma in proc.mm.vmas.values():
            ptes: list[RawPte] = []
            for pfn, bits in zip(vma.pfn.tolist(), vma.pte.tolist(), strict=True):
                if pfn < 0:
                    ptes.append(None)
                elif bits & Pte.SWAP:
                    ptes.append(("swap", pfn, bool(bits & Pte.SOFT_DIRTY),
                                 bool(bits & Pte.UFFD_WP),
                                 bool(bits & Pte.SWP_EXCLUSIVE)))
                else:
                    cause = WpCause((bits & int(WP_CAUSE_MASK)) >> WP_CAUSE_SHIFT)
                    ptes.append(("present", pfn, bool(bits & Pte.RW),
                                 bool(bits & Pte.DIRTY), bool(bits & Pte.SOFT_DIRTY),
                                 bool(bits & Pte.UFFD_WP), CAUSE_NAMES[cause]))
            shmem_key: Hashable | None = None
            if vma.shmem is not None:
                shmem_key = id(vma.shmem)
                shmem[shmem_key] = (vma.shmem.users,
                                    [None if f < 0 else f for f in vma.shmem.frames.tolist()])
            vmas.append(RawVMA(
                region=vma.region, npages=vma.npages, shared=vma.shared, prot=vma.prot.value,
                flags={"dontcopy": bool(vma.vm_flags & VM_DONTCOPY),
                       "wipeonfork": bool(vma.vm_flags & VM_WIPEONFORK),
                       "softdirty": bool(vma.vm_flags & VM_SOFTDIRTY),
                       "uffd_wp": bool(vma.vm_flags & VM_UFFD_WP)},
                shmem=shmem_key, ptes=ptes))
        procs.append(RawProc(proc.name, proc.alive, proc.mm.has_pinned, vmas))

    def chunks(table: dict[str, Any]) -> dict[str, list[RawChunk]]:
        out: dict[str, list[RawChunk]] = {}
        for name, holder in table.items():
            out[name] = [
                RawChunk(owner=c.owner.name, region=c.vma.region,
                         vma_live=c.owner.alive and c.owner.mm.vmas.get(c.vma.region) is c.vma,
                         pages=[int(p) for p in c.pages], frames=[int(f) for f in c.frames],
                         label=c.label, pinned=c.pinned, writable=c.writable,
                         longterm=c.longterm, amount=int(c.amount))
                for c in holder.chunks
            ]
        return out

    in_use = np.arange(1, pg.nr_used)
    live = in_use[(pg.flags[1:pg.nr_used] & PG_buddy) == 0].tolist()
    used = np.flatnonzero(k.swap.used).tolist()
    return RawModel(
        zero=ZERO_PFN, zero_content=int(pg.content[ZERO_PFN]), procs=procs,
        pipes=chunks(k.pipes), ids=chunks(k.refs), lru=[int(f) for f in k.lru.frames(0)],
        shmem=shmem, frame=frame, slot=slot, live_frames=list(live), used_slots=list(used),
        counters=dict(k.counters), violations=list(k.violations),
    )


def snapshot_kernel(k: Kernel) -> Snapshot:
    """The canonical snapshot of the vectorized model."""
    return canonicalize(raw_kernel(k))


# ----------------------------------------------------------------------
# the reference model
# ----------------------------------------------------------------------
def raw_ref(r: RefKernel) -> RawModel:
    def frame(key: Hashable) -> RawFrame:
        assert isinstance(key, Frame)
        return RawFrame(refcount=key.refcount, mapcount=key.mapcount, content=key.content,
                        anon=key.anon, anon_exclusive=key.pae, swapcache=key.swapcache,
                        lru_batch=key.lru_batch, slot=key.slot if key.swapcache else None)

    def slot(key: Hashable) -> RawSlot:
        assert isinstance(key, Slot)
        return RawSlot(count=key.count, cache=key.cache, content=key.content)

    procs = []
    shmem: dict[Hashable, tuple[int, list[Hashable | None]]] = {}
    for proc in r.procs.values():
        vmas = []
        for vma in proc.mm.vmas.values():
            ptes: list[RawPte] = []
            for pte in vma.ptes:
                if pte is None:
                    ptes.append(None)
                elif pte.slot is not None:
                    ptes.append(("swap", pte.slot, pte.soft_dirty, pte.uffd_wp, pte.swp_exclusive))
                else:
                    ptes.append(("present", pte.frame, pte.write, pte.dirty, pte.soft_dirty,
                                 pte.uffd_wp, pte.cause))
            shmem_key: Hashable | None = None
            if vma.shmem is not None:
                shmem_key = id(vma.shmem)
                shmem[shmem_key] = (vma.shmem.users, list(vma.shmem.frames))
            vmas.append(RawVMA(
                region=vma.region, npages=vma.npages, shared=vma.shared, prot=vma.prot,
                flags={"dontcopy": vma.dontcopy, "wipeonfork": vma.wipeonfork,
                       "softdirty": vma.softdirty, "uffd_wp": vma.uffd_wp},
                shmem=shmem_key, ptes=ptes))
        procs.append(RawProc(proc.name, proc.alive, proc.mm.has_pinned, vmas))

    def chunks(table: dict[str, Any]) -> dict[str, list[RawChunk]]:
        out: dict[str, list[RawChunk]] = {}
        for name, holder in table.items():
            out[name] = [
                RawChunk(owner=c.owner.name, region=c.vma.region,
                         vma_live=c.owner.alive and c.owner.mm.vmas.get(c.vma.region) is c.vma,
                         pages=list(c.pages), frames=list(c.frames), label=c.label,
                         pinned=c.pinned, writable=c.writable, longterm=c.longterm,
                         amount=c.amount)
                for c in holder.chunks
            ]
        return out

    return RawModel(
        zero=r.zero, zero_content=r.zero.content, procs=procs, pipes=chunks(r.pipes),
        ids=chunks(r.refs), lru=list(r.lru), shmem=shmem, frame=frame, slot=slot,
        live_frames=list(r.live.values()), used_slots=[s for s in r.slots if s.used],
        counters=dict(r.counters), violations=list(r.violations),
    )


def snapshot_ref(r: RefKernel) -> Snapshot:
    """The canonical snapshot of the reference model."""
    return canonicalize(raw_ref(r))


# ----------------------------------------------------------------------
# diffs
# ----------------------------------------------------------------------
def diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Human-readable differences between two snapshots (``a`` kernel, ``b`` reference)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in [*a, *(k for k in b if k not in a)]:
            if key not in b:
                out.append(f"{path}.{key}: kernel={a[key]!r} ref=<missing>")
            elif key not in a:
                out.append(f"{path}.{key}: kernel=<missing> ref={b[key]!r}")
            else:
                out.extend(diff(a[key], b[key], f"{path}.{key}"))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out.extend(diff(x, y, f"{path}[{i}]"))
        return out
    if a != b:
        return [f"{path}: kernel={a!r} ref={b!r}"]
    return []
