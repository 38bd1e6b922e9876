"""The cost model: how long each kernel operation takes on the modeled machine.

The kernel model counts *what* happens (PTEs copied at fork, COW copies,
reuses, flushes, pins); a :class:`CostModel` turns those counts into
nanoseconds.  Every figure is a field whose name carries its unit (``_ns``,
``_bytes_per_s``, ``_entries``, ``_pages``, ``_bytes``) and whose description
names the row of ``docs/cost-model.md`` it comes from: the section (§1 … §7),
the source, and the evidence tag — **M** measured and published, **L**
measured on the doc's local 2-vCPU Zen 4 KVM guest, **D** derived by the
arithmetic shown, **S** vendor spec, **E** estimate.  Where the doc gives a
range the field takes the doc's "Suggested default parameter set" value.

How the pieces compose
----------------------

* A fault is a fixed cost plus the data it moves: a COW fault is
  ``cow_fault_fixed_ns + copy_ns(4096)`` (:meth:`CostModel.cow_fault_ns`), a
  first-touch anonymous write fault is ``anon_fault_ns + zero_ns(4096)``
  (:meth:`CostModel.anon_write_fault_ns`).  The fixed parts include the trap,
  locking, allocation, rmap and the *local* TLB invalidation, because the
  sources time the whole fault.
* fork is ``fork_fixed_ns`` plus a per-PTE cost for every populated 4 KiB
  PTE of a private VMA and a per-PMD cost for every PMD-mapped THP
  (:meth:`CostModel.fork_ns`).
* Remote TLB shootdowns are priced separately: the sender waits
  :meth:`CostModel.shootdown_ns` (a base round trip plus a per-extra-target
  increment), and each target CPU spends ``ipi_receiver_ns`` in the handler.
* A full TLB flush is cheap to issue (``full_flush_ns``) but empties the TLB;
  the refill is paid as TLB misses at ``tlb_miss_walk_ns`` each, by whoever
  models TLB contents (``machine.Machine``).

Profiles
--------

:data:`PROFILES` holds named machines; :func:`cost_model` picks one and
applies overrides (``cost_model("zen4", ipi_base_ns=2000)``).

* ``skylake-sp`` (the default, also ``CostModel()``): bare-metal x86-64 with
  Skylake-SP TLBs; the doc's suggested defaults.
* ``zen4``: bare-metal Zen 4 (Genoa) — Zen 4 TLB geometry, and the doc's local
  figures where virtualization does not distort them (page-table walks
  inside the guest kernel, memcpy bandwidth, fork's fixed cost); faults and
  IPIs keep the bare-metal defaults.
* ``small-vm``: the doc's local 2-vCPU KVM guest itself, with its measured
  fault costs (nested paging) and virtual IPIs (≈10 µs per shootdown).

A profile may also be a **file**: a name ending in ``.yaml`` or ``.yml`` is a path (relative
to the working directory), read by :func:`load_profile_file`.  ``cowsim calibrate`` writes
one (docs/calibration.md)::

    base: small-vm          # the named profile every field not given comes from
    costs:                  # CostModel fields, validated like overrides
      fork_per_pte_ns: 118.5
    host: {...}             # ignored by the loader: what the file was measured on
    measured: {...}         # ignored by the loader: the spread of each measurement

Any other top-level key is refused, as is a file over :data:`MAX_PROFILE_FILE_BYTES`.
"""

from __future__ import annotations

import difflib
import os
import stat
from pathlib import Path
from typing import Annotated, Any, overload

import numpy as np
import numpy.typing as npt
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["DEFAULT_PROFILE", "MAX_PROFILE_FILE_BYTES", "PAGE_SIZE", "PMD_SIZE", "PROFILES",
           "PROFILE_FILE_SUFFIXES", "CostModel", "cost_model", "is_profile_file",
           "load_profile_file"]

PAGE_SIZE = 4096
"""Bytes in a base page (x86-64 4 KiB)."""

PMD_SIZE = 2 << 20
"""Bytes mapped by one PMD entry (a 2 MiB THP)."""

FloatArray = npt.NDArray[np.float64]
Scalar = float | np.number[Any]

_Ns = Annotated[float, Field(ge=0)]
_BytesPerS = Annotated[float, Field(gt=0)]
_Entries = Annotated[int, Field(ge=0)]

_GiB = 1 << 30


