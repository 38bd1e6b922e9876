"""Event counters of the kernel model, named like /proc/vmstat where one exists.

``page_faults`` counts every fault handled (anonymous, shmem, swap-in,
write-protect, unshare and userfaultfd write-protect faults, including those
GUP triggers).  ``cow_copies`` counts every page copied to break sharing, and
``cow_copies_<cause>`` splits it by why the page was read-only: ``fork``
(shared by fork), ``fork_pinned`` (the early copy of a maybe-pinned page at
fork), ``zero_page`` (first write after a read mapped the zero page),
``unshare`` (FAULT_FLAG_UNSHARE for a R/O pin), ``swapin`` (mapped read-only
by swap-in), ``clear_refs``, ``mprotect`` and ``uffd_wp``.  ``wp_reuses`` is
``pgreuse``.  TLB flushes are counted by kind; ``tlb_flush_ipis`` counts the
remote CPUs they reach (the mm's CPU mask less the flushing CPU).
``violations_<kind>`` counts every violation the oracles report (``leak``,
``pin_diverged``, ``stale_pin``), each once per kind, holder and page, however
few of them the kernel keeps as objects (``max_violations``).
"""

from __future__ import annotations

COW_CAUSES = (
    "fork", "fork_pinned", "zero_page", "unshare", "swapin", "clear_refs", "mprotect", "uffd_wp",
)
FAULT_TYPES = ("anonymous", "shmem", "swap", "wp", "unshare", "uffd_wp")
VIOLATION_KINDS = ("leak", "pin_diverged", "stale_pin")

COUNTER_NAMES: tuple[str, ...] = (
    "page_faults",
    *(f"faults_{kind}" for kind in FAULT_TYPES),
    "cow_copies",
    *(f"cow_copies_{cause}" for cause in COW_CAUSES),
    "wp_reuses",
    "tlb_flushes",
    "tlb_flushes_page",
    "tlb_flushes_range",
    "tlb_flushes_mm",
    "tlb_flush_ipis",
    "pages_allocated",
    "pages_freed",
    "swap_outs",
    "gup_pages",
    "pin_pages",
    *(f"violations_{kind}" for kind in VIOLATION_KINDS),
)


class Counters(dict[str, int]):
    """Cumulative counters; every name in COUNTER_NAMES is always present."""

    def __init__(self) -> None:
        super().__init__(dict.fromkeys(COUNTER_NAMES, 0))
        self.changes = 0
        """How many times :meth:`add` changed a counter: a caller that saw the same number
        before and after an operation knows no counter moved, without comparing them."""

    def add(self, name: str, amount: int = 1) -> None:
        if amount:
            self[name] += int(amount)
            self.changes += 1

    def reset(self) -> None:
        """Every counter back to zero."""
        for name in self:
            self[name] = 0
        self.changes += 1

    def fault(self, kind: str, amount: int = 1) -> None:
        self.add(f"faults_{kind}", amount)
        self.add("page_faults", amount)

    def cow(self, cause: str, amount: int = 1) -> None:
        self.add(f"cow_copies_{cause}", amount)
        self.add("cow_copies", amount)
