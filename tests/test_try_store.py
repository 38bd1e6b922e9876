"""Kernel.try_store: a store the MMU completes alone is exactly a write() that faults nowhere.

Two kernels are driven through the same history (populate, fork, partial COW, a pin, a
vmsplice, a swap-out, a child exit …); then one tries a store and the other writes.  When
try_store accepts, the two must end in the same state (page tables, frames, counters,
violations); when it refuses, its kernel must be unchanged.  It must accept the steady
state (pages written since fork, nobody else holding them) and refuse anything a fault,
a dirty-bit update or the leak oracle would see.
"""

from __future__ import annotations

import numpy as np
import pytest

from cowsim.sim import Kernel

NPAGES = 64


def _history(version: str, step: int) -> Kernel:
    k = Kernel(version, max_frames=1 << 12)
    k.mmap("p", "heap", NPAGES)
    k.write("p", "heap", None, 1)
    k.lru_add_drain()
    if step >= 1:
        k.fork("p", "c")
        k.write("p", "heap", range(0, 16), 2)  # COW: pages 0-15 exclusive again
        k.lru_add_drain()
    if step >= 2:
        k.pin("p", "heap", [20, 21], "dma")  # pinned: fork-time copies in 5.8+ eras
    if step >= 3:
        k.vmsplice("p", "heap", [2, 3], "pipe")  # a pipe holds references to 2 and 3
    if step >= 4:
        k.madvise("p", "heap", "pageout", range(40, 44))
    if step >= 5:
        k.exit("c")
    k.end_step()
    return k


def _state(k: Kernel) -> tuple[object, ...]:
    vma = k.procs["p"].mm.vmas["heap"]
    pg = k.frames
    return (vma.pte.tobytes(), vma.pfn.tobytes(), pg.refcount.tobytes(), pg.mapcount.tobytes(),
            pg.flags.tobytes(), pg.content.tobytes(), sorted(k.counters.items()),
            [v.detail for v in k.violations])


@pytest.mark.parametrize("version", ["5.4", "5.10", "5.18", "6.8"])
@pytest.mark.parametrize("step", range(6))
def test_try_store_is_a_write_that_faults_nowhere(version: str, step: int) -> None:
    rng = np.random.default_rng(step)
    accepted = 0
    for trial in range(40):
        pages = rng.integers(0, NPAGES, size=int(rng.integers(1, 12)))
        if trial % 4 == 0:
            pages = rng.integers(0, 16, size=6)  # the pages written since fork
        tried, written = _history(version, step), _history(version, step)
        before = _state(tried)
        if tried.try_store("p", "heap", pages, 99):
            accepted += 1
            report = written.write("p", "heap", pages, 99)
            assert not np.count_nonzero(report.flags)
            assert _state(tried) == _state(written)
        else:
            assert _state(tried) == before
    if step in (1, 2):
        assert accepted > 0  # the steady state after a COW pass is accepted


def test_try_store_refuses_what_write_must_handle() -> None:
    k = _history("6.8", 3)
    assert not k.try_store("p", "heap", np.array([20]), 5)  # the pin's references
    assert not k.try_store("p", "heap", np.array([30]), 5)  # shared with the child: COW
    assert not k.try_store("p", "heap", np.array([2]), 5)  # the pipe's reference
    assert not k.try_store("p", "heap", np.array([NPAGES]), 5)  # outside the region
    assert not k.try_store("p", "heap", np.array([-1]), 5)
    assert not k.try_store("p", "heap", np.zeros(0, dtype=np.int64), 5)
    assert not k.try_store("p", "missing", np.array([0]), 5)
    assert k.try_store("p", "heap", np.array([0, 0, 5, 1]), 5)  # repeats are fine
    assert k.peek("p", "heap", [0, 1, 5]).tolist() == [5, 5, 5]
