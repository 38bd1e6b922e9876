"""The modeled machine: CPUs, threads on them, per-CPU TLBs and TLB shootdowns.

The kernel model says *what* happens (a COW copy, a fork, a flush of one
page or of a whole mm); the machine says *how long it takes and where*.

**CPUs and threads.**  A thread is placed on one CPU and runs its work there
(workloads queue the work of threads sharing a CPU on that CPU).  An mm's
``cpus`` (``mm_cpumask``) are the CPUs its threads were placed on: the CPUs
that may hold its translations (lazy-TLB CPUs included: a CPU stays in the
mask after the thread sleeps).

**TLB shootdowns.**  When the kernel model flushes (``flush_tlb_page``,
``flush_tlb_range``, ``flush_tlb_mm``), the CPU doing the work invalidates
locally (``invlpg`` per page, or a full flush above the 33-page ceiling) and,
if the mm may be cached elsewhere, sends an IPI to every other CPU in its
mask and waits for all of them: a round trip growing with the number of
targets, charged to the sender.  The local invalidation is already inside
the measured cost of the operation that flushes (a COW fault, a fork: the
cost-model figures time the whole call), so the bill adds only the remote
round trip.  Each target spends handler time, owed by
that CPU and charged to the next work that runs there.  A single-threaded
process sends no IPIs.

**TLBs.**  Each (CPU, mm) pair keeps how many of the mm's 4 KiB translations
the CPU's TLB holds (L1 + L2 entries at most).  Accessing k pages of a
working set of W pages hits with probability held/W; every miss costs a page
walk and then occupies an entry.  A full flush empties the entry count; a
single-page flush removes one entry in expectation (held/W).  This is the
expected-value model of a uniformly accessed working set, deterministic and
O(1) per batch of accesses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cowsim.sim.kernel import TlbFlush
from cowsim.sim.kernel.mm import MM
from cowsim.sim.machine.costs import CostModel

NS = 1e-9


@dataclass
class Bill:
    """Time accumulated by one operation on one CPU, in nanoseconds."""

    cpu: int
    ns: float = 0.0


@dataclass
class MachineCounters:
    tlb_shootdowns: int = 0
    tlb_ipis: int = 0
    tlb_flushes_local: int = 0
    tlb_misses: float = 0.0


class Billing:
    """The context of :meth:`Machine.bill` (a class, not a generator: one per COW tick)."""

    __slots__ = ("bill", "machine", "outer")

    def __init__(self, machine: Machine, bill: Bill) -> None:
        self.machine, self.bill = machine, bill
        self.outer: Bill | None = None

    def __enter__(self) -> Bill:
        self.outer = self.machine.current_bill
        self.machine.current_bill = self.bill
        return self.bill

    def __exit__(self, *_exc: object) -> None:
        self.machine.current_bill = self.outer
        if self.outer is not None:
            self.outer.ns += self.bill.ns


class Machine:
    """N CPUs with per-CPU TLB state, the cost model and shootdown accounting."""

    def __init__(self, ncpus: int, costs: CostModel) -> None:
        if not 1 <= ncpus <= 1024:
            raise ValueError(f"a machine has 1 to 1024 CPUs, not {ncpus}")
        self.ncpus = ncpus
        self.costs = costs
        self.owed_ns = np.zeros(ncpus, dtype=np.float64)
        """IPI handler time each CPU owes to the next work that runs on it."""
        self._tlb_held: dict[tuple[int, int], float] = {}
        self._working_set: dict[int, float] = {}
        self._next_cpu = 0
        self.current_bill: Bill | None = None
        """The bill kernel operations are charged to now (:meth:`bill`), if any."""
        self.counters = MachineCounters()

    # -- placement -------------------------------------------------------------
    def place(self, mm: MM, threads: int, *, first: bool = True) -> list[int]:
        """Place ``threads`` threads of ``mm`` on CPUs, round-robin over the machine.

        ``first``: these are the mm's first threads (its CPU mask becomes exactly
        their CPUs); otherwise they join the mask.
        """
        cpus = [(self._next_cpu + i) % self.ncpus for i in range(threads)]
        self._next_cpu = (self._next_cpu + threads) % self.ncpus
        mm.cpus = set(cpus) if first else mm.cpus | set(cpus)
        return cpus

    def set_working_set(self, mm: MM, pages: float) -> None:
        """How many pages the mm's threads touch (for TLB hit rates)."""
        self._working_set[id(mm)] = max(1.0, float(pages))

    # -- billing ----------------------------------------------------------------
    def bill(self, cpu: int) -> Billing:
        """``with machine.bill(cpu) as bill:`` collects the flush and shootdown time of the
        kernel operations run inside into ``bill.ns`` (nested bills add to the outer one)."""
        return Billing(self, Bill(cpu=cpu))

    def take_owed(self, cpu: int) -> float:
        """IPI handler time the CPU owes, in ns, now charged (and cleared)."""
        owed = float(self.owed_ns[cpu])
        self.owed_ns[cpu] = 0.0
        return owed

    # -- TLB ---------------------------------------------------------------------
    def on_tlb_flush(self, flush: TlbFlush) -> None:
        """Kernel-model hook: price a flush and apply it to the TLBs it reaches."""
        costs = self.costs
        cpu = flush.cpu if flush.cpu < self.ncpus else 0
        full = flush.kind == "mm" or (
            flush.kind == "range" and flush.pages > costs.full_flush_ceiling_pages
        )
        cpus = flush.mm.cpus
        if len(cpus) == 1 and cpu in cpus:
            remote: list[int] = []  # a single-CPU mm: nobody else to interrupt
        else:
            remote = sorted(c for c in cpus if c != cpu and c < self.ncpus)
        sender_ns = costs.shootdown_ns(len(remote)) if remote else 0.0
        self.counters.tlb_flushes_local += flush.count
        if remote:
            self.counters.tlb_shootdowns += flush.count
            self.counters.tlb_ipis += flush.count * len(remote)
            self.owed_ns[remote] += flush.count * costs.ipi_receiver_ns
        for target in [cpu, *remote]:
            self._invalidate(target, flush.mm, full, flush.count * flush.pages)
        if self.current_bill is not None:
            self.current_bill.ns += flush.count * sender_ns

    def _invalidate(self, cpu: int, mm: MM, full: bool, pages: int) -> None:
        key = (cpu, id(mm))
        held = self._tlb_held.get(key, 0.0)
        if held <= 0.0:
            return
        if full:
            self._tlb_held[key] = 0.0
            return
        working_set = self._working_set.get(id(mm), held)
        self._tlb_held[key] = held * max(0.0, 1.0 - 1.0 / max(working_set, 1.0)) ** pages

    def tlb_access(self, cpu: int, mm: MM, accesses: float) -> float:
        """``accesses`` uniformly random page accesses by a thread on ``cpu``: expected TLB
        misses (each costing a page walk), with the TLB state updated."""
        if accesses <= 0:
            return 0.0
        key = (cpu, id(mm))
        capacity = float(self.costs.tlb_l1_entries + self.costs.tlb_l2_entries)
        working_set = self._working_set.get(id(mm), capacity)
        held = min(self._tlb_held.get(key, 0.0), working_set)
        reach = min(capacity, working_set)
        # While the TLB fills, each access misses with probability 1 - held/W and a miss
        # adds an entry: d(held)/d(access) = 1 - held/W, so held approaches W
        # exponentially.  Once held reaches the capacity, misses go on at 1 - reach/W.
        if held >= reach:
            fill_accesses = 0.0
        elif reach >= working_set:
            fill_accesses = float("inf")
        else:
            fill_accesses = working_set * float(np.log((working_set - held) / (working_set - reach)))
        if accesses <= fill_accesses:
            new_held = working_set - (working_set - held) * float(np.exp(-accesses / working_set))
            misses = new_held - held
        else:
            new_held = reach
            misses = (reach - held) + (accesses - fill_accesses) * (1.0 - reach / working_set)
        self._tlb_held[key] = new_held
        self.counters.tlb_misses += misses
        return float(misses)
