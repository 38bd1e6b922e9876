"""What operations report about the faults they took (FaultReport), and the page-table
vocabulary (Pte, VMA queries) callers use instead of bit-twiddling."""

from __future__ import annotations

import numpy as np
import pytest

from cowsim.sim.kernel import FaultFlags, FaultReport, Kernel, Pte, mm

F = FaultFlags


def flags(report: FaultReport) -> list[int]:
    return [int(f) for f in report.flags]


# -- Pte and the VMA queries ---------------------------------------------------------

def test_pte_bits_keep_their_values_and_no_private_aliases_remain() -> None:
    assert (Pte.RW, Pte.DIRTY, Pte.SOFT_DIRTY, Pte.UFFD_WP, Pte.SWP_EXCLUSIVE, Pte.SWAP) == (
        1, 2, 4, 8, 32, 1 << 15)
    assert not [name for name in vars(mm) if name.startswith("_PAGE_")]
    pte = np.array([7, 1 << 15], dtype=np.uint16)
    assert (pte & Pte.RW.inverted).dtype == np.uint16
    assert (pte & Pte.RW.inverted).tolist() == [6, 1 << 15]
    assert (pte | (Pte.RW | Pte.DIRTY).u16).dtype == np.uint16


def test_vma_queries_name_each_pte_state() -> None:
    k = Kernel("6.8")
    k.mmap("p", "buf", 5)
    k.write("p", "buf", [0, 1, 2], 1)
    k.read("p", "buf", [3])            # zero page
    k.madvise("p", "buf", "pageout", [2])
    k.fork("p", "c")                   # page 0, 1 write-protected in the parent
    k.write("p", "buf", [1], 2)        # page 1 copied: writable again
    _, vma = k.vma("p", "buf")
    assert vma.populated().tolist() == [True, True, True, True, False]
    assert vma.present().tolist() == [True, True, False, True, False]
    assert vma.swapped().tolist() == [False, False, True, False, False]
    assert vma.pte_write().tolist() == [False, True, False, False, False]
    assert vma.read_only().tolist() == [True, False, False, True, False]
    pages = np.array([0, 3, 4])
    assert vma.read_only(pages).tolist() == [True, True, False]
    assert vma.mapped_frames().tolist() == vma.pfn[[0, 1]].tolist()  # the zero page left out
    assert vma.mapped_frames(zero_page=True).tolist() == vma.pfn[[0, 1, 3]].tolist()
    assert vma.mapped_frames(pages, zero_page=True).tolist() == [int(vma.pfn[0]), 0]


# -- FaultReport from writes ---------------------------------------------------------

def test_a_write_that_faults_nowhere_reports_no_flags() -> None:
    k = Kernel("6.8")
    k.mmap("p", "buf", 8)
    first = k.write("p", "buf", None, 1)
    assert flags(first) == [F.ANONYMOUS] * 8
    assert first.faulted
    again = k.write("p", "buf", [5, 1, 3], 2)   # selection reported ascending
    assert again.pages.tolist() == [1, 3, 5]
    assert not again.faulted
    assert again.count() == 0
    assert flags(again) == [0, 0, 0]
    assert again.pages_with(F.COW_COPY).size == 0
    assert k.peek("p", "buf").tolist() == [1, 2, 1, 2, 1, 2, 1, 1]


@pytest.mark.parametrize("version", ["5.4", "5.10", "6.8"])
def test_write_after_fork_reports_copy_reuse_anonymous_and_zero_page(version: str) -> None:
    k = Kernel(version)
    k.mmap("p", "buf", 4)
    k.write("p", "buf", [0, 1], 1)
    k.read("p", "buf", [2])
    k.fork("p", "c")
    k.exit("c")            # page 1 ... and page 0: mapped once again after the child exits
    k.lru_add_drain()
    k.mmap("p", "other", 1)
    k.write("p", "other", None, 1)
    report = k.write("p", "buf", None, 2)
    # Pages 0, 1: read-only after fork, the child gone: reused.  Page 2: the zero page,
    # copied (a zero fill).  Page 3: untouched, a new page.
    assert flags(report) == [F.WP_REUSE, F.WP_REUSE, F.COW_COPY | F.ZERO_PAGE, F.ANONYMOUS]
    assert report.count(F.COW_COPY) == 1 == k.counters["cow_copies_zero_page"]
    assert report.count(F.WP_REUSE) == 2


@pytest.mark.parametrize(("version", "expected"), [
    # 5.4: reuse_swap_page sees mapcount 2 (the child): copy.  6.8: the same.
    ("5.4", F.SWAP | F.COW_COPY), ("6.8", F.SWAP | F.COW_COPY),
])
def test_write_through_a_shared_swap_entry_copies(version: str, expected: int) -> None:
    k = Kernel(version)
    k.mmap("p", "buf", 1)
    k.write("p", "buf", None, 1)
    k.madvise("p", "buf", "pageout")
    k.fork("p", "c")
    report = k.write("p", "buf", None, 2)
    assert flags(report) == [expected]
    assert k.peek("c", "buf").tolist() == [1]


