"""Each kernel rule of kernel-semantics.md §3, per era where the eras differ.

Every test drives the kernel model directly through the same operations a
scenario uses and checks page state and counters against what the rule says.
Era representatives: A 5.4, A' 5.8, B 5.10, C 5.15, C' 5.18, D 6.1, E 6.8.
"""

from __future__ import annotations

import numpy as np
import pytest

from cowsim.sim.kernel import Kernel, generation_for
from cowsim.sim.kernel.pages import PG_anon_exclusive

ERAS = {"A": "5.4", "A'": "5.8", "B": "5.10", "C": "5.15", "C'": "5.18", "D": "6.1", "E": "6.8"}
ALL = list(ERAS.values())


def frame(k: Kernel, proc: str, region: str = "buf", page: int = 0) -> int:
    return int(k.frames_at(proc, region, [page])[0])


def writable(k: Kernel, proc: str, region: str = "buf", page: int = 0) -> bool:
    _owner, vma = k.vma(proc, region)
    return bool(vma.pte_write()[page])


def exclusive(k: Kernel, f: int) -> bool:
    return bool(k.frames.flags[f] & PG_anon_exclusive)


def written_page(version: str, drain: bool = True) -> Kernel:
    """One private page written by process p (and the LRU batch drained)."""
    k = Kernel(version)
    k.mmap("p", "buf", 1)
    k.write("p", "buf", None, 0x11)
    if drain:
        k.lru_add_drain()
    return k


# -- versions and eras -------------------------------------------------------

@pytest.mark.parametrize(("version", "era"), [
    ("4.19", "A"), ("5.4", "A"), ("5.7", "A"), ("5.8", "A'"), ("5.9", "B"), ("5.10.120", "B"),
    ("5.11", "C"), ("5.17", "C"), ("5.18", "C'"), ("5.19", "D"), ("6.0", "D"), ("6.1", "D"),
    ("6.2", "E"), ("6.8", "E"), ("6.12", "E"),
])
def test_version_maps_to_era(version: str, era: str) -> None:
    assert generation_for(version).era == era


@pytest.mark.parametrize(("name", "version"), [("A", (5, 4)), ("c'", (5, 18)), ("era-E", (6, 8))])
def test_era_name_selects_its_representative(name: str, version: tuple[int, int]) -> None:
    assert generation_for(name).version == version


@pytest.mark.parametrize("bad", ["3.10", "five", "5", "", "5.x"])
def test_unknown_kernel_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r"kernel|version"):
        generation_for(bad)


def test_what_if_changes_only_its_rule() -> None:
    base, what_if = generation_for("5.10").rules(), generation_for("aa-mapcount").rules()
    assert {key for key in base if base[key] != what_if[key]} == {"wp_reuse"}
    assert what_if["wp_reuse"] == "mapcount"


# -- §3.1 do_wp_page ----------------------------------------------------------

@pytest.mark.parametrize("version", ALL)
def test_write_after_fork_copies_while_child_maps(version: str) -> None:
    k = written_page(version)
    k.fork("p", "c")
    k.write("p", "buf", None, 0x22)
    assert k.counters["cow_copies"] == 1 == k.counters["cow_copies_fork"]
    assert frame(k, "p") != frame(k, "c")
    assert k.peek("c", "buf")[0] == 0x11
    assert k.counters["tlb_flushes_page"] == 1  # ptep_clear_flush of the old PTE


@pytest.mark.parametrize("version", ALL)
def test_write_after_child_exit_reuses(version: str) -> None:
    k = written_page(version)
    k.fork("p", "c")
    k.exit("c")
    before = frame(k, "p")
    k.write("p", "buf", None, 0x22)
    assert k.counters["cow_copies"] == 0
    assert k.counters["wp_reuses"] == 1
    assert frame(k, "p") == before


