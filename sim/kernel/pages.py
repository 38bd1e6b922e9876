"""Physical page frames, struct-of-arrays.

Every simulated physical page ("frame", the kernel's ``struct page``) is one
index into a few parallel numpy arrays, never a Python object: a 64 GiB
process is 16.7 M frames, and the fault and fork paths update them with
fancy indexing over index arrays.

``refcount`` is the kernel's ``page_count()``.  It is kept exactly as the
kernel keeps it, one number, which is why the page_count era can be fooled by
it: +1 per page-table mapping, +1 while in the swap cache, +1 while sitting in
a per-CPU LRU-add batch, +1 per FOLL_GET reference or pipe buffer, and
``GUP_PIN_COUNTING_BIAS`` (1024) per FOLL_PIN on a small page.  ``mapcount``
is ``page_mapcount()``: the number of page-table entries mapping the frame.
``content`` is a value standing for the page's 4 KiB of data, so that what a
process, a pipe or a device sees can be checked.

Frame 0 is the shared zero page: mapped read-only for reads of untouched
anonymous memory, never refcounted (like the kernel's ``ZERO_PAGE``), never
freed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from cowsim.sim.errors import CapacityError

ZERO_PFN = 0
"""The frame of the shared zero page."""

GUP_PIN_COUNTING_BIAS = 1024
"""What one FOLL_PIN adds to a small page's refcount (``include/linux/mm.h``)."""

# Page flags (one byte per frame).
PG_anon = np.uint8(1 << 0)
"""An anonymous page (else a shmem page of a MAP_SHARED anonymous region)."""
PG_anon_exclusive = np.uint8(1 << 1)
"""PageAnonExclusive (5.19+): the mapping process certainly owns it alone."""
PG_swapcache = np.uint8(1 << 2)
"""In the swap cache; the swap cache holds one reference."""
PG_lru_batch = np.uint8(1 << 3)
"""In a per-CPU LRU-add batch (pagevec / folio_batch), which holds one reference."""
PG_buddy = np.uint8(1 << 4)
"""Free, back in the allocator."""

IntArray = npt.NDArray[np.int64]
FrameArray = npt.NDArray[np.int32]
PageIndex = npt.NDArray[np.int64]
"""Page numbers within a VMA (ascending and unique where an operation selected them)."""


RUNS_MIN_FRAMES = 4096
"""Below this many frames plain fancy indexing is as fast as run detection."""
RUNS_MAX = 64
"""Above this many runs of consecutive frames, fancy indexing wins."""
SAMPLED_GAPS = 1024
"""Gaps between the evenly spaced samples :func:`frame_runs` reads first in a large set."""
SAMPLED_MIN_STRIDE = 64
"""Sampling first pays only for sets of at least SAMPLED_GAPS × this many frames."""
DENSE_SHARE = 8
"""A scattered set of at least 1/DENSE_SHARE of all frames is updated through a dense mask."""


def frame_runs(frames: FrameArray) -> list[tuple[int, int]] | None:
    """(start, stop) of each run of consecutive ascending frame numbers, if there are few.

    Fancy-indexed updates cost ~5 ns per element; a slice update of a run of
    consecutive frames costs memory bandwidth.  Frames allocated together are
    consecutive (a populated region, the copies of one COW write), the way the
    kernel batches the PTEs of one folio.  Returns None when runs do not pay.
    """
    count = int(frames.size)
    if count < RUNS_MIN_FRAMES:
        return None
    # A proof of "too many" without the full pass: if two samples ``stride`` positions
    # apart are not ``stride`` frames apart, a break lies between them, and the gaps
    # between samples are disjoint.  (A COW-scattered 64 GiB set: 1 Ki reads, not 16 Mi.)
    stride = count // SAMPLED_GAPS
    if (stride >= SAMPLED_MIN_STRIDE
            and np.count_nonzero(np.diff(frames[::stride]) != stride) >= RUNS_MAX):
        return None
    breaks = np.flatnonzero(np.diff(frames) != 1)
    if breaks.size >= RUNS_MAX:
        return None
    starts = [0, *(breaks + 1).tolist()]
    stops = [*(breaks + 1).tolist(), count]
    return [(int(frames[a]), int(frames[a]) + (b - a)) for a, b in zip(starts, stops, strict=True)]


