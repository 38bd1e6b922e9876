"""Correctness oracles: failures the kernel allows, detected without user expectations.

* ``leak``: a store (by a process, or by a device on behalf of the process
  that set up its DMA) lands in a frame that *another* process still maps
  privately, or holds through a pipe or a GUP/pin reference: the other side
  will see data it must not (CVE-2020-29374 and its relatives).
* ``pin_diverged``: after a step, a writable reference (R/W pin or GUP,
  O_DIRECT read, io_uring fixed buffer) of a live owner holds a frame other
  than the one its owner maps at that page now: device writes are lost to the
  process, its writes are lost to the device.
* ``stale_pin``: the same for a read-only FOLL_PIN pin: the device reads data
  the process has since replaced.

A swap entry whose swap-cache frame is the held frame still counts as
mapping it; nothing is reported once the owner unmapped the page or exited.
Read-only FOLL_GET references (vmsplice pipes, R/O gup, O_DIRECT writes) are
snapshots by nature and never reported.  Each violation is reported once per
kind, holder and page, at the step where it happens (:class:`ReportedKeys`
remembers which, one bit per page or frame), and counted in
``violations_<kind>``; the kernel keeps the first ``max_violations`` of them
as :class:`Violation` objects, so a run with a million leaks stays small and
its totals stay exact.

The checks are vectorized and cheap in the common case: whoever stores holds
a reference to the frame (its own mapping, or the device's pin), so a frame
with ``page_count() == 1`` is seen by nobody else; of the rest, a store can
only leak into frames with more mappings than the writer's own or with
references beyond mappings, batch and swap cache; only those are examined
further.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from cowsim.sim.kernel.mm import Pte
from cowsim.sim.kernel.pages import (
    RUNS_MIN_FRAMES,
    FrameArray,
    FrameSet,
    IntArray,
    PageIndex,
    PG_anon,
    PG_lru_batch,
    PG_swapcache,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from cowsim.sim.kernel.gup import Holder
    from cowsim.sim.kernel.kernel import Kernel
    from cowsim.sim.kernel.mm import VMA, Process

_SWAP = Pte.SWAP.u16


@dataclass(frozen=True)
class Violation:
    """One correctness failure: what, at which step, whose page, which frames."""

    kind: str  # leak | pin_diverged | stale_pin
    step: int
    proc: str
    region: str
    page: int
    frames: tuple[int, ...]
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "step": self.step, "proc": self.proc, "region": self.region,
                "page": self.page, "frames": list(self.frames), "detail": self.detail}


class ReportedKeys:
    """Which violations were reported already, as one bit per key in a group.

    A violation's identity is (kind, group…, key) where the key is a number: a
    frame (a ``leak`` into what a pipe or id holds, group: the holder) or a page
    (a ``leak`` into another process's mapping, group: process and region; a
    diverged or stale pin, group: holder, owner and region).  Each group keeps a
    boolean array indexed by key, grown as needed: bounded by the model's frames
    or the region's pages, never by the number of violations.  Frame-keyed
    groups forget a frame when it is freed (its number may be reused).
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, ...], npt.NDArray[np.bool_]] = {}
        self._frame_keyed: list[npt.NDArray[np.bool_]] = []

    def first_time(self, group: tuple[str, ...], keys: IntArray, *,
                   frame_keyed: bool = False) -> IntArray:
        """Positions in ``keys`` of the keys ``group`` has not seen (the first of repeats),
        now marked seen."""
        if keys.size == 0:
            return np.zeros(0, dtype=np.int64)
        top = int(keys.max()) + 1
        seen = self._seen.get(group)
        if seen is None or seen.size < top:
            grown = np.zeros(max(top, 0 if seen is None else 2 * seen.size), dtype=bool)
            if seen is not None:
                grown[: seen.size] = seen
                if frame_keyed:
                    self._frame_keyed = [a for a in self._frame_keyed if a is not seen]
            if frame_keyed:
                self._frame_keyed.append(grown)
            self._seen[group] = seen = grown
        fresh: IntArray = np.flatnonzero(~seen[keys])
        if fresh.size > 1:
            _, first = np.unique(keys[fresh], return_index=True)
            if first.size < fresh.size:
                fresh = fresh[np.sort(first)]
        seen[keys[fresh]] = True
        return fresh

    def forget_frames(self, dead: FrameArray) -> None:
        """Frames freed: frame-keyed reports about them may happen again."""
        for seen in self._frame_keyed:
            seen[dead[dead < seen.size]] = False

    @property
    def tracks_frames(self) -> bool:
        return bool(self._frame_keyed)

    def nbytes(self) -> int:
        return sum(seen.nbytes for seen in self._seen.values())