@pytest.mark.parametrize(("version", "copies"), [
    ("5.4", 0), ("5.8", 0), ("5.10", 1), ("5.15", 1), ("5.18", 1), ("6.1", 1), ("6.8", 1),
])
def test_foll_get_reference_after_fork_and_exit(version: str, copies: int) -> None:
    """A GUP reference is invisible to the mapcount test (≤5.8) and forces a copy under
    page_count (5.9+); 5.19+ also copy: the page lost PageAnonExclusive at fork."""
    k = written_page(version)
    k.fork("p", "c")
    k.gup("p", "buf", None, "ref") if version != "5.8" else k.vmsplice("p", "buf", None, "pipe")
    k.exit("c")
    k.write("p", "buf", None, 0x22)
    # 5.8's forced COW break copies at GUP time (the page was shared) instead.
    assert k.counters["cow_copies"] == (1 if version == "5.8" else copies)


@pytest.mark.parametrize(("version", "copies"), [
    ("5.4", 0), ("5.8", 0), ("5.10", 1), ("5.15", 1), ("5.18", 0), ("6.1", 0), ("6.8", 0),
])
def test_lru_batch_reference_unnecessary_cow(version: str, copies: int) -> None:
    """§4.6: a page still in the LRU-add batch has refcount 2: 5.9–5.17 copy it;
    5.18 drains the batch in the reuse check; 5.19+ reuse the exclusive page."""
    k = written_page(version, drain=False)
    k.mprotect("p", "buf", "r")
    k.mprotect("p", "buf", "rw")
    k.write("p", "buf", None, 0x22)
    assert k.counters["cow_copies"] == copies
    assert k.counters["cow_copies_mprotect"] == copies


@pytest.mark.parametrize("version", ["5.10", "5.15"])
def test_lru_batch_reference_gone_after_drain(version: str) -> None:
    k = written_page(version, drain=True)
    k.mprotect("p", "buf", "r")
    k.mprotect("p", "buf", "rw")
    k.write("p", "buf", None, 0x22)
    assert k.counters["cow_copies"] == 0


def test_lru_batch_flushes_when_full() -> None:
    """The 15th new page fills the batch, which then flushes all 15 (pagevec_add() == 0)."""
    k = Kernel("5.10")
    k.mmap("p", "buf", 16)
    k.write("p", "buf", list(range(14)), 1)
    assert (k.frames.refcount[k.frames_at("p", "buf", list(range(14)))] == 2).all()
    k.write("p", "buf", [14, 15], 1)
    refcounts = k.frames.refcount[k.frames_at("p", "buf", None)]
    assert refcounts.tolist() == [1] * 15 + [2]  # flushed at 15; page 15 starts a new batch


@pytest.mark.parametrize(("version", "copies"), [
    ("5.4", 0), ("5.10", 1), ("5.15", 1), ("5.18", 0), ("6.1", 0), ("6.8", 0),
])
def test_swapcache_reference_unnecessary_cow(version: str, copies: int) -> None:
    """A page read back from swap stays in the swap cache: 5.9–5.17 copy on the write;
    ≤5.8 reuse_swap_page reuses it; 5.18 frees the swap cache; 5.19+ it is exclusive."""
    k = written_page(version)
    k.madvise("p", "buf", "pageout")
    assert k.pagemap("p", "buf")["swapped"][0]
    k.read("p", "buf")
    k.write("p", "buf", None, 0x22)
    assert k.counters["cow_copies"] == copies
    assert k.counters["cow_copies_swapin"] == copies


@pytest.mark.parametrize("version", ["6.1", "6.8"])
def test_exclusive_page_reused_despite_references(version: str) -> None:
    """5.19+: a PageAnonExclusive page is reused whatever its refcount (O_DIRECT in flight)."""
    k = written_page(version, drain=False)
    f = frame(k, "p")
    assert exclusive(k, f)
    k.odirect_read("p", "buf", None, "dio")
    k.clear_refs("p")
    k.write("p", "buf", None, 0x22)
    assert frame(k, "p") == f
    assert k.counters["cow_copies"] == 0


