"""A live-snapshot tracker using userfaultfd write-protect (QEMU background snapshot, CRIU).

Every ``interval`` the tracker write-protects all of the target's memory
(UFFDIO_WRITEPROTECT over the region, one walk plus a deferred TLB flush),
then copies it out in the background at the copy bandwidth.  While the copy
runs, each first write of the target to a protected page is a userfault: the
monitor saves the page and un-protects it (the kernel model resolves the
fault and counts ``faults_uffd_wp``; the write pays ``uffd_wp_fault_ns``).
When the copy is done the rest is un-protected.

This is Andrea Arcangeli's second case (kernel-semantics.md §4.5): on 5.9–5.18
un-protecting leaves the PTE read-only, so the retried write goes through
do_wp_page and copies a page a device has pinned; on 6.0+ the un-protect maps
exclusive pages writable again.  An mprotect-based tracker would need
per-page mprotect (VMA splitting), which the model does not have.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from cowsim.sim.engine import NS, Simulation
from cowsim.sim.spec import Tracker
from cowsim.sim.workloads.registry import register


@register("tracker")
def run(sim: Simulation, proc: str, spec: Tracker) -> Generator[Any, Any, None]:
    """The simpy process of one uffd-wp tracker."""
    state = sim.procs[proc]
    target = sim.procs[spec.target]
    cpu = state.cpus[0]
    pricing = sim.pricing
    sim.call(spec.target, sim.kernel.uffd_register, spec.target, target.region)
    yield sim.env.timeout(spec.first_at if spec.first_at is not None else spec.interval)
    while True:
        started = sim.env.now
        with sim.machine.bill(cpu) as bill:
            sim.call(spec.target, sim.kernel.uffd_wp, spec.target, target.region, None, True,
                     cpu=cpu)
        protect_s = pricing.uffd_writeprotect_ns(target.pages, bill.ns) * NS
        copy_s = pricing.copy_out_ns(target.pages) * NS
        yield sim.env.timeout(protect_s + copy_s)
        with sim.machine.bill(cpu):
            sim.call(spec.target, sim.kernel.uffd_wp, spec.target, target.region, None, False,
                     cpu=cpu)
        sim.kernel.end_step()
        sim.observe("snapshot_duration_seconds", sim.env.now - started, process=proc)
        sim.recorder.count("snapshots", process=proc)
        yield sim.env.timeout(max(0.0, spec.interval - (sim.env.now - started)))
