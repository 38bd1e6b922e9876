"""The memory-management model: Linux anonymous memory under copy-on-write.

Start at :class:`~cowsim.sim.kernel.kernel.Kernel`, which holds the state and
offers the operations; :mod:`~cowsim.sim.kernel.generations` says which rules
each kernel version follows.  One module per piece of kernel code:

=============  ============================================================
pages          physical frames: refcount, mapcount, flags, content
mm             processes, VMAs and page tables (Pte bits, queries)
lru            per-CPU LRU-add batches and the reference they hold
vmfault        struct vm_fault; what faults did (FaultReport)
fault          handle_pte_fault, do_anonymous_page, do_wp_page, unshare
swap           MADV_PAGEOUT, swap cache, do_swap_page
fork           dup_mmap / copy_pte_range, early copy of pinned pages
gup            FOLL_GET / FOLL_PIN references, pipes, devices (DMA)
protect        mprotect and userfaultfd write-protect
madvise        madvise advice and zapping (munmap, exit, DONTNEED)
proc           clear_refs (soft-dirty) and pagemap
oracles        leak, pin_diverged, stale_pin
=============  ============================================================
"""

from cowsim.sim.errors import CapacityError, KernelOpError, KernelVersionError
from cowsim.sim.kernel.generations import ERAS, WHAT_IFS, Generation, all_generations, generation_for
from cowsim.sim.kernel.kernel import Kernel, TlbFlush
from cowsim.sim.kernel.mm import VMA, Prot, Pte
from cowsim.sim.kernel.oracles import Violation
from cowsim.sim.kernel.vmfault import FaultFlags, FaultReport, VmFault

__all__ = [
    "ERAS",
    "VMA",
    "WHAT_IFS",
    "CapacityError",
    "FaultFlags",
    "FaultReport",
    "Generation",
    "Kernel",
    "KernelOpError",
    "KernelVersionError",
    "Prot",
    "Pte",
    "TlbFlush",
    "Violation",
    "VmFault",
    "all_generations",
    "generation_for",
]