@pytest.mark.parametrize("version", ALL)
def test_zero_page_read_then_write_copies(version: str) -> None:
    k = Kernel(version)
    k.mmap("p", "buf", 2)
    assert k.read("p", "buf").tolist() == [0, 0]
    assert frame(k, "p") == 0  # the shared zero page
    k.write("p", "buf", [0], 5)
    assert k.counters["cow_copies_zero_page"] == 1
    assert k.counters["faults_anonymous"] == 2
    assert k.counters["faults_wp"] == 1


# -- §3.2 fork ------------------------------------------------------------------

@pytest.mark.parametrize(("version", "early"), [
    ("5.4", False), ("5.8", False), ("5.10", True), ("5.15", True), ("5.18", True), ("6.1", True),
    ("6.8", True),
])
def test_fork_copies_pinned_pages_early(version: str, early: bool) -> None:
    k = written_page(version)
    k.pin("p", "buf", None, "dev")
    f = frame(k, "p")
    k.fork("p", "c")
    assert (frame(k, "c") != f) is early
    assert writable(k, "p") is early  # the parent's PTE is left alone
    assert k.counters["cow_copies_fork_pinned"] == int(early)
    assert frame(k, "p") == f


@pytest.mark.parametrize("version", ["5.10", "6.1"])
def test_fork_ignores_foll_get(version: str) -> None:
    k = written_page(version)
    k.gup("p", "buf", None, "ref", write=True)
    k.fork("p", "c")
    assert frame(k, "c") == frame(k, "p")
    assert k.counters["cow_copies_fork_pinned"] == 0


@pytest.mark.parametrize(("version", "early"), [("5.10", True), ("5.15", True), ("6.1", True)])
def test_fork_early_copy_false_positive_from_1024_references(version: str, early: bool) -> None:
    """page_maybe_dma_pinned() is refcount >= 1024: many vmsplice references look like a pin
    once the mm has pinned anything."""
    k = written_page(version)
    k.mmap("p", "other", 1)
    k.pin("p", "other", None, "dev")  # sets has_pinned
    for index in range(1023):
        k.vmsplice("p", "buf", None, f"pipe{index}")
    k.fork("p", "c")
    assert (frame(k, "c") != frame(k, "p")) is early


@pytest.mark.parametrize(("version", "pae"), [("5.18", False), ("6.1", True), ("6.8", True)])
def test_fork_clears_anon_exclusive(version: str, pae: bool) -> None:
    k = written_page(version)
    f = frame(k, "p")
    assert exclusive(k, f) is pae
    k.fork("p", "c")
    assert not exclusive(k, f)


@pytest.mark.parametrize("version", ALL)
def test_fork_flushes_parent_tlb_once(version: str) -> None:
    k = written_page(version)
    k.mmap("p", "more", 8, populate=True)
    flushes = k.counters["tlb_flushes_mm"]
    k.fork("p", "c")
    assert k.counters["tlb_flushes_mm"] == flushes + 1


def test_fork_honours_dontfork_and_wipeonfork() -> None:
    k = written_page("6.8")
    k.mmap("p", "secret", 1)
    k.write("p", "secret", None, 7)
    k.mmap("p", "wiped", 1)
    k.write("p", "wiped", None, 9)
    k.madvise("p", "secret", "dontfork")
    k.madvise("p", "wiped", "wipeonfork")
    k.fork("p", "c")
    assert "secret" not in k.procs["c"].mm.vmas
    assert k.peek("c", "wiped").tolist() == [0]
    assert k.peek("c", "buf").tolist() == [0x11]


def test_shared_region_is_shared_after_fork() -> None:
    k = Kernel("6.8")
    k.mmap("p", "shm", 2, shared=True)
    k.write("p", "shm", None, 3)
    k.fork("p", "c")
    k.write("c", "shm", [1], 4)
    assert k.peek("p", "shm").tolist() == [3, 4]
    assert k.counters["cow_copies"] == 0


