"""Per-CPU LRU-add batches (``pagevec`` / ``folio_batch``, ``lru_cache_add``).

A freshly faulted or freshly copied page does not go onto the LRU list at
once: it waits in a small per-CPU batch that holds one reference on it, and
the batch is flushed onto the LRU when it fills (15 pages) or when someone
calls ``lru_add_drain()``.  That extra reference is invisible to a mapcount
test but not to ``page_count() == 1``: in 5.9–5.17 a write fault on a
read-only PTE of a page still sitting in the batch copies it needlessly
(Nadav Amit, "unnecessary COW phenomenon", Oct 2021); 5.18 drains the local
batch inside the reuse check (d4c470970d45).

The batch is a FIFO of frame numbers per CPU.  Adding k frames is one
vectorized step: of the sequence *old batch + new frames*, every full block of
``capacity`` pages has been flushed, and what is left over stays batched.
"""

from __future__ import annotations

import numpy as np

from cowsim.sim.kernel.pages import FrameArray


class LruAddBatches:
    """The LRU-add batch of every CPU."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._batches: dict[int, FrameArray] = {}

    def frames(self, cpu: int) -> FrameArray:
        return self._batches.get(cpu, np.zeros(0, dtype=np.int32))

    def cpus(self) -> list[int]:
        return sorted(cpu for cpu, batch in self._batches.items() if batch.size)

    def add(self, cpu: int, new_frames: FrameArray) -> tuple[FrameArray, FrameArray]:
        """Queue new frames, in order.  Returns (old frames flushed, new frames still batched).

        Frames that were queued and flushed within this call never hold a batch
        reference afterwards, so the caller only has to drop one reference from
        each old frame flushed and take one on each new frame kept.
        """
        old = self.frames(cpu)
        flushed_upto = ((old.size + new_frames.size) // self.capacity) * self.capacity
        if flushed_upto >= old.size:  # the whole old batch is flushed: no need to join them
            kept = new_frames[flushed_upto - old.size :].copy()
            self._batches[cpu] = kept
            return old, kept
        sequence = np.concatenate([old, new_frames]) if old.size else new_frames
        kept = sequence[flushed_upto:]
        self._batches[cpu] = kept.copy()
        old_flushed = old[: min(old.size, flushed_upto)]
        new_kept = kept[max(0, old.size - flushed_upto):]
        return old_flushed, new_kept

    def drain(self, cpu: int) -> FrameArray:
        """lru_add_drain() on one CPU: returns the frames whose batch reference is dropped."""
        batch = self.frames(cpu)
        self._batches[cpu] = np.zeros(0, dtype=np.int32)
        return batch

    def nbytes(self) -> int:
        return sum(batch.nbytes for batch in self._batches.values())
