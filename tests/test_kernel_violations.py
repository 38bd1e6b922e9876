"""Violations at scale: the kernel keeps ``max_violations`` objects and counts them all.

Each violation is reported once per (kind, holder or process, page or frame); the
``violations_<kind>`` counters count every one of them even when the list is cut, and
remembering which were reported costs a bit per page or frame, not an object each.
"""

from __future__ import annotations

import numpy as np
import pytest

from cowsim.sim.kernel import Kernel

N = 200_000


def test_two_hundred_thousand_violations_keep_a_thousand_objects_and_exact_totals() -> None:
    """5.4: a pinned buffer shared by fork, then written by the parent (every page copied
    away from its pin: pin_diverged), then written by the device (into the pages the child
    maps: leak); and a pipe holding pages the parent then reuses and writes (leak)."""
    k = Kernel("5.4")
    k.mmap("db", "buf", N)
    k.write("db", "buf", None, 1)
    k.io_uring_register("db", "buf", None, "ring")
    k.fork("db", "child")
    k.write("db", "buf", None, 2)
    assert k.counters["cow_copies_fork"] == N
    k.end_step()
    k.dma_write("ring", 3)
    assert len(k.violations) == 1000
    assert k.counters["violations_pin_diverged"] == N
    assert k.counters["violations_leak"] == N
    assert {v.kind for v in k.violations} == {"pin_diverged"}  # the first thousand
    assert [v.page for v in k.violations] == list(range(1000))
    # Reported once: doing it all again adds nothing.
    k.end_step()
    k.dma_write("ring", 4)
    assert k.counters["violations_pin_diverged"] == N
    assert k.counters["violations_leak"] == N
    assert (k.peek("child", "buf") == 4).all()
    # CVE-2020-29374: the child vmsplices its pages and exits; the parent's writes reuse
    # them (mapcount 1) while the pipe still holds them.
    k.mmap("db", "heap", N)
    k.write("db", "heap", None, 5)
    k.fork("db", "reader")
    k.vmsplice("reader", "heap", None, "pipe")
    k.exit("reader")
    k.write("db", "heap", None, 6)
    assert k.counters["cow_copies"] == N  # the heap writes reused every page
    assert k.counters["violations_leak"] == 2 * N
    assert len(k.violations) == 1000
    # What de-duplication remembers: one byte per page or frame per group.
    assert k.reported.nbytes() <= 2 * (4 * N + 1024)


@pytest.mark.parametrize("cap", [0, 1, 5])
def test_max_violations_cuts_the_list_not_the_counts(cap: int) -> None:
    k = Kernel("5.4", max_violations=cap)
    k.mmap("p", "buf", 8)
    k.write("p", "buf", None, 1)
    k.fork("p", "c")
    k.vmsplice("c", "buf", None, "pipe")
    k.exit("c")
    k.write("p", "buf", None, 2)
    assert k.counters["violations_leak"] == 8
    assert len(k.violations) == min(cap, 8)
    assert [v.page for v in k.violations] == list(range(min(cap, 8)))


def test_leak_into_a_freed_and_reused_frame_is_reported_again() -> None:
    """A frame-keyed report is forgotten when the frame is freed: a later leak into another
    page that got the same frame number counts again."""
    k = Kernel("5.4")
    for round_, region in enumerate(("a", "b")):
        k.mmap("p", region, 1)
        k.write("p", region, None, 1)
        k.fork("p", f"c{round_}")
        k.gup(f"c{round_}", region, None, "ref")
        k.exit(f"c{round_}")
        k.write("p", region, None, 2)
        frame = int(k.frames_at("p", region)[0])
        k.release("ref")
        k.munmap("p", region)
        k.lru_add_drain()
        assert k.frames.is_free(np.array([frame])).all()
    assert k.counters["violations_leak"] == 2
    assert [v.region for v in k.violations] == ["a", "b"]
    assert k.violations[0].frames == k.violations[1].frames  # the same frame number