# -- §3.3 clear_refs ------------------------------------------------------------

@pytest.mark.parametrize(("version", "skipped"), [
    ("5.4", False), ("5.10", False), ("5.11", True), ("5.15", True), ("6.1", True), ("6.8", True),
])
def test_clear_refs_skips_writable_pinned_ptes(version: str, skipped: bool) -> None:
    k = written_page(version)
    k.mmap("p", "plain", 1)
    k.write("p", "plain", None, 1)
    k.pin("p", "buf", None, "dev")
    k.clear_refs("p")
    assert writable(k, "p", "buf") is skipped
    assert not writable(k, "p", "plain")
    bits = k.pagemap("p", "buf")
    assert bool(bits["soft_dirty"][0]) is skipped  # skipped PTEs keep soft-dirty
    assert not k.pagemap("p", "plain")["soft_dirty"][0]


@pytest.mark.parametrize(("version", "flushes"), [
    ("5.4", 1), ("5.5", 0), ("5.10", 0), ("5.11", 0), ("5.12", 1), ("6.8", 1),
])
def test_clear_refs_tlb_flush_by_version(version: str, flushes: int) -> None:
    k = written_page(version)
    before = k.counters["tlb_flushes_mm"]
    k.clear_refs("p")
    assert k.counters["tlb_flushes_mm"] - before == flushes


@pytest.mark.parametrize("version", ALL)
def test_soft_dirty_cycle(version: str) -> None:
    """mmap reports soft-dirty (VM_SOFTDIRTY); clear_refs clears it; a write sets it again."""
    k = Kernel(version)
    k.mmap("p", "buf", 2)
    assert k.pagemap("p", "buf")["soft_dirty"].all()
    k.write("p", "buf", None, 1)
    k.clear_refs("p")
    assert not k.pagemap("p", "buf")["soft_dirty"].any()
    k.write("p", "buf", [1], 2)
    assert k.pagemap("p", "buf")["soft_dirty"].tolist() == [False, True]


# -- §3.4 mprotect / §3.5 uffd-wp -------------------------------------------------

@pytest.mark.parametrize(("version", "faults"), [
    ("5.10", 1), ("5.18", 1), ("5.19", 1), ("6.0", 0), ("6.1", 0), ("6.8", 0),
])
def test_mprotect_rw_maps_exclusive_dirty_pages_writable(version: str, faults: int) -> None:
    k = written_page(version)
    k.mprotect("p", "buf", "r")
    k.mprotect("p", "buf", "rw")
    before = k.counters["page_faults"]
    k.write("p", "buf", None, 2)
    assert k.counters["page_faults"] - before == faults
    assert k.counters["cow_copies"] == 0


@pytest.mark.parametrize(("version", "writable_after"), [("6.1", False), ("6.2", True)])
def test_mprotect_clean_exclusive_page_needs_6_2(version: str, writable_after: bool) -> None:
    """A clean exclusive PTE (swapped in read-only with the exclusive marker): 6.0–6.1 need
    the PTE dirty, 6.2 (Nadav Amit) does not."""
    k = written_page(version)
    k.madvise("p", "buf", "pageout")
    k.read("p", "buf")
    assert exclusive(k, frame(k, "p"))
    assert not writable(k, "p")
    k.mprotect("p", "buf", "r")
    k.mprotect("p", "buf", "rw")
    assert writable(k, "p") is writable_after


@pytest.mark.parametrize("version", ["6.1", "6.8"])
def test_mprotect_keeps_fault_for_soft_dirty_tracking(version: str) -> None:
    """cow.c's trick: clear_refs between the mprotects keeps the PTE read-only."""
    k = written_page(version)
    k.mprotect("p", "buf", "r")
    k.clear_refs("p")
    k.mprotect("p", "buf", "rw")
    assert not writable(k, "p")