def _as_float(value: Scalar | npt.NDArray[Any]) -> float | FloatArray:
    if isinstance(value, np.ndarray):
        return value.astype(np.float64, copy=False)
    return float(value)


class CostModel(BaseModel):
    """Every cost figure the simulator uses, with its source.  Immutable.

    ``CostModel()`` is the ``skylake-sp`` profile; use :func:`cost_model` for the
    others and for overrides.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    # -- fork and exit ------------------------------------------------------------------
    fork_fixed_ns: _Ns = Field(
        default=50_000.0,
        description=(
            "fork() cost independent of memory size (task struct, mm, VMAs). "
            "Suggested default 50 µs (range 30–100 µs): §1 local fork of 0 MiB 41 µs (L), "
            "§1 lmbench fork+exit 98 µs bare metal (firecracker #2931, M, includes exit+wait). "
            "zen4, small-vm: 41 µs, the §1 local Zen 4 measurement (L)."
        ),
    )
    fork_per_pte_ns: _Ns = Field(
        default=55.0,
        description=(
            "fork() cost per populated 4 KiB PTE of a private VMA (copy_pte_range: "
            "write-protect, copy, rmap/refcount). §1 Hildenbrand 14.3 ms/GiB on Xeon 4210R "
            "→ 55 ns/PTE (D); Redis doc 9–13 ms/GB (M); local 54–60 ns (L). "
            "zen4: 55 ns, inside the local Zen 4 54–60 ns. "
            "small-vm: 60 ns, §1 local 1 GiB 15.6 ms → 59.5 ns (L)."
        ),
    )
    fork_per_pmd_ns: _Ns = Field(
        default=900.0,
        description=(
            "fork() cost per PMD-mapped 2 MiB THP (one PMD copied instead of 512 PTEs). "
            "Suggested default 0.9 µs (range 0.5–1.5 µs): §1 local MADV_HUGEPAGE fork "
            "0.47 ms/GiB → 0.92 µs per PMD (L). All profiles."
        ),
    )
    exit_fixed_ns: _Ns = Field(
        default=48_000.0,
        description=(
            "exit() + reaping cost independent of memory size. No direct figure; D: §1 lmbench "
            "fork+exit 98 µs bare metal (firecracker #2931) − fork_fixed 50 µs = 48 µs. "
            "zen4: same derivation. small-vm: §1 local fork+_exit+waitpid 201 µs − fork 41 µs "
            "= 160 µs (D from L)."
        ),
    )
    exit_per_pte_ns: _Ns = Field(
        default=55.0,
        description=(
            "exit()/munmap cost per populated 4 KiB PTE (zap_pte_range: clear PTE, rmap and "
            "refcount drop, free when last). No published figure (E): taken equal to "
            "fork_per_pte_ns, since zap walks the same PTEs and touches the same struct pages "
            "as copy_pte_range (§1 Hildenbrand 55 ns). small-vm: 60 ns, equal to its fork cost."
        ),
    )

    # -- page faults --------------------------------------------------------------------
    anon_fault_ns: _Ns = Field(
        default=700.0,
        description=(
            "First-touch anonymous fault, fixed part (trap, allocation, map); zeroing the page "
            "is added from page_zero_bytes_per_s (see anon_write_fault_ns()). §2 model recipe "
            "'0.7–1.0 µs fixed + zero(4 KiB)', bare metal at the low end: 0.7 µs + 0.34 µs "
            "zeroing = 1.04 µs ≈ the suggested default 1.0 µs. zen4: same (local fault figures "
            "include nested paging). small-vm: §2 local 1.40 µs/page warm − zero(4 KiB) at "
            "11.5 GB/s 0.36 µs = 1.04 µs (D from L)."
        ),
    )
    zero_page_fault_ns: _Ns = Field(
        default=600.0,
        description=(
            "Read fault on untouched anonymous memory, mapping the shared zero page. "
            "§2 local 0.68 µs/page is a VM upper bound (L); §2 anon read fault on bare-metal "
            "i7 min 575 ns, median 1.0 µs (ddumbying blog, E). Chosen 0.6 µs for bare metal "
            "(skylake-sp, zen4); small-vm: 0.68 µs (L)."
        ),
    )
    cow_fault_fixed_ns: _Ns = Field(
        default=1_500.0,
        description=(
            "COW fault on a shared anonymous page, fixed part (trap, locking, alloc, rmap, "
            "local invlpg); the 4 KiB copy is added from page_copy_bytes_per_s (see "
            "cow_fault_ns()). Suggested default '1.5 µs + copy' (§2 recipe 1.0–1.5 µs fixed). "
            "zen4: same. small-vm: §2 local COW fault 2.22 µs − copy(4 KiB) at 12.9 GB/s "
            "0.32 µs = 1.9 µs (D from L)."
        ),
    )
    wp_reuse_fault_ns: _Ns = Field(
        default=700.0,
        description=(
            "Write-protect fault resolved by reusing the page (exclusive anon page: make the "
            "PTE writable, no allocation, no copy). No direct figure; the closest kernel path "
            "is the §5 uffd-wp WP_ASYNC write fault, which likewise only makes the PTE "
            "writable: 0.679 µs avg (Graviton3, CRIU notes, M) and 0.69 µs (local, L); "
            "suggested default 0.7 µs. It is well under the §2 COW fixed cost (1.5 µs), which "
            "adds allocation and rmap. small-vm: 0.69 µs (L)."
        ),
    )
    thp_split_ns: _Ns = Field(
        default=15_000.0,
        description=(
            "Splitting a shared PMD-mapped THP on the first write after fork (kernels ≥ 5.8 "
            "split and copy 4 KiB, commit 3917c80280c9); the 4 KiB COW fault is added on top "
            "(see thp_cow_fault_ns()). Suggested default 'split ≈15 µs + 4 KiB COW' "
            "(range 10–20 µs), §2 local 17.4 µs per fault (L). small-vm: 17.4 − 2.22 µs "
            "COW = 15.2 µs (D from L)."
        ),
    )
    swap_in_fault_ns: _Ns = Field(
        default=52_000.0,
        description=(
            "Major fault reading a swapped-out anonymous page back (do_swap_page from an "
            "NVMe swap device). cost-model.md has NO swap-in figure: estimate (E) = §6 Gen4 "
            "NAND QD1 4 KiB random read ≈50 µs (kitguru, M/D) + ≈2 µs of fault handling "
            "(about a §2 COW fault). All profiles."
        ),
    )

    # -- memory bandwidth ------------------------------------------------------------------
    page_copy_bytes_per_s: _BytesPerS = Field(
        default=10e9,
        description=(
            "Single-core page copy bandwidth (COW copies, checkpoint copies). Suggested "
            "default 10 GB/s (range 8–15 GB/s): §7 local memcpy 12.9 GB/s (L), §7 STREAM "
            "Copy ≈8.8 GB/s per thread (firecracker #1646, M/D). zen4, small-vm: 12.9 GB/s, "
            "the local Zen 4 memcpy (L; memory bandwidth is not virtualized)."
        ),
    )
    page_zero_bytes_per_s: _BytesPerS = Field(
        default=12e9,
        description=(
            "Single-core page clearing bandwidth (first-touch faults). §2 THP zero-fill "
            "suggested 130–180 µs per 2 MiB; 12 GB/s = 175 µs per 2 MiB, between §2 Arora "
            "11.82 GB/s page-at-a-time (Milan, M) and §7 Arora rep stosq 4 KB chunks "
            "13.7 GB/s (M). The §7 local memset 77 GB/s is NOT used (flagged unreliable). "
            "zen4: 13.7 GB/s (§7 Arora 4 KB chunks, AMD Milan, the closest AMD figure). "
            "small-vm: 11.5 GB/s, §2 local THP first touch 182 µs per 2 MiB (L)."
        ),
    )

    # -- TLB flushes and shootdowns --------------------------------------------------------
    invlpg_ns: _Ns = Field(
        default=100.0,
        description=(
            "One local INVLPG. §3a kernel comment 'about 100 ns' (commit a5102476a24b, "
            "D. Hansen) and Molnar's 260 cycles (M); suggested default 100 ns (range "
            "50–150 ns). All profiles."
        ),
    )
    full_flush_ns: _Ns = Field(
        default=40.0,
        description=(
            "Issuing one local full TLB flush (CR3 reload), without the refill, which is paid "
            "as later TLB misses (tlb_miss_walk_ns). §3a Molnar __flush_tlb() 96 cycles (M) "
            "≈ 40 ns at 2.4 GHz; suggested default '30–50 ns + refill'. All profiles."
        ),
    )
    full_flush_ceiling_pages: _Entries = Field(
        default=33,
        description=(
            "x86 tlb_single_page_flush_ceiling: a range flush of more pages than this flushes "
            "the whole TLB instead of one INVLPG per page. §3a commit a5102476a24b (M)."
        ),
    )
    ipi_base_ns: _Ns = Field(
        default=1_500.0,
        description=(
            "Round trip of a TLB-shootdown IPI to one remote CPU, as seen by the sender. "
            "Suggested default 1.5 µs (range 1–3 µs for one target): §3a rules of thumb "
            "(onedfrk newsletter, unseel.com, E); no bare-metal primary figure exists. "
            "zen4: same. small-vm: 9.7 µs, §3a local madvise(DONTNEED) 2.67 → 12.3 µs with a "
            "second thread (+9.7 µs for one virtual-IPI shootdown, L); the local mprotect "
            "RO+RW pair (+18.2 µs) is two shootdowns, ≈9.1 µs each."
        ),
    )
    ipi_per_target_ns: _Ns = Field(
        default=500.0,
        description=(
            "Extra sender-side time per additional target CPU of one shootdown. Suggested "
            "default range 0.2–1.0 µs per extra target (§3a rules of thumb, E); 0.5 µs makes "
            "32–72 targets cost 17–37 µs, the 'tens of µs' the §3a will-it-scale tlb_flush2 "
            "scaling implies (van Riel, AMD Milan: ≈118 µs per loop at 72 threads, M/D). "
            "zen4: same. small-vm: 1.0 µs, the range's top end (E: each virtual IPI send "
            "traps to the host; a 2-vCPU guest cannot measure it)."
        ),
    )
    ipi_receiver_ns: _Ns = Field(
        default=500.0,
        description=(
            "Handler time on each target CPU of a shootdown (interrupt entry, flush, ack). "
            "No figure in cost-model.md: estimate (E) of one third of the 1.5 µs round trip "
            "(§3a rule of thumb), the rest being delivery and the sender's wait. small-vm: "
            "2 µs (E: guest interrupt entry and EOI under KVM; §3a local shootdowns cost "
            "≈9–10 µs in total)."
        ),
    )

    # -- TLB geometry and page walks --------------------------------------------------------
    tlb_l1_entries: _Entries = Field(
        default=64,
        description=(
            "L1 DTLB entries for 4 KiB pages. skylake-sp: 64, §3b Intel Optimization Reference "
            "Manual 248966-045 Table 2-15 (S). zen4, small-vm: 72, §3b CPUID 0x80000005 on "
            "the local Zen 4 (L/S)."
        ),
    )
    tlb_l2_entries: _Entries = Field(
        default=1_536,
        description=(
            "Second-level (STLB) entries for 4 KiB pages. skylake-sp: 1536, §3b Intel "
            "Optimization Reference Manual Table 2-15 (S). zen4, small-vm: 3072, §3b CPUID "
            "0x80000006 on the local Zen 4 (L/S)."
        ),
    )
    tlb_miss_walk_ns: _Ns = Field(
        default=12.0,
        description=(
            "Cost of one STLB miss (page walk with the page tables mostly cached). Suggested "
            "default 20–40 cycles (§3c Haswell L2-TLB miss ≈20 cycles, mynavi, M): 30 cycles "
            "≈ 12 ns at 2.5 GHz. zen4: same. small-vm: 15.6 ns, §3c local STLB-miss cost at "
            "a 1 GiB working set (L, includes the 2-D nested walk)."
        ),
    )

    # -- GUP and pinning ------------------------------------------------------------------
    pin_per_page_ns: _Ns = Field(
        default=60.0,
        description=(
            "pin_user_pages(FOLL_LONGTERM) per 4 KiB page. §6 Li Zhe gup_test 8 GiB in "
            "130.5 ms → 62 ns (M, HW unstated); suggested default 60 ns. All profiles."
        ),
    )
    unpin_per_page_ns: _Ns = Field(
        default=15.0,
        description=(
            "unpin_user_page() per 4 KiB page. §6 Li Zhe gup_test 8 GiB in 31.7 ms → 15 ns "
            "(M); suggested default 15 ns. All profiles."
        ),
    )
    gup_per_page_ns: _Ns = Field(
        default=60.0,
        description=(
            "get_user_pages (FOLL_GET, e.g. O_DIRECT on old kernels) per 4 KiB page. No "
            "separate figure: estimate (E) equal to the §6 Li Zhe pin cost (60 ns), the same "
            "page-table walk and refcount increment. All profiles."
        ),
    )

    # -- checkpointing: soft-dirty, pagemap, userfaultfd, mprotect ---------------------------
    pagemap_per_page_ns: _Ns = Field(
        default=35.0,
        description=(
            "Reading /proc/PID/pagemap per 4 KiB page of VA. §5 local 9.05 ms per GiB → "
            "34.5 ns/entry (L; a page-table walk, not distorted by the VM); suggested default "
            "35 ns. All profiles."
        ),
    )
    pagemap_scan_per_page_ns: _Ns = Field(
        default=3.1,
        description=(
            "PAGEMAP_SCAN ioctl (≥ 6.7: report written pages and re-write-protect them) per "
            "4 KiB page of VA. §5 local 0.81 ms per GiB with 1/64 pages dirty → 3.1 ns/page "
            "(L). All profiles."
        ),
    )
    clear_refs_per_pte_ns: _Ns = Field(
        default=30.0,
        description=(
            "echo 4 > clear_refs (clear soft-dirty, write-protect) per populated PTE, plus one "
            "full flush of the mm. §5: NO published figure, estimate (E) by analogy with "
            "UFFDIO_WRITEPROTECT/mprotect walks, 15–60 ns/PTE; suggested default 30 ns. "
            "zen4, small-vm: 62 ns, the same analogy applied to the local UFFDIO_WRITEPROTECT "
            "(§5, L)."
        ),
    )
    uffd_wp_per_pte_ns: _Ns = Field(
        default=30.0,
        description=(
            "UFFDIO_WRITEPROTECT per PTE. §5 Graviton3 100 GB in 392.9 ms → 15 ns (CRIU "
            "notes, M) and local 1 GiB in 16.1–16.6 ms → 62 ns (L); suggested '≈15–60 ns/PTE' "
            "has no single default: 30 ns, the geometric middle and equal to the clear_refs "
            "default. zen4, small-vm: 62 ns (L)."
        ),
    )
    uffd_wp_fault_ns: _Ns = Field(
        default=20_000.0,
        description=(
            "Write fault on a uffd-wp-protected page resolved synchronously by a monitor "
            "thread (copy the page, unprotect, wake). Suggested default 10–50 µs (§5 CRIU "
            "notes, M); 20 µs = §5 Anjum process_memwatch sync uffd ≈62 kcycles/page at 3 GHz "
            "(D). small-vm: 30 µs (E: plus one ≈10 µs virtual-IPI wake-up of the monitor)."
        ),
    )
    uffd_wp_async_fault_ns: _Ns = Field(
        default=700.0,
        description=(
            "Write fault on a page protected with UFFD_FEATURE_WP_ASYNC (the kernel just "
            "unprotects). Suggested default 0.7 µs: §5 Graviton3 avg 0.679 µs (CRIU notes, "
            "M), local 0.69 µs (L). small-vm: 0.69 µs (L)."
        ),
    )
    mprotect_per_pte_ns: _Ns = Field(
        default=30.0,
        description=(
            "mprotect() per populated PTE (change_protection, the walk UFFDIO_WRITEPROTECT "
            "also uses). Bare metal: equal to uffd_wp_per_pte_ns (30 ns, E by that identity). "
            "zen4, small-vm: 63 ns, D from §3a local mprotect RO+RW pairs: "
            "(133.5 − 4.6 µs) / 1023 pages / 2 calls (L)."
        ),
    )

    # -- machine-level ----------------------------------------------------------------------
    memory_bytes: Annotated[int, Field(gt=0)] = Field(
        default=256 * _GiB,
        description=(
            "Physical memory capacity. Not a cost figure: skylake-sp and zen4 get 256 GiB, "
            "enough for the §5 100–190 GB Valkey/CRIU datasets; small-vm: 24 GiB, the local "
            "VM of cost-model.md."
        ),
    )
    mmap_lock_handoff_ns: _Ns = Field(
        default=200.0,
        description=(
            "Handing a contended mmap_lock to the next waiter (cache-line transfer and "
            "wake-up). cost-model.md has NO figure: small estimate (E), kept well below a "
            "fault (§2) so that it only matters under heavy contention. All profiles."
        ),
    )

    # -- helpers ----------------------------------------------------------------------------
    @overload
    def copy_ns(self, nbytes: Scalar) -> float: ...
    @overload
    def copy_ns(self, nbytes: npt.NDArray[Any]) -> FloatArray: ...
    def copy_ns(self, nbytes: Scalar | npt.NDArray[Any]) -> float | FloatArray:
        """Time to copy ``nbytes`` at ``page_copy_bytes_per_s``."""
        return _as_float(nbytes) * (1e9 / self.page_copy_bytes_per_s)

    @overload
    def zero_ns(self, nbytes: Scalar) -> float: ...
    @overload
    def zero_ns(self, nbytes: npt.NDArray[Any]) -> FloatArray: ...
    def zero_ns(self, nbytes: Scalar | npt.NDArray[Any]) -> float | FloatArray:
        """Time to clear ``nbytes`` at ``page_zero_bytes_per_s``."""
        return _as_float(nbytes) * (1e9 / self.page_zero_bytes_per_s)

    def cow_fault_ns(self) -> float:
        """A 4 KiB COW fault: the fixed cost plus copying one page."""
        return self.cow_fault_fixed_ns + self.copy_ns(PAGE_SIZE)

    def anon_write_fault_ns(self) -> float:
        """A first-touch anonymous write fault: the fixed cost plus zeroing one page."""
        return self.anon_fault_ns + self.zero_ns(PAGE_SIZE)

    def thp_cow_fault_ns(self, *, copy_whole: bool = False) -> float:
        """The first write to a shared PMD-mapped THP after fork.

        Kernels ≥ 5.8 split the PMD and copy 4 KiB (``thp_split_ns`` + a COW fault);
        ``copy_whole=True`` models older kernels, which copy all 2 MiB (§2: ≈0.25 ms).
        """
        if copy_whole:
            return self.cow_fault_fixed_ns + self.copy_ns(PMD_SIZE)
        return self.thp_split_ns + self.cow_fault_ns()

    def thp_anon_fault_ns(self) -> float:
        """A first-touch fault on a 2 MiB THP: the fixed cost plus zeroing 2 MiB."""
        return self.anon_fault_ns + self.zero_ns(PMD_SIZE)

    @overload
    def fork_ns(self, ptes: Scalar, pmds: Scalar = 0) -> float: ...
    @overload
    def fork_ns(self, ptes: npt.NDArray[Any], pmds: Scalar | npt.NDArray[Any] = 0) -> FloatArray: ...
    def fork_ns(self, ptes: Scalar | npt.NDArray[Any],
                pmds: Scalar | npt.NDArray[Any] = 0) -> float | FloatArray:
        """fork() of a process with ``ptes`` populated private 4 KiB PTEs and ``pmds``
        PMD-mapped THPs."""
        return (self.fork_fixed_ns + _as_float(ptes) * self.fork_per_pte_ns
                + _as_float(pmds) * self.fork_per_pmd_ns)

    @overload
    def exit_ns(self, ptes: Scalar) -> float: ...
    @overload
    def exit_ns(self, ptes: npt.NDArray[Any]) -> FloatArray: ...
    def exit_ns(self, ptes: Scalar | npt.NDArray[Any]) -> float | FloatArray:
        """exit() of a process with ``ptes`` populated 4 KiB PTEs."""
        return self.exit_fixed_ns + _as_float(ptes) * self.exit_per_pte_ns

    @overload
    def flush_ns(self, kind: str, pages: Scalar = 1) -> float: ...
    @overload
    def flush_ns(self, kind: str, pages: npt.NDArray[Any]) -> FloatArray: ...
    def flush_ns(self, kind: str, pages: Scalar | npt.NDArray[Any] = 1) -> float | FloatArray:
        """Local cost of one TLB flush, x86 style.

        ``kind`` is ``"page"`` (flush_tlb_page), ``"range"`` (flush_tlb_range over
        ``pages`` pages) or ``"mm"`` (flush_tlb_mm).  A page or range flush is one
        INVLPG per page up to ``full_flush_ceiling_pages``; above it, and for ``"mm"``,
        one full flush.
        """
        if kind not in ("page", "range", "mm"):
            raise ValueError(f"unknown TLB flush kind {kind!r}; expected 'page', 'range' or 'mm'")
        count = _as_float(pages)
        if np.any(np.asarray(count) < 0):
            raise ValueError(f"a flush covers a non-negative number of pages, not {pages!r}")
        full = count > self.full_flush_ceiling_pages if kind != "mm" else True
        if isinstance(count, np.ndarray):
            return np.where(full, self.full_flush_ns, count * self.invlpg_ns)
        return self.full_flush_ns if full else count * self.invlpg_ns

    @overload
    def shootdown_ns(self, targets: Scalar) -> float: ...
    @overload
    def shootdown_ns(self, targets: npt.NDArray[Any]) -> FloatArray: ...
    def shootdown_ns(self, targets: Scalar | npt.NDArray[Any]) -> float | FloatArray:
        """The sender's wait for a shootdown IPI to ``targets`` remote CPUs:
        0 for none, else ``ipi_base_ns + ipi_per_target_ns * (targets - 1)``."""
        count = _as_float(targets)
        if np.any(np.asarray(count) < 0):
            raise ValueError(f"a shootdown has a non-negative number of targets, not {targets!r}")
        if isinstance(count, np.ndarray):
            return np.where(count > 0, self.ipi_base_ns + self.ipi_per_target_ns * (count - 1), 0.0)
        if count == 0:
            return 0.0
        return self.ipi_base_ns + self.ipi_per_target_ns * (count - 1)


# -- profiles ---------------------------------------------------------------------------------

_ZEN4: dict[str, Any] = {
    "fork_fixed_ns": 41_000.0,  # §1 local fork, 0 MiB (L)
    "tlb_l1_entries": 72,  # §3b CPUID 0x80000005, local Zen 4 (L/S)
    "tlb_l2_entries": 3_072,  # §3b CPUID 0x80000006, local Zen 4 (L/S)
    "page_copy_bytes_per_s": 12.9e9,  # §7 local memcpy (L)
    "page_zero_bytes_per_s": 13.7e9,  # §7 Arora rep stosq, 4 KB chunks, AMD Milan (M)
    "clear_refs_per_pte_ns": 62.0,  # §5 estimate by analogy with local UFFDIO_WRITEPROTECT (E/L)
    "uffd_wp_per_pte_ns": 62.0,  # §5 local UFFDIO_WRITEPROTECT 1 GiB 16.1–16.6 ms (L)
    "mprotect_per_pte_ns": 63.0,  # §3a local mprotect RO+RW pairs (D from L)
}

_SMALL_VM: dict[str, Any] = {
    **_ZEN4,
    "page_zero_bytes_per_s": 11.5e9,  # §2 local THP first touch, 182 µs per 2 MiB (L)
    "fork_per_pte_ns": 60.0,  # §1 local 15.6 ms/GiB (L)
    "exit_fixed_ns": 160_000.0,  # §1 local fork+exit+wait 201 µs − fork 41 µs (D)
    "exit_per_pte_ns": 60.0,  # = fork_per_pte_ns (E)
    "anon_fault_ns": 1_040.0,  # §2 local 1.40 µs − zero(4 KiB) at 11.5 GB/s (D)
    "zero_page_fault_ns": 680.0,  # §2 local zero-page read fault (L)
    "cow_fault_fixed_ns": 1_900.0,  # §2 local COW 2.22 µs − copy(4 KiB) at 12.9 GB/s (D)
    "wp_reuse_fault_ns": 690.0,  # §5 local WP_ASYNC fault (L, same path shape)
    "thp_split_ns": 15_200.0,  # §2 local 17.4 µs − COW 2.22 µs (D)
    "ipi_base_ns": 9_700.0,  # §3a local madvise shootdown +9.7 µs (L)
    "ipi_per_target_ns": 1_000.0,  # top of the §3a range (E)
    "ipi_receiver_ns": 2_000.0,  # estimate (E)
    "tlb_miss_walk_ns": 15.6,  # §3c local STLB miss at 1 GiB (L)
    "uffd_wp_fault_ns": 30_000.0,  # §5 20 µs + a virtual-IPI wake-up (E)
    "uffd_wp_async_fault_ns": 690.0,  # §5 local WP_ASYNC fault (L)
    "memory_bytes": 24 * _GiB,  # the local VM
}

DEFAULT_PROFILE = "skylake-sp"

PROFILES: dict[str, CostModel] = {
    "skylake-sp": CostModel(),
    "zen4": CostModel(**_ZEN4),
    "small-vm": CostModel(**_SMALL_VM),
}
"""Named machines; see the module docstring and each field's description."""


