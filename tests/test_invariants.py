"""Invariants of the vectorized kernel model under random operation sequences.

After every operation (and ``end_step()``) of a random sequence
(``strategies.op_sequences``), for every era and the what-if:

* every allocated frame's refcount is exactly mapcount + LRU-batch reference +
  swap-cache reference + held references (FOLL_GET / pipe: 1, FOLL_PIN: pin_bias)
  + shmem page-cache reference, and its mapcount is the number of present PTEs
  mapping it in all processes;
* no free frame is mapped, held, batched, in the swap cache or in a page cache;
* swap slots: swap count = swap PTEs using the slot; swap-cache links agree both ways;
* the zero page stays unreferenced, unmapped and zero;
* from era D (PG_anon_exclusive): a page mapped twice is never exclusive, a page
  pinned (FOLL_PIN) by a process that still maps it there is exclusive and mapped once,
  and a writable PTE of a private VMA maps an exclusive page;
* counters add up: cow_copies = Σ cow_copies_<cause>, page_faults = Σ faults_<type>,
  tlb_flushes = Σ tlb_flushes_<kind>.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from cowsim.sim.kernel import Generation, Kernel, KernelOpError
from cowsim.sim.kernel.counters import COW_CAUSES, FAULT_TYPES
from cowsim.sim.kernel.pages import (
    ZERO_PFN,
    PG_anon,
    PG_anon_exclusive,
    PG_buddy,
    PG_lru_batch,
    PG_swapcache,
)
from tests.strategies import GENERATIONS, Op, describe, op_sequences, script

FAST = settings(settings.get_profile("property"), deadline=None,  # tests/conftest.py
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SLOW = settings(settings.get_profile("sweep"), deadline=None,  # examples: tests/conftest.py
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def invariant_violations(k: Kernel) -> list[str]:
    """Every broken invariant of the model's current state, as text."""
    problems: list[str] = []
    pg = k.frames
    n = pg.nr_used
    flags = pg.flags[:n]
    free = (flags & PG_buddy) != 0
    free[ZERO_PFN] = False
    mapped = np.zeros(n, dtype=np.int64)
    batched = np.zeros(n, dtype=np.int64)
    held = np.zeros(n, dtype=np.int64)
    cached = np.zeros(n, dtype=np.int64)
    nslots = int(k.swap.count.shape[0])
    swap_ptes = np.zeros(nslots, dtype=np.int64)

    # Page tables.
    shmem_objects = {}
    writable_private: list[tuple[str, str, int, int]] = []
    for proc in k.procs.values():
        if not proc.alive and proc.mm.vmas:
            problems.append(f"dead process {proc.name} still has VMAs")
        for vma in proc.mm.vmas.values():
            every = np.arange(vma.npages)
            present = vma.present(every)
            swapped = vma.swapped(every)
            frames = vma.pfn[present]
            real = frames[frames != ZERO_PFN]
            if real.size and (real.min() < 0 or real.max() >= n):
                problems.append(f"{proc.name}/{vma.region}: PTE maps a frame out of range")
                continue
            np.add.at(mapped, real, 1)
            if not vma.shared:
                rw = np.flatnonzero(present & vma.pte_write())
                writable_private += [(proc.name, vma.region, int(p), int(vma.pfn[p])) for p in rw]
            if vma.shared and (frames == ZERO_PFN).any():
                problems.append(f"{proc.name}/{vma.region}: shared VMA maps the zero page")
            slots = vma.pfn[swapped]
            if slots.size and (slots.min() < 0 or slots.max() >= nslots):
                problems.append(f"{proc.name}/{vma.region}: swap PTE names a slot out of range")
                continue
            np.add.at(swap_ptes, slots, 1)
            if vma.shmem is not None:
                shmem_objects[id(vma.shmem)] = vma.shmem
    for shmem in shmem_objects.values():
        frames = shmem.frames[shmem.frames >= 0]
        np.add.at(cached, frames, 1)

    # LRU-add batches.
    for cpu in range(4):
        batch = k.lru.frames(cpu)
        if batch.size >= k.gen.lru_batch_pages:
            problems.append(f"LRU batch of CPU {cpu} holds {batch.size} frames")
        np.add.at(batched, batch, 1)

    # Holders.
    pinned_chunks = []
    for holder in [*k.pipes.values(), *k.refs.values()]:
        for chunk in holder.chunks:
            expected_amount = k.gen.pin_bias if chunk.pinned else 1
            if chunk.amount != expected_amount:
                problems.append(f"{holder.description}: chunk amount {chunk.amount}, "
                                f"expected {expected_amount}")
            real = chunk.frames[chunk.frames != ZERO_PFN]
            np.add.at(held, real, chunk.amount)
            if chunk.pinned:
                pinned_chunks.append((holder, chunk))

    in_cache = (flags & PG_swapcache) != 0
    in_batch_flag = (flags & PG_lru_batch) != 0
    expected = mapped + batched + in_cache.astype(np.int64) + held + cached
    live = np.flatnonzero(~free)
    live = live[live != ZERO_PFN]

    def frame_problems(mask: np.ndarray, what: str) -> None:
        for f in np.flatnonzero(mask).tolist()[:5]:
            problems.append(
                f"frame {f}: {what} (refcount {int(pg.refcount[f])}, mapcount "
                f"{int(pg.mapcount[f])}, mapped by {int(mapped[f])} PTEs, batch {int(batched[f])}, "
                f"swapcache {bool(in_cache[f])}, held {int(held[f])}, page cache {int(cached[f])})")

    live_mask = np.zeros(n, dtype=bool)
    live_mask[live] = True
    frame_problems(live_mask & (pg.refcount[:n] != expected), "refcount is not the sum of its refs")
    frame_problems(live_mask & (pg.mapcount[:n] != mapped), "mapcount != present PTEs mapping it")
    frame_problems(live_mask & (pg.refcount[:n] <= 0), "allocated with refcount <= 0")
    frame_problems(live_mask & (in_batch_flag != (batched > 0)), "PG_lru_batch disagrees with batch")
    frame_problems(batched > 1, "in an LRU batch twice")
    frame_problems(cached > 1, "in two page caches")
    frame_problems(free & ((mapped > 0) | (held > 0) | (batched > 0) | (cached > 0) | in_cache),
                   "free but still used")
    frame_problems(live_mask & ((flags & PG_anon) == 0) & ((flags & PG_anon_exclusive) != 0),
                   "a shmem frame marked anon-exclusive")

    # The zero page.
    if pg.refcount[ZERO_PFN] != 0 or pg.mapcount[ZERO_PFN] != 0 or pg.content[ZERO_PFN] != 0:
        problems.append(f"zero page touched: refcount {int(pg.refcount[ZERO_PFN])}, mapcount "
                        f"{int(pg.mapcount[ZERO_PFN])}, content {int(pg.content[ZERO_PFN])}")

    # Swap slots.
    swap = k.swap
    slot_of = pg.swap_slot
    for slot in range(nslots):
        used = bool(swap.used[slot])
        count = int(swap.count[slot])
        cache = int(swap.cache_frame[slot])
        if not used:
            if swap_ptes[slot] or cache >= 0:
                problems.append(f"free slot {slot} still used (PTEs {int(swap_ptes[slot])}, "
                                f"cache {cache})")
            continue
        if count != swap_ptes[slot]:
            problems.append(f"slot {slot}: swap count {count}, swap PTEs {int(swap_ptes[slot])}")
        if count == 0 and cache < 0:
            problems.append(f"slot {slot}: used with no PTE and no cache frame")
        if cache >= 0:
            if cache >= n or free[cache] or not in_cache[cache]:
                problems.append(f"slot {slot}: cache frame {cache} is free or not in swapcache")
            elif slot_of is None or int(slot_of[cache]) != slot:
                problems.append(f"slot {slot}: cache frame {cache} points elsewhere")
    for f in np.flatnonzero(in_cache & ~free).tolist():
        slot = -1 if slot_of is None else int(slot_of[f])
        if not 0 <= slot < nslots or int(swap.cache_frame[slot]) != f:
            problems.append(f"frame {f} in swapcache but slot {slot} does not name it")

    # PG_anon_exclusive (era D+).
    if k.gen.anon_exclusive:
        pae = (flags & PG_anon_exclusive) != 0
        frame_problems(live_mask & pae & (mapped >= 2), "mapped twice yet anon-exclusive")
        for name, region, page, f in writable_private:
            if f == ZERO_PFN or not pae[f]:
                problems.append(f"{name}/{region}[{page}]: writable private PTE maps frame {f}, "
                                "which is not anon-exclusive")
        for holder, chunk in pinned_chunks:
            owner = chunk.owner
            if not owner.alive or owner.mm.vmas.get(chunk.vma.region) is not chunk.vma:
                continue
            vma = chunk.vma
            now = vma.pfn[chunk.pages]
            still = vma.present(chunk.pages) & (now == chunk.frames) & (chunk.frames != ZERO_PFN)
            for page, f in zip(chunk.pages[still].tolist(), chunk.frames[still].tolist(),
                               strict=True):
                if not flags[f] & PG_anon:
                    continue
                if not pae[f] or mapped[f] != 1:
                    problems.append(
                        f"{holder.description} pins frame {f} that {owner.name} maps at "
                        f"{vma.region}[{page}], yet anon_exclusive={bool(pae[f])}, "
                        f"mapped {int(mapped[f])} times")

    # Counters.
    c = k.counters
    causes = sum(c[f"cow_copies_{cause}"] for cause in COW_CAUSES)
    if c["cow_copies"] != causes:
        problems.append(f"cow_copies {c['cow_copies']} != Σ cow_copies_<cause> {causes}")
    faults = sum(c[f"faults_{kind}"] for kind in FAULT_TYPES)
    if c["page_faults"] != faults:
        problems.append(f"page_faults {c['page_faults']} != Σ faults_<type> {faults}")
    flushes = c["tlb_flushes_page"] + c["tlb_flushes_range"] + c["tlb_flushes_mm"]
    if c["tlb_flushes"] != flushes:
        problems.append(f"tlb_flushes {c['tlb_flushes']} != Σ kinds {flushes}")
    freed_live = c["pages_allocated"] - c["pages_freed"]
    if freed_live != live.size:
        problems.append(f"pages_allocated - pages_freed = {freed_live}, "
                        f"but {live.size} frames are allocated")
    return problems


