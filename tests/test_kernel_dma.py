"""Device DMA into and out of some pages of what an id holds (``pages=``)."""

from __future__ import annotations

import numpy as np
import pytest

from cowsim.sim.kernel import Kernel, KernelOpError


def pinned_buffer_after_fork(version: str, npages: int = 8) -> Kernel:
    """A pinned io_uring buffer in a process that forks; then the parent writes page 3."""
    k = Kernel(version)
    k.mmap("db", "buf", npages)
    k.write("db", "buf", None, 0x11)
    k.io_uring_register("db", "buf", None, "ring")
    k.fork("db", "child")
    k.write("db", "buf", [3], 0x22)
    return k


def test_dma_of_one_page_leaks_into_the_child_on_5_4() -> None:
    """5.4: fork shares the pinned page (no early copy); the parent's write copies it away
    from the pin, which the child still maps: the device's write lands in the child."""
    k = pinned_buffer_after_fork("5.4")
    assert k.counters["cow_copies_fork"] == 1
    k.dma_write("ring", 0x33, pages=[3])
    leaks = [v for v in k.violations if v.kind == "leak"]
    assert len(leaks) == 1
    assert leaks[0].page == 3
    assert "child maps privately at buf page 3" in leaks[0].detail
    assert k.counters["violations_leak"] == 1
    assert k.peek("child", "buf").tolist() == [0x11, 0x11, 0x11, 0x33, 0x11, 0x11, 0x11, 0x11]
    assert k.peek("db", "buf")[3] == 0x22  # the parent never sees it
    assert k.dma_read("ring", pages=[3]).tolist() == [0x33]


def test_dma_of_one_page_does_not_leak_on_6_8() -> None:
    """6.8: fork copies the pinned pages for the child at once; the parent keeps them."""
    k = pinned_buffer_after_fork("6.8")
    assert k.counters["cow_copies_fork_pinned"] == 8
    assert k.counters["cow_copies_fork"] == 0
    k.dma_write("ring", 0x33, pages=[3])
    assert k.violations == []
    assert k.counters["violations_leak"] == 0
    assert k.peek("db", "buf")[3] == 0x33
    assert (k.peek("child", "buf") == 0x11).all()


@pytest.mark.parametrize("version", ["5.4", "6.8"])
def test_dma_of_some_pages_sees_what_a_whole_id_dma_would_see_there(version: str) -> None:
    """The leak oracle sees a partial transfer exactly as the whole-id transfer on those
    pages: the same violations, the same data."""
    chosen = [1, 3, 6]
    part = pinned_buffer_after_fork(version)
    whole = pinned_buffer_after_fork(version)
    part.dma_write("ring", 0x44, pages=chosen)
    whole.dma_write("ring", 0x44)
    assert [(v.kind, v.page) for v in part.violations] == [
        (v.kind, v.page) for v in whole.violations if v.page in chosen]
    seen = part.dma_read("ring")
    assert seen[chosen].tolist() == [0x44] * 3
    assert part.dma_read("ring", pages=np.array(chosen)).tolist() == [0x44] * 3
    others = [p for p in range(8) if p not in chosen]
    assert (seen[others] == part.dma_read("ring", others)).all()
    assert (whole.dma_read("ring") == 0x44).all()


def test_dma_pages_select_across_chunks_of_one_region() -> None:
    k = Kernel("6.8")
    k.mmap("p", "buf", 10)
    k.write("p", "buf", None, 1)
    k.pin("p", "buf", [0, 1, 2], "id")
    k.pin("p", "buf", [5, 7, 9], "id")         # not consecutive: found by search
    k.dma_write("id", 9, pages=[2, 7])
    assert k.peek("p", "buf").tolist() == [1, 1, 9, 1, 1, 1, 1, 9, 1, 1]
    assert k.dma_read("id", pages=[9, 0]).tolist() == [1, 1]
    assert k.dma_read("id").tolist() == [1, 1, 9, 1, 9, 1]
    k.pin("p", "buf", [2], "id")               # page 2 twice: both chunks get it
    k.dma_write("id", 7, pages=[2])
    assert k.dma_read("id", pages=[2]).tolist() == [7, 7]


def test_dma_pages_must_be_held_in_one_region() -> None:
    k = Kernel("6.8")
    k.mmap("p", "buf", 4)
    k.mmap("p", "other", 4)
    k.pin("p", "buf", [0, 1], "id")
    with pytest.raises(KernelOpError) as error:
        k.dma_write("id", 1, pages=[2])
    assert error.value.field == "pages"
    assert "not held" in str(error.value)
    with pytest.raises(KernelOpError) as error:
        k.dma_read("id", pages=[4])
    assert error.value.field == "pages"
    assert "outside" in str(error.value)
    k.pin("p", "other", [0], "id")
    with pytest.raises(KernelOpError) as error:
        k.dma_write("id", 1, pages=[0])
    assert error.value.field == "pages"
    assert "several regions" in str(error.value)
    k.dma_write("id", 3)  # all of it is still fine
    assert k.dma_read("id").tolist() == [3, 3, 3]
    with pytest.raises(KernelOpError) as error:
        k.dma_write("nothing", 1, pages=[0])
    assert error.value.field == "id"


def test_dma_into_read_only_references_is_refused_before_pages_are_checked() -> None:
    k = Kernel("6.8")
    k.mmap("p", "buf", 2)
    k.odirect_write("p", "buf", None, "w")
    with pytest.raises(KernelOpError) as error:
        k.dma_write("w", 1, pages=[5])
    assert error.value.field == "id"


def test_dma_into_a_large_pinned_buffer_many_times_is_vectorized() -> None:
    """Thousands of transfers of random 16-page blocks of a 64 Ki-page pinned buffer: the
    data lands, and only the chosen pages."""
    k = Kernel("6.8")
    npages = 1 << 16
    k.mmap("p", "buf", npages)
    k.write("p", "buf", None, 0)
    k.io_uring_register("p", "buf", None, "ring")
    rng = np.random.default_rng(3)
    expected = np.zeros(npages, dtype=np.uint32)
    for value in range(1, 2001):
        start = int(rng.integers(0, npages - 16))
        k.dma_write("ring", value, pages=range(start, start + 16))
        expected[start:start + 16] = value
    assert (k.peek("p", "buf") == expected).all()
    assert (k.dma_read("ring") == expected).all()
    assert k.violations == []