def test_write_through_an_exclusive_swap_entry_maps_writable_at_once() -> None:
    k = Kernel("6.8")
    k.mmap("p", "buf", 1)
    k.write("p", "buf", None, 1)
    k.madvise("p", "buf", "pageout")
    assert flags(k.write("p", "buf", None, 2)) == [F.SWAP]


@pytest.mark.parametrize(("version", "expected"), [
    ("5.10", F.UFFD_WP | F.WP_REUSE),  # ≤5.19 leaves the PTE read-only: do_wp_page reuses
    ("6.8", F.UFFD_WP),                # 6.0+: the resolution maps it writable at once
])
def test_uffd_wp_write_reports_the_userfault(version: str, expected: int) -> None:
    k = Kernel(version)
    k.mmap("p", "buf", 2)
    k.write("p", "buf", None, 1)
    k.lru_add_drain()
    k.uffd_register("p", "buf")
    k.uffd_wp("p", "buf", [1], True)
    report = k.write("p", "buf", None, 2)
    assert flags(report) == [0, expected]
    assert k.counters["faults_uffd_wp"] == 1


def test_shared_mapping_reports_shmem_then_wp_reuse() -> None:
    k = Kernel("6.8")
    k.mmap("p", "shm", 2, shared=True)
    assert flags(k.write("p", "shm", None, 1)) == [F.SHMEM, F.SHMEM]
    k.clear_refs("p")
    assert flags(k.write("p", "shm", [0], 2)) == [F.WP_REUSE]


def test_read_with_faults_reports_zero_page_and_shmem() -> None:
    k = Kernel("6.8")
    k.mmap("p", "buf", 3)
    k.mmap("p", "shm", 1, shared=True)
    k.write("p", "buf", [1], 5)
    values, report = k.read_with_faults("p", "buf")
    assert values.tolist() == [0, 5, 0]
    assert flags(report) == [F.ANONYMOUS | F.ZERO_PAGE, 0, F.ANONYMOUS | F.ZERO_PAGE]
    assert flags(k.read_with_faults("p", "shm")[1]) == [F.SHMEM]
    assert not k.read_with_faults("p", "buf")[1].faulted
    assert k.read("p", "buf").tolist() == [0, 5, 0]


# -- FaultReport from GUP ------------------------------------------------------------

@pytest.mark.parametrize(("version", "expected"), [
    ("5.10", [0]),                        # a R/O pin takes the shared page as it is
    ("6.8", [F.UNSHARE | F.COW_COPY]),    # 5.19+: unshare first (the child shares it)
])
def test_read_only_pin_of_a_shared_page_reports_the_unshare(version: str,
                                                           expected: list[int]) -> None:
    k = Kernel(version)
    k.mmap("p", "buf", 1)
    k.write("p", "buf", None, 1)
    k.fork("p", "c")
    report = k.pin("p", "buf", None, "ro", write=False)
    assert flags(report) == expected


def test_gup_for_write_after_fork_reports_the_copy_and_odirect_too() -> None:
    k = Kernel("5.10")
    k.mmap("p", "buf", 2)
    k.write("p", "buf", None, 1)
    k.fork("p", "c")
    assert flags(k.gup("p", "buf", [0], "g", write=True)) == [F.COW_COPY]
    assert flags(k.odirect_read("p", "buf", [1], "dio")) == [F.COW_COPY]
    assert flags(k.io_uring_register("p", "buf", None, "ring")) == [0, 0]
    assert flags(k.vmsplice("c", "buf", None, "pipe")) == [0, 0]
    assert flags(k.odirect_write("c", "buf", None, "w")) == [0, 0]


def test_populate_reports_through_fault_in_writable() -> None:
    k = Kernel("6.8")
    k.mmap("p", "buf", 3, populate=True)
    assert k.counters["faults_anonymous"] == 3
    assert not k.write("p", "buf", None, 1).faulted


def test_fault_report_repr_and_dict() -> None:
    report = FaultReport(np.array([2, 4]), np.array([F.SWAP | F.COW_COPY, 0], dtype=np.uint8))
    assert report.as_dict() == {"pages": [2, 4], "flags": [int(F.SWAP | F.COW_COPY), 0]}
    assert "SWAP=1" in repr(report)
    assert "COW_COPY=1" in repr(report)
    assert report.mask(F.SWAP | F.ANONYMOUS).tolist() == [True, False]
    assert report.pages_with(F.COW_COPY).tolist() == [2]
    assert "no faults" in repr(FaultReport(np.array([1])))
