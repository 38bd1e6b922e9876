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
kind, holder and page, at the step where it happens.

The checks are vectorized and cheap in the common case: a store can only
leak into frames with more mappings than the writer's own or with references
beyond mappings, batch and swap cache; only those are examined further.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cowsim.sim.kernel.pages import ZERO_PFN, FrameArray, PageIndex, PG_anon, PG_lru_batch, PG_swapcache

if TYPE_CHECKING:
    from collections.abc import Iterable

    from cowsim.sim.kernel.gup import Holder
    from cowsim.sim.kernel.kernel import Kernel
    from cowsim.sim.kernel.mm import VMA, Process


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


def check_store(k: Kernel, writer: Process, frames: FrameArray, pages: PageIndex, vma: VMA,
                writer_label: str) -> None:
    """Report leaks for a store by ``writer`` into ``frames`` (of ``vma`` at ``pages``)."""
    if vma.shared or frames.size == 0:
        return
    pg = k.frames
    real = frames != ZERO_PFN
    safe = np.where(real, frames, 0)
    own_map = (vma.pfn[pages] == frames) & real
    extra_refs = pg.refcount[safe] - pg.mapcount[safe]
    extra_refs -= pg.test(safe, PG_lru_batch).astype(np.int32)
    extra_refs -= pg.test(safe, PG_swapcache).astype(np.int32)
    other_maps = pg.mapcount[safe] - own_map.astype(np.int32)
    suspect = real & pg.test(safe, PG_anon) & ((extra_refs > 0) | (other_maps > 0))
    if not suspect.any():
        return
    suspects = frames[suspect]
    suspect_pages = pages[suspect]
    where = f"{writer.name}'s {vma.region}"
    for holder in [*k.pipes.values(), *k.refs.values()]:
        for chunk in holder.chunks:
            if chunk.owner is writer:
                continue
            hit = np.isin(suspects, chunk.frames)
            for frame, page in zip(suspects[hit].tolist(), suspect_pages[hit].tolist(), strict=True):
                k.report("leak", (holder.description, str(frame)), frame=frame, proc=writer.name,
                         region=vma.region, page=page, frames=(frame,),
                         detail=f"{writer_label} stored into {where} page {page} (frame {frame}), "
                                f"which {holder.description} of {chunk.owner.name} holds")
    if not (other_maps[suspect] > 0).any():
        return
    for other in k.procs.values():
        if other is writer or not other.alive:
            continue
        for other_vma in other.mm.vmas.values():
            if other_vma.shared:
                continue
            mapped = np.isin(other_vma.pfn, suspects)
            mapped &= other_vma.present()
            for other_page in np.flatnonzero(mapped).tolist():
                frame = int(other_vma.pfn[other_page])
                page = int(suspect_pages[suspects == frame][0])
                k.report("leak", (other.name, other_vma.region, str(other_page)), proc=writer.name,
                         region=vma.region, page=page, frames=(frame,),
                         detail=f"{writer_label} stored into {where} page {page} (frame {frame}), "
                                f"which {other.name} maps privately at {other_vma.region} "
                                f"page {other_page}")


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
            swapped = vma.swapped(chunk.pages)
            current = pfn.copy()
            current[swapped] = k.swap.cache_frame[pfn[swapped]]
            mapped = pfn >= 0
            diverged = mapped & (current != chunk.frames)
            if not diverged.any():
                continue
            kind = "pin_diverged" if chunk.writable else "stale_pin"
            for i in np.flatnonzero(diverged).tolist():
                page = int(chunk.pages[i])
                held, now = int(chunk.frames[i]), int(current[i])
                now_text = f"frame {now}" if now >= 0 else "a swap slot not in memory"
                k.report(kind, (holder.description, owner.name, vma.region, str(page)),
                         proc=owner.name, region=vma.region, page=page, frames=(held, now),
                         detail=f"{holder.description} ({chunk.label}) holds frame {held} of "
                                f"{owner.name}'s {vma.region} page {page}, which now maps {now_text}")