class FrameSet:
    """Unique frames to update together, by slices where they are consecutive.

    Order-insensitive updates (add, set or clear a flag, assign one value)
    only need the *set* of frames: unique frames whose maximum and minimum are
    ``count - 1`` apart are exactly one slice, found with two reductions.
    Ordered gathers use :func:`frame_runs`.
    """

    def __init__(self, frames: FrameArray, lowest: int | None = None) -> None:
        self.frames = frames
        self._lowest = lowest
        self._span: tuple[int, int] | bool | None = False  # False: not computed yet
        self._runs: list[tuple[int, int]] | bool | None = False
        self._mask: npt.NDArray[np.bool_] | None = None

    def _dense(self, size: int) -> npt.NDArray[np.bool_] | None:
        """A boolean mask over all frames, when the set is a large share of them and not
        consecutive: one scatter to build, then every update is a whole-array pass."""
        if self.frames.size < RUNS_MIN_FRAMES or self.frames.size * DENSE_SHARE < size:
            return None
        if self._mask is None or self._mask.size != size:
            self._mask = np.zeros(size, dtype=bool)
            self._mask[self.frames] = True
        return self._mask

    @property
    def small(self) -> bool:
        """Too few frames for slices or a mask to pay: plain fancy indexing."""
        return bool(self.frames.size < RUNS_MIN_FRAMES)

    @property
    def span(self) -> tuple[int, int] | None:
        """(start, stop) if the frames are exactly the numbers start..stop-1."""
        if self._span is False:
            count = int(self.frames.size)
            self._span = None
            if count >= RUNS_MIN_FRAMES:
                low = int(self.frames.min()) if self._lowest is None else self._lowest
                high = int(self.frames.max())
                if high - low + 1 == count:
                    self._span = (low, high + 1)
        return self._span  # type: ignore[return-value]

    @property
    def runs(self) -> list[tuple[int, int]] | None:
        if self._runs is False:
            self._runs = frame_runs(self.frames)
        return self._runs  # type: ignore[return-value]

    def _slices(self) -> list[tuple[int, int]] | None:
        span = self.span
        return [span] if span is not None else self.runs

    def add(self, array: npt.NDArray[np.int32], delta: int) -> None:
        if self.small:
            array[self.frames] += delta
            return
        slices = self._slices()
        if slices is None and (mask := self._dense(array.size)) is not None:
            if delta == 1:
                np.add(array, mask, out=array, casting="unsafe")
            elif delta == -1:
                np.subtract(array, mask, out=array, casting="unsafe")
            else:
                array += mask.astype(array.dtype) * delta
        elif slices is None:
            array[self.frames] += delta
        else:
            for start, stop in slices:
                array[start:stop] += delta

    def gather(self, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        if self.small:
            return array[self.frames]
        runs = self.runs
        if runs is None:
            return array[self.frames]
        if len(runs) == 1:
            return array[runs[0][0] : runs[0][1]].copy()
        return np.concatenate([array[start:stop] for start, stop in runs])

    def maximum(self, array: npt.NDArray[Any]) -> int:
        """The largest value of ``array`` at the frames (at least one), read in place where
        they are consecutive (no gathered copy)."""
        if self.small:
            return int(np.maximum.reduce(array[self.frames]))
        slices = self._slices()
        if slices is None:
            return int(np.maximum.reduce(array[self.frames]))
        return max(int(np.maximum.reduce(array[start:stop])) for start, stop in slices)

    def assign(self, array: npt.NDArray[Any], value: npt.ArrayLike) -> None:
        if self.small:
            array[self.frames] = value
            return
        if np.ndim(value) == 0:
            slices = self._slices()
            if slices is None:
                array[self.frames] = value
            else:
                for start, stop in slices:
                    array[start:stop] = value
            return
        runs = self.runs
        if runs is None:
            array[self.frames] = value
            return
        values = np.asarray(value)
        offset = 0
        for start, stop in runs:
            array[start:stop] = values[offset : offset + stop - start]
            offset += stop - start

    def set_flag(self, flags: npt.NDArray[np.uint8], flag: np.uint8) -> None:
        slices = self._slices()
        if slices is None and (dense := self._dense(flags.size)) is not None:
            np.bitwise_or(flags, dense.view(np.uint8) * flag, out=flags)
        elif slices is None:
            flags[self.frames] |= flag
        else:
            for start, stop in slices:
                flags[start:stop] |= flag

    def clear_flag(self, flags: npt.NDArray[np.uint8], flag: np.uint8) -> None:
        mask = np.uint8(~flag & 0xFF)
        slices = self._slices()
        if slices is None and (dense := self._dense(flags.size)) is not None:
            np.bitwise_and(flags, ~(dense.view(np.uint8) * flag), out=flags)
        elif slices is None:
            flags[self.frames] &= mask
        else:
            for start, stop in slices:
                flags[start:stop] &= mask


class PageFrames:
    """All physical frames: refcount, mapcount, content and flags, plus a free pool.

    Frames are allocated lowest-free-first from a stack of freed frames, then
    from never-used ones; arrays grow geometrically.  ``max_frames`` bounds the
    model so that a huge request fails with :class:`CapacityError` before any
    memory is taken.
    """

    def __init__(self, max_frames: int, initial_capacity: int = 1024) -> None:
        self.max_frames = max_frames
        capacity = max(2, min(initial_capacity, max_frames))
        self.refcount = np.zeros(capacity, dtype=np.int32)
        self.mapcount = np.zeros(capacity, dtype=np.int32)
        self.content = np.zeros(capacity, dtype=np.uint32)
        self.flags = np.zeros(capacity, dtype=np.uint8)
        self.swap_slot: FrameArray | None = None
        """page->private: the swap slot of a swap-cache frame; created on first swap use."""
        self.nr_used = 1  # frame 0 is the zero page
        self._free = np.zeros(0, dtype=np.int32)
        self._nr_free = 0
        self.allocated_total = 0
        self.freed_total = 0

    # -- capacity -------------------------------------------------------
    @property
    def capacity(self) -> int:
        return int(self.refcount.shape[0])

    @property
    def nr_in_use(self) -> int:
        """Frames currently allocated (excluding the zero page)."""
        return self.nr_used - 1 - self._nr_free

    def _grow(self, needed: int) -> None:
        if needed > self.max_frames:
            raise CapacityError(
                f"the model would need {needed:,} page frames; its limit is {self.max_frames:,}"
            )
        new_capacity = min(self.max_frames, max(needed, self.capacity + self.capacity // 4))
        for name in ("refcount", "mapcount", "content", "flags"):
            old = getattr(self, name)
            grown = np.zeros(new_capacity, dtype=old.dtype)
            grown[: old.shape[0]] = old
            setattr(self, name, grown)
        if self.swap_slot is not None:
            grown_slots = np.full(new_capacity, -1, dtype=np.int32)
            grown_slots[: self.swap_slot.shape[0]] = self.swap_slot
            self.swap_slot = grown_slots

    def reserve(self, extra: int) -> None:
        """Make room for ``extra`` more frames at once (avoids repeated growth)."""
        needed = self.nr_used + max(0, extra - self._nr_free)
        if needed > self.capacity:
            self._grow(needed)

    def ensure_swap_slots(self) -> FrameArray:
        if self.swap_slot is None:
            self.swap_slot = np.full(self.capacity, -1, dtype=np.int32)
        return self.swap_slot

    # -- allocation -------------------------------------------------------
    def alloc(self, count: int, flags: np.uint8, content: npt.ArrayLike = 0, *,
              mapped: bool = False) -> FrameArray:
        """Allocate ``count`` frames with the given flags and content, and refcount 0 and
        mapcount 0 — or, ``mapped``, 1 and 1: the one mapping (and its reference) of a page
        just faulted in or copied."""
        if count <= 0:
            return np.zeros(0, dtype=np.int32)
        from_free = min(count, self._nr_free)
        fresh = count - from_free
        if self.nr_used + fresh > self.capacity:
            self._grow(self.nr_used + fresh)
        parts = []
        if from_free:
            parts.append(self._free[self._nr_free - from_free : self._nr_free][::-1].copy())
            self._nr_free -= from_free
        if fresh:
            parts.append(np.arange(self.nr_used, self.nr_used + fresh, dtype=np.int32))
            self.nr_used += fresh
        frames = parts[0] if len(parts) == 1 else np.concatenate(parts)
        initial = 1 if mapped else 0
        if not from_free:
            # Only never-used frames: one slice, however many.
            start, stop = self.nr_used - fresh, self.nr_used
            self.refcount[start:stop] = initial
            self.mapcount[start:stop] = initial
            self.flags[start:stop] = flags
            self.content[start:stop] = content
        elif count < RUNS_MIN_FRAMES:  # few frames: plain fancy indexing is the fastest
            self.refcount[frames] = initial
            self.mapcount[frames] = initial
            self.flags[frames] = flags
            self.content[frames] = content
        else:
            batch = FrameSet(frames)
            batch.assign(self.refcount, initial)
            batch.assign(self.mapcount, initial)
            batch.assign(self.flags, flags)
            batch.assign(self.content, content)
        self.allocated_total += count
        return frames

    def free(self, frames: FrameArray) -> None:
        """Return frames whose refcount reached zero to the allocator."""
        if frames.size == 0:
            return
        self.flags[frames] = PG_buddy
        self.content[frames] = 0
        if self.swap_slot is not None:
            self.swap_slot[frames] = -1
        end = self._nr_free + frames.size
        if end > self._free.shape[0]:
            grown = np.zeros(max(end, 2 * self._free.shape[0], 64), dtype=np.int32)
            grown[: self._nr_free] = self._free[: self._nr_free]
            self._free = grown
        # Push in reverse so that the lowest-numbered freed frame is reused first.
        self._free[self._nr_free : end] = np.sort(frames)[::-1]
        self._nr_free = end
        self.freed_total += int(frames.size)

    # -- flags ----------------------------------------------------------------
    def test(self, frames: FrameArray, flag: np.uint8) -> npt.NDArray[np.bool_]:
        tested: npt.NDArray[np.bool_] = (self.flags[frames] & flag) != 0
        return tested

    def set(self, frames: FrameArray | FrameSet, flag: np.uint8) -> None:
        if not isinstance(frames, FrameSet) and frames.size < RUNS_MIN_FRAMES:
            self.flags[frames] |= flag  # few frames: fancy indexing is the fastest
            return
        (frames if isinstance(frames, FrameSet) else FrameSet(frames)).set_flag(self.flags, flag)

    def clear(self, frames: FrameArray | FrameSet, flag: np.uint8) -> None:
        if not isinstance(frames, FrameSet) and frames.size < RUNS_MIN_FRAMES:
            self.flags[frames] &= np.uint8(~flag & 0xFF)
            return
        (frames if isinstance(frames, FrameSet) else FrameSet(frames)).clear_flag(self.flags, flag)

    def maybe_dma_pinned(self, frames: FrameArray) -> npt.NDArray[np.bool_]:
        """page_maybe_dma_pinned() for small pages: refcount >= GUP_PIN_COUNTING_BIAS.

        It has false positives: 1024 ordinary references (pipe buffers, say)
        look like a pin.
        """
        return self.refcount[frames] >= GUP_PIN_COUNTING_BIAS

    def is_free(self, frames: FrameArray) -> npt.NDArray[np.bool_]:
        return self.test(frames, PG_buddy)

    def nbytes(self) -> int:
        total = self.refcount.nbytes + self.mapcount.nbytes + self.content.nbytes
        total += self.flags.nbytes + self._free.nbytes
        if self.swap_slot is not None:
            total += self.swap_slot.nbytes
        return total