def run_invariants(gen: Generation, ops: list[Op]) -> None:
    k = Kernel(gen)
    for step, op in enumerate(ops):
        k.step = step
        with contextlib.suppress(KernelOpError):  # both outcomes must leave a sound state
            op.apply(k)
        k.end_step()
        problems = invariant_violations(k)
        if problems:
            shown = "\n".join(f"  {p}" for p in problems[:30])
            pytest.fail(f"[{gen.name}] invariants broken after step {step} {op!r}:\n{shown}\n"
                        f"ops:\n{describe(ops, step)}")


@pytest.mark.parametrize("gen", GENERATIONS, ids=lambda g: g.name)
@FAST
@given(ops=op_sequences())
def test_invariants_hold(gen: Generation, ops: list[Op]) -> None:
    run_invariants(gen, ops)


@pytest.mark.slow
@pytest.mark.parametrize("gen", GENERATIONS, ids=lambda g: g.name)
def test_invariants_hold_long(gen: Generation, request: pytest.FixtureRequest) -> None:
    """Many more, longer sequences; only with ``-m slow``."""
    if "slow" not in str(request.config.getoption("markexpr", "")):
        pytest.skip("long invariant run: select it with -m slow")

    @SLOW
    @given(ops=op_sequences(max_ops=80))
    def run(ops: list[Op]) -> None:
        run_invariants(gen, ops)

    run()