@pytest.mark.parametrize(("version", "flushes"), [("5.10", 2), ("6.1", 1), ("6.8", 1)])
def test_mprotect_tlb_flushes(version: str, flushes: int) -> None:
    """≤5.19 flush whenever PTEs were walked; 6.0+ only when a permission was removed."""
    k = written_page(version)
    k.mprotect("p", "buf", "r")
    k.mprotect("p", "buf", "rw")
    assert k.counters["tlb_flushes_range"] == flushes


@pytest.mark.parametrize(("version", "writable_after"), [
    ("5.10", False), ("5.19", False), ("6.0", False), ("6.1", False), ("6.2", False),
    ("6.3", True), ("6.8", True),
])
def test_uffd_unprotect_may_map_writable(version: str, writable_after: bool) -> None:
    """UFFDIO_WRITEPROTECT(0) maps an exclusive page writable only from 6.3 (931298e103c2);
    64fe24a3e05e (6.0) did it for mprotect alone, as Debian's 6.1 kernel shows under
    validate-host (the write after the unprotect takes a reuse fault there)."""
    k = written_page(version)
    k.uffd_register("p", "buf")
    k.uffd_wp("p", "buf", None, True)
    assert not writable(k, "p")
    k.uffd_wp("p", "buf", None, False)
    assert writable(k, "p") is writable_after


@pytest.mark.parametrize(("version", "faults"), [("5.10", 2), ("6.8", 1)])
def test_write_to_uffd_protected_page_is_resolved(version: str, faults: int) -> None:
    k = written_page(version)
    k.uffd_register("p", "buf")
    k.uffd_wp("p", "buf", None, True)
    k.write("p", "buf", None, 5)
    assert k.peek("p", "buf").tolist() == [5]
    assert k.counters["faults_uffd_wp"] == 1
    assert k.counters["page_faults"] - 1 == faults  # minus the first anonymous fault


# -- §3.6 GUP ------------------------------------------------------------------------

@pytest.mark.parametrize(("version", "bias"), [("5.4", 1), ("5.6", 1), ("5.7", 1024), ("6.8", 1024)])
def test_pin_bias(version: str, bias: int) -> None:
    k = written_page(version)
    f = frame(k, "p")
    k.pin("p", "buf", None, "dev")
    assert k.frames.refcount[f] == 1 + bias
    k.release("dev")
    assert k.frames.refcount[f] == 1


@pytest.mark.parametrize(("version", "copies"), [
    ("5.4", 0), ("5.8", 1), ("5.10", 0), ("6.1", 0),
])
def test_read_only_gup_breaks_cow_only_in_5_8(version: str, copies: int) -> None:
    k = written_page(version)
    k.fork("p", "c")
    k.gup("c", "buf", None, "ref")
    assert k.counters["cow_copies"] == copies


@pytest.mark.parametrize(("version", "unshared"), [
    ("5.10", False), ("5.18", False), ("5.19", True), ("6.8", True),
])
def test_read_only_pin_unshares_shared_anon_page(version: str, unshared: bool) -> None:
    k = written_page(version)
    k.fork("p", "c")
    k.pin("p", "buf", None, "dev", write=False)
    assert (frame(k, "p") != frame(k, "c")) is unshared
    assert k.counters["cow_copies_unshare"] == int(unshared)
    assert not writable(k, "p")  # an unshare copy is mapped read-only


@pytest.mark.parametrize("version", ["5.19", "6.8"])
def test_read_only_gup_never_unshares(version: str) -> None:
    k = written_page(version)
    k.fork("p", "c")
    k.gup("p", "buf", None, "ref")
    assert frame(k, "p") == frame(k, "c")


@pytest.mark.parametrize(("version", "longterm", "unshared"), [
    ("6.1", True, False), ("6.2", True, True), ("6.8", False, False),
])
def test_read_only_longterm_pin_of_zero_page(version: str, longterm: bool, unshared: bool) -> None:
    k = Kernel(version)
    k.mmap("p", "buf", 1)
    k.read("p", "buf")
    k.pin("p", "buf", None, "dev", write=False, longterm=longterm)
    assert (frame(k, "p") != 0) is unshared


