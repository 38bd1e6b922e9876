"""Pricing: what the kernel model reports, turned into nanoseconds, in one place.

The kernel model says *what* an operation did, in its counters (faults by
type, COW copies by cause, reuses, pages referenced by GUP or pinned) and, per
page, in the fault report of an access; the machine's shootdown bill says what
its TLB flushes cost the calling CPU.  :class:`Pricing` is the only code that
multiplies those by the cost model, so a fault costs the same whether a
request, an O_DIRECT submission or a checkpointer took it:

==========================  =======================================================
what the kernel did         price (cost-model.md)
==========================  =======================================================
anonymous / shmem fault     ``anon_write_fault_ns()`` (fixed + zeroing 4 KiB)
write fault, page reused    ``wp_reuse_fault_ns``
write fault, page copied    ``cow_fault_ns()`` (fixed + copying 4 KiB)
unshare copy                ``cow_fault_ns()``
swap-in                     ``swap_in_fault_ns``
uffd-wp userfault           ``uffd_wp_fault_ns`` (monitor round trip)
early copy at fork          ``copy_ns(4096)`` (inside the fork's walk)
fork                        ``fork_ns(ptes)`` + early copies + its flush's shootdown
GUP / pin                   ``gup_per_page_ns`` / ``pin_per_page_ns`` per page
clear_refs walk             ``clear_refs_per_pte_ns`` per populated PTE + shootdown
UFFDIO_WRITEPROTECT walk    ``uffd_wp_per_pte_ns`` per PTE + shootdown
pagemap read                ``pagemap_per_page_ns`` per page
copying data out            ``copy_ns(bytes)``
==========================  =======================================================

Shootdowns are not in these rows: the machine bills them to the sender as the
kernel flushes (:meth:`Machine.bill`), and callers add ``bill.ns``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from cowsim.sim.kernel.vmfault import FaultFlags
from cowsim.sim.machine.costs import PAGE_SIZE, CostModel

__all__ = ["Pricing"]


class Pricing:
    """Prices kernel work on one machine's cost model."""

    def __init__(self, costs: CostModel) -> None:
        self.costs = costs
        self.anon_fault_ns = costs.anon_write_fault_ns()
        self.cow_fault_ns = costs.cow_fault_ns()
        self.early_copy_ns = costs.copy_ns(PAGE_SIZE)
        every_byte = range(256)
        self._flag_ns = np.array([self._price_flags(flags) for flags in every_byte])
        """The price of each possible FaultFlags byte: a report is priced with one gather."""
        self._flag_flushes = np.array(
            [bool(flags & (FaultFlags.COW_COPY | FaultFlags.UFFD_WP)) for flags in every_byte])
        """Whether each FaultFlags byte flushed a TLB entry (a copy, a resolved userfault)."""

    def faults_ns(self, delta: Mapping[str, int]) -> float:
        """The faults, copies and GUP references a kernel call made, from its counter deltas
        (shootdowns excluded)."""
        costs = self.costs
        copies = delta.get("cow_copies", 0) - delta.get("cow_copies_fork_pinned", 0)
        unshared_only = delta.get("faults_unshare", 0) - delta.get("cow_copies_unshare", 0)
        return (
            (delta.get("faults_anonymous", 0) + delta.get("faults_shmem", 0)) * self.anon_fault_ns
            + copies * self.cow_fault_ns
            + (delta.get("wp_reuses", 0) + unshared_only) * costs.wp_reuse_fault_ns
            + delta.get("faults_swap", 0) * costs.swap_in_fault_ns
            + delta.get("faults_uffd_wp", 0) * costs.uffd_wp_fault_ns
            + delta.get("cow_copies_fork_pinned", 0) * self.early_copy_ns
            + delta.get("gup_pages", 0) * costs.gup_per_page_ns
            + delta.get("pin_pages", 0) * costs.pin_per_page_ns
        )

    def page_faults_ns(self, flags: npt.NDArray[np.uint8], shootdown_ns: float = 0.0
                       ) -> npt.NDArray[np.float64]:
        """Per page of a fault report (:class:`~cowsim.sim.kernel.vmfault.FaultFlags`), the
        time its faults took; the call's shootdown bill is shared equally by the pages whose
        faults flushed a TLB entry (copies and resolved userfaults).  Summed, the same as
        :meth:`faults_ns` of the call's counter deltas plus the bill."""
        ns = self._flag_ns[flags]
        if shootdown_ns:
            flushed = self._flag_flushes[flags]
            count = int(np.count_nonzero(flushed))
            if count:
                ns[flushed] += shootdown_ns / count
        return ns

    def _price_flags(self, flags: int) -> float:
        """The time of the faults one page's :class:`FaultFlags` byte says it took."""
        costs, bits = self.costs, FaultFlags(flags)
        copied = FaultFlags.COW_COPY in bits
        ns = 0.0
        if bits & (FaultFlags.ANONYMOUS | FaultFlags.SHMEM):
            ns += self.anon_fault_ns
        if copied:
            ns += self.cow_fault_ns
        if FaultFlags.WP_REUSE in bits or (FaultFlags.UNSHARE in bits and not copied):
            ns += costs.wp_reuse_fault_ns
        if FaultFlags.SWAP in bits:
            ns += costs.swap_in_fault_ns
        if FaultFlags.UFFD_WP in bits:
            ns += costs.uffd_wp_fault_ns
        return ns

    def call_ns(self, delta: Mapping[str, int], shootdown_ns: float) -> float:
        """A whole kernel call: its faults and references plus its shootdown bill."""
        return self.faults_ns(delta) + shootdown_ns

    def fork_ns(self, ptes: int, delta: Mapping[str, int], shootdown_ns: float) -> float:
        """fork() of a process with ``ptes`` populated private PTEs: the walk, the early
        copies of maybe-pinned pages and the final flush's shootdown."""
        return (float(self.costs.fork_ns(ptes))
                + delta.get("cow_copies_fork_pinned", 0) * self.early_copy_ns + shootdown_ns)

    def clear_refs_ns(self, ptes: int, shootdown_ns: float) -> float:
        """echo 4 > clear_refs over ``ptes`` populated PTEs."""
        return ptes * self.costs.clear_refs_per_pte_ns + shootdown_ns

    def uffd_writeprotect_ns(self, ptes: int, shootdown_ns: float) -> float:
        """UFFDIO_WRITEPROTECT over ``ptes`` PTEs."""
        return ptes * self.costs.uffd_wp_per_pte_ns + shootdown_ns

    def pagemap_ns(self, pages: int) -> float:
        """Reading /proc/PID/pagemap for ``pages`` pages of address space."""
        return pages * self.costs.pagemap_per_page_ns

    def copy_out_ns(self, pages: int) -> float:
        """Copying ``pages`` pages out (a checkpoint's or a snapshot's data)."""
        return float(self.costs.copy_ns(pages * PAGE_SIZE))
