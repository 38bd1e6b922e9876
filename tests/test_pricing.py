"""One pricing path: a write priced page by page from its fault report costs what its counter
deltas cost, and fork, walks and copies are priced from what the kernel did."""

from __future__ import annotations

import numpy as np
import pytest

from cowsim.sim.kernel import Kernel
from cowsim.sim.machine.costs import CostModel
from cowsim.sim.machine.machine import Machine
from cowsim.sim.machine.pricing import Pricing

KERNELS = ["5.4", "5.8", "5.10", "5.15", "5.18", "6.1", "6.8"]


def _priced_write(k: Kernel, machine: Machine, pricing: Pricing, pages: list[int],
                  value: int) -> tuple[float, float]:
    """(per-page prices summed, the call priced from its counter deltas) for one write."""
    before = dict(k.counters)
    with machine.bill(0) as bill:
        report = k.write("p", "heap", pages, value)
    delta = {name: k.counters[name] - before[name] for name in before}
    per_page = float(pricing.page_faults_ns(report.flags, bill.ns).sum())
    return per_page, pricing.call_ns(delta, bill.ns)


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_write_priced_per_page_costs_what_its_counters_cost(kernel: str) -> None:
    machine = Machine(8, CostModel())
    pricing = Pricing(machine.costs)
    k = Kernel(kernel, on_tlb_flush=machine.on_tlb_flush)
    k.mmap("p", "heap", 64)
    machine.place(k.procs["p"].mm, 4)  # threads on 4 CPUs: flushes send IPIs
    k.read("p", "heap", range(40, 48))  # the zero page
    k.write("p", "heap", range(0, 32), 1)
    k.lru_add_drain()
    k.fork("p", "c")
    k.madvise("c", "heap", "pageout", range(56, 64))  # swap entries for the child only
    k.uffd_register("p", "heap")
    k.uffd_wp("p", "heap", range(24, 32), True)
    checked = 0
    for pages in ([0, 1, 2], list(range(3, 20)), [40, 41, 50], list(range(20, 32)), [0, 60]):
        per_page, whole = _priced_write(k, machine, pricing, pages, 7)
        assert per_page == pytest.approx(whole, rel=1e-12)
        checked += per_page > 0
    assert checked == 5


def test_fork_is_the_walk_plus_early_copies_plus_the_shootdown() -> None:
    pricing = Pricing(CostModel())
    costs = pricing.costs
    delta = {"cow_copies": 3, "cow_copies_fork_pinned": 3}
    assert pricing.fork_ns(1000, delta, 1500.0) == pytest.approx(
        costs.fork_fixed_ns + 1000 * costs.fork_per_pte_ns + 3 * costs.copy_ns(4096) + 1500.0)
    assert pricing.clear_refs_ns(10, 5.0) == 10 * costs.clear_refs_per_pte_ns + 5.0
    assert pricing.uffd_writeprotect_ns(10, 0.0) == 10 * costs.uffd_wp_per_pte_ns
    assert pricing.copy_out_ns(2) == pytest.approx(costs.copy_ns(8192))


def test_every_fault_flag_combination_has_a_price() -> None:
    pricing = Pricing(CostModel())
    prices = pricing.page_faults_ns(np.arange(256, dtype=np.uint8))
    assert prices[0] == 0
    assert (prices[1:] >= 0).all()
    assert prices[64] == pytest.approx(pricing.costs.cow_fault_ns())  # COW_COPY
    assert prices[32] == pricing.costs.wp_reuse_fault_ns  # WP_REUSE
