"""An incremental checkpointer (CRIU pre-dump style) using soft-dirty tracking.

Every ``interval`` it reads ``/proc/PID/pagemap`` over the target's memory,
copies the pages reported soft-dirty (written since the last round; every
page the first time), then writes 4 to ``/proc/PID/clear_refs``
(write-protecting every PTE and clearing soft-dirty; from 5.11 under the
mmap lock held for writing, so the target's page faults wait).  The next
write to each page takes a write fault, which in 5.9–5.18 copies a page that
an O_DIRECT read still holds: the read is lost.

``checkpoint_duration_seconds`` = pagemap scan + copy of the dirty pages +
clear_refs walk (+ its TLB shootdown), all on the checkpointer's CPU.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np

from cowsim.sim.engine import NS, Simulation
from cowsim.sim.spec import Checkpointer
from cowsim.sim.workloads.registry import register


@register("checkpointer")
def run(sim: Simulation, proc: str, spec: Checkpointer) -> Generator[Any, Any, None]:
    """The simpy process of one checkpointer workload."""
    state = sim.procs[proc]
    target = sim.procs[spec.target]
    cpu = state.cpus[0]
    pricing = sim.pricing
    first = spec.first_at if spec.first_at is not None else spec.interval
    yield sim.env.timeout(first)
    while True:
        now = sim.env.now
        bits = sim.kernel.pagemap(spec.target, target.region)
        dirty = int(np.count_nonzero(bits["soft_dirty"] & bits["present"]))
        scan_s = pricing.pagemap_ns(target.pages) * NS
        copy_s = pricing.copy_out_ns(dirty) * NS
        ptes = sim.private_ptes(spec.target)
        with sim.machine.bill(cpu) as bill:
            sim.call(spec.target, sim.kernel.clear_refs, spec.target, "soft_dirty", cpu=cpu)
        clear_s = pricing.clear_refs_ns(ptes, bill.ns) * NS
        if sim.kernel.gen.clear_refs_write_lock:
            target.mmap_locked_until = max(target.mmap_locked_until, now + clear_s)
        sim.observe("checkpoint_duration_seconds", clear_s + scan_s + copy_s, process=proc)
        sim.recorder.count("checkpoints", process=proc)
        sim.recorder.count("checkpoint_dirty_pages", dirty, process=proc)
        sim.kernel.end_step()
        yield sim.env.timeout(spec.interval)