PROFILE_FILE_SUFFIXES = (".yaml", ".yml")
"""A profile whose name ends in one of these is a path to a profile file."""
MAX_PROFILE_FILE_BYTES = 256 << 10
"""The largest profile file read (a calibrated profile is about 4 KiB)."""
_PROFILE_FILE_KEYS = frozenset({"base", "costs", "host", "measured"})
_IGNORED_PROFILE_KEYS = ("host", "measured")


def is_profile_file(profile: str) -> bool:
    """Whether ``profile`` names a file (``host.yaml``) rather than a named profile."""
    return isinstance(profile, str) and profile.endswith(PROFILE_FILE_SUFFIXES)


def _with_overrides(base: CostModel, overrides: dict[str, Any], what: str) -> CostModel:
    """``base`` with ``overrides`` validated; errors name ``what`` (``cost field``)."""
    fields = list(CostModel.model_fields)
    for name in overrides:
        if not isinstance(name, str) or name not in CostModel.model_fields:
            close = difflib.get_close_matches(str(name), fields, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "see CostModel for the field names"
            raise ValueError(f"unknown {what} {name!r}; {hint}")
    try:
        return CostModel.model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in error["loc"])
        raise ValueError(f"{what} {field!r}: {error['msg']} (got {error.get('input')!r})") from None