def check_store(k: Kernel, writer: Process, frames: FrameArray, pages: PageIndex, vma: VMA,
                writer_label: str, *, mapped: bool = False) -> None:
    """Report leaks for a store by ``writer`` into ``frames`` (of ``vma`` at ``pages``;
    unique frames, the writer holding a reference to each).  ``mapped``: the frames are
    the ones the writer's PTEs map at ``pages`` (a CPU store, not a device's DMA)."""
    if vma.shared or frames.size == 0:
        return
    pg = k.frames
    if (mapped and not k.pipes and not k.refs
            and (int(np.maximum.reduce(pg.mapcount[frames])) if frames.size < RUNS_MIN_FRAMES
                 else FrameSet(frames).maximum(pg.mapcount)) <= 1):
        return  # no holder, and no frame mapped by anyone but the writer: no leak
    refcount = pg.refcount[frames]  # the zero page's is 0: never a suspect
    maybe = refcount > 1
    count = np.count_nonzero(maybe)  # (cheaper than .any() on small arrays: the hot path)
    if count == 0:
        return
    if count < frames.size:
        frames, pages, refcount = frames[maybe], pages[maybe], refcount[maybe]
    mapcount = pg.mapcount[frames]
    flags = pg.flags[frames]
    own_map = (vma.pfn[pages] == frames).astype(np.int32)
    extra_refs = refcount - mapcount
    extra_refs -= (flags & PG_lru_batch) != 0
    extra_refs -= (flags & PG_swapcache) != 0
    other_maps = mapcount - own_map
    suspect = ((flags & PG_anon) != 0) & ((extra_refs > 0) | (other_maps > 0))
    if not np.count_nonzero(suspect):
        return
    suspects = frames[suspect]
    suspect_pages = pages[suspect]
    where = f"{writer.name}'s {vma.region}"
    for holder in [*k.pipes.values(), *k.refs.values()]:
        for chunk in holder.chunks:
            if chunk.owner is writer:
                continue
            hit = np.flatnonzero(np.isin(suspects, chunk.frames))
            if hit.size == 0:
                continue
            hit_frames, hit_pages = suspects[hit], suspect_pages[hit]
            for i in k.report("leak", (holder.description,), hit_frames, frame_keyed=True).tolist():
                frame, page = int(hit_frames[i]), int(hit_pages[i])
                k.violations.append(Violation(
                    kind="leak", step=k.step, proc=writer.name, region=vma.region, page=page,
                    frames=(frame,),
                    detail=f"{writer_label} stored into {where} page {page} (frame {frame}), "
                           f"which {holder.description} of {chunk.owner.name} holds"))
    shared = other_maps[suspect] > 0
    if not np.count_nonzero(shared):
        return
    mapped_elsewhere = suspects[shared]
    order = np.argsort(mapped_elsewhere)
    by_frame = mapped_elsewhere[order]
    pages_by_frame = suspect_pages[shared][order]
    for other in k.procs.values():
        if other is writer or not other.alive:
            continue
        for other_vma in other.mm.vmas.values():
            if other_vma.shared:
                continue
            other_pages = np.flatnonzero(np.isin(other_vma.pfn, mapped_elsewhere)
                                         & other_vma.present())
            if other_pages.size == 0:
                continue
            other_frames = other_vma.pfn[other_pages]
            writer_pages = pages_by_frame[np.searchsorted(by_frame, other_frames)]
            for i in k.report("leak", (other.name, other_vma.region), other_pages).tolist():
                frame, page, other_page = int(other_frames[i]), int(writer_pages[i]), int(other_pages[i])
                k.violations.append(Violation(
                    kind="leak", step=k.step, proc=writer.name, region=vma.region, page=page,
                    frames=(frame,),
                    detail=f"{writer_label} stored into {where} page {page} (frame {frame}), "
                           f"which {other.name} maps privately at {other_vma.region} "
                           f"page {other_page}"))


def check_pins(k: Kernel, holders: Iterable[Holder] | None = None) -> None:
    """pin_diverged / stale_pin for every reference (or those of ``holders``) whose owner is
    alive and still maps it."""
    for holder in k.refs.values() if holders is None else holders:
        for chunk in holder.chunks:
            if not (chunk.writable or chunk.pinned):
                continue
            owner = chunk.owner
            if not owner.alive or owner.mm.vmas.get(chunk.vma.region) is not chunk.vma:
                continue
            vma = chunk.vma
            pfn = vma.pfn[chunk.pages]
            swapped = vma.pte[chunk.pages] >= _SWAP
            current = pfn
            if np.count_nonzero(swapped):
                current = pfn.copy()
                current[swapped] = k.swap.cache_frame[pfn[swapped]]
            diverged = np.flatnonzero((pfn >= 0) & (current != chunk.frames))
            if diverged.size == 0:
                continue
            kind = "pin_diverged" if chunk.writable else "stale_pin"
            group = (holder.description, owner.name, vma.region)
            for i in k.report(kind, group, chunk.pages[diverged]).tolist():
                at = int(diverged[i])
                page, held, now = int(chunk.pages[at]), int(chunk.frames[at]), int(current[at])
                now_text = f"frame {now}" if now >= 0 else "a swap slot not in memory"
                k.violations.append(Violation(
                    kind=kind, step=k.step, proc=owner.name, region=vma.region, page=page,
                    frames=(held, now),
                    detail=f"{holder.description} ({chunk.label}) holds frame {held} of "
                           f"{owner.name}'s {vma.region} page {page}, which now maps {now_text}"))