@pytest.mark.parametrize(("version", "pinned"), [("6.3", False), ("6.4", True), ("6.8", True)])
def test_odirect_uses_foll_pin_from_6_4(version: str, pinned: bool) -> None:
    k = written_page(version)
    k.odirect_read("p", "buf", None, "dio")
    assert k.procs["p"].mm.has_pinned is pinned
    assert bool(k.frames.refcount[frame(k, "p")] >= 1024) is pinned


# -- §3.9 swap ------------------------------------------------------------------------

@pytest.mark.parametrize(("version", "swapped"), [
    ("5.4", True), ("5.10", True), ("5.11", False), ("5.18", False), ("6.8", False),
])
def test_pageout_of_pinned_page(version: str, swapped: bool) -> None:
    k = written_page(version)
    k.io_uring_register("p", "buf", None, "ring")
    k.madvise("p", "buf", "pageout")
    assert bool(k.pagemap("p", "buf")["swapped"][0]) is swapped


def test_pageout_skips_pages_mapped_twice() -> None:
    k = written_page("6.8")
    k.fork("p", "c")
    k.madvise("p", "buf", "pageout")
    assert k.pagemap("p", "buf")["present"][0]


@pytest.mark.parametrize(("version", "marker"), [("5.18", False), ("6.1", True)])
def test_swap_entry_remembers_exclusivity(version: str, marker: bool) -> None:
    k = written_page(version)
    k.madvise("p", "buf", "pageout")
    k.read("p", "buf")
    assert exclusive(k, frame(k, "p")) is marker


def test_fork_shares_swap_entry_and_drops_exclusive_marker() -> None:
    k = written_page("6.8")
    k.madvise("p", "buf", "pageout")
    k.fork("p", "c")
    k.read("p", "buf")
    assert not exclusive(k, frame(k, "p"))
    k.write("c", "buf", None, 0x33)
    assert k.peek("p", "buf").tolist() == [0x11]


# -- TLB shootdown targets ---------------------------------------------------------------

@pytest.mark.parametrize(("cpus", "ipis"), [({0}, 0), (set(range(8)), 7)])
def test_flush_reaches_other_cpus_of_the_mm(cpus: set[int], ipis: int) -> None:
    k = written_page("6.8")
    k.procs["p"].mm.cpus = cpus
    k.fork("p", "c")
    assert k.counters["tlb_flush_ipis"] == ipis
    k.write("p", "buf", None, 2)  # COW copy: one flush_tlb_page
    assert k.counters["tlb_flush_ipis"] == 2 * ipis


def test_vectorized_cow_of_many_pages() -> None:
    k = Kernel("6.8")
    k.mmap("p", "buf", 1000, populate=True)
    k.fork("p", "c")
    chosen = np.random.default_rng(1).choice(1000, 100, replace=False)
    k.write("p", "buf", chosen, 9)
    assert k.counters["cow_copies"] == 100
    assert (k.peek("c", "buf") == 0).all()
    assert (k.peek("p", "buf", chosen) == 9).all()


@pytest.mark.parametrize(("version", "write_faults"), [("5.19", 1), ("6.1", 1), ("6.8", 1),
                                                       ("6.11", 0), ("6.18", 0)])
def test_a_read_swap_in_maps_an_exclusive_page_writable_from_6_11(version: str,
                                                                   write_faults: int) -> None:
    """Read swap-in maps R/O (the write after it faults and reuses) until "mm: swap: reuse
    exclusive folio directly instead of wp page faults"; Debian 6.12 under validate-host
    takes no fault for that write, Debian 6.1 one."""
    k = written_page(version)
    k.madvise("p", "buf", "pageout")
    k.read("p", "buf")
    before = k.counters["page_faults"]
    k.write("p", "buf", None, 0x22)
    assert k.counters["page_faults"] - before == write_faults
    assert k.counters["cow_copies"] == 0