def _read_profile_text(path: str) -> str:
    try:  # O_NONBLOCK: opening a FIFO must not wait for a writer
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ValueError(f"machine profile file {path!r}: not a regular file")
            raw = handle.read(MAX_PROFILE_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"machine profile file {path!r}: cannot read: "
                         f"{exc.strerror or exc}") from None
    if len(raw) > MAX_PROFILE_FILE_BYTES:
        raise ValueError(f"machine profile file {path!r}: larger than "
                         f"{MAX_PROFILE_FILE_BYTES >> 10} KiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"machine profile file {path!r}: not UTF-8 text") from None


def load_profile_file(path: str | Path) -> CostModel:
    """The cost model a profile file describes (see the module docstring for its format).

    Only ``base`` and ``costs`` are read: ``host`` and ``measured`` are documentation and
    are not even walked (so no alias in them can expand).  Raises :class:`ValueError`, one
    line naming the file and the field.
    """
    name = str(path)
    text = _read_profile_text(name)
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        detail = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ValueError(f"machine profile file {name!r}: not valid YAML: {detail}") from None
    if not isinstance(data, dict):
        raise ValueError(f"machine profile file {name!r}: a mapping with 'base' and 'costs' "
                         f"is expected, not {type(data).__name__}")
    unknown = sorted(str(key) for key in data if key not in _PROFILE_FILE_KEYS)
    if unknown:
        raise ValueError(f"machine profile file {name!r}: unknown key {unknown[0]!r}; "
                         f"expected {', '.join(sorted(_PROFILE_FILE_KEYS))}")
    base_name = data.get("base", DEFAULT_PROFILE)
    if not isinstance(base_name, str) or base_name not in PROFILES:
        raise ValueError(f"machine profile file {name!r}: field 'base': unknown profile "
                         f"{base_name!r}; known profiles: {', '.join(PROFILES)}")
    costs = data.get("costs", {})
    if costs is None:
        costs = {}
    if not isinstance(costs, dict):
        raise ValueError(f"machine profile file {name!r}: field 'costs': a mapping of cost "
                         f"fields is expected, not {type(costs).__name__}")
    try:
        return _with_overrides(PROFILES[base_name], costs, "cost field")
    except ValueError as exc:
        raise ValueError(f"machine profile file {name!r}: {exc}") from None


def cost_model(profile: str = DEFAULT_PROFILE, **overrides: Any) -> CostModel:
    """The named profile (or profile file, :func:`is_profile_file`), with ``overrides`` of
    individual fields (validated).

    Raises :class:`ValueError` naming an unknown profile, an unreadable or invalid profile
    file, an unknown field (with the closest field name) or a field whose value is invalid.
    """
    if is_profile_file(profile):
        base = load_profile_file(profile)
    else:
        try:
            base = PROFILES[profile]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown machine profile {profile!r}; known profiles: {', '.join(PROFILES)}, "
                f"or a profile file ending in {' or '.join(PROFILE_FILE_SUFFIXES)}"
            ) from None
    if not overrides:
        return base
    return _with_overrides(base, overrides, "cost field")