FIXED: dict[str, list[Op]] = {
    # fork's early copy of a pinned page in a PROT_READ region gives the child a
    # read-only PTE with no cause; after mprotect(RW) the child's write copies it
    # (5.9-5.17: the copy still sits in the LRU-add batch).  Which cow_copies_<cause>?
    "early_copy_in_read_only_vma": script(
        ("mmap", "p0", "a", 1), ("write", "p0", "a", None, 1),
        ("pin", "p0", "a", None, "i0", {"write": False}), ("mprotect", "p0", "a", "r"),
        ("fork", "p0", "p1"), ("mprotect", "p1", "a", "rw"), ("write", "p1", "a", None, 2),
    ),
    # The same cause-less read-only child PTE, shared by a second fork: any era from 5.9.
    "early_copy_in_read_only_vma_refork": script(
        ("mmap", "p0", "a", 1), ("write", "p0", "a", None, 1),
        ("pin", "p0", "a", None, "i0", {"write": False}), ("mprotect", "p0", "a", "r"),
        ("fork", "p0", "p1"), ("fork", "p1", "p2"), ("mprotect", "p1", "a", "rw"),
        ("write", "p1", "a", None, 2),
    ),
    # A write fault through a swap entry (5.18+) and a fresh allocation after it.
    "swapin_write_then_alloc": script(
        ("mmap", "p0", "a", 1), ("write", "p0", "a", None, 7),
        ("madvise", "p0", "a", "pageout", None), ("write", "p0", "a", None, 8),
        ("mmap", "p0", "b", 1), ("write", "p0", "b", None, 9),
    ),
}


@pytest.mark.parametrize("gen", GENERATIONS, ids=lambda g: g.name)
@pytest.mark.parametrize("name", sorted(FIXED))
def test_invariants_fixed(name: str, gen: Generation) -> None:
    run_invariants(gen, FIXED[name])
