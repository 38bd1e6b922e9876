"""Workloads: simpy processes driving the kernel model on the machine.

``forking_server`` (request streams and forks), ``direct_io`` (O_DIRECT reads,
pinned buffers and their device), ``checkpointer`` (clear_refs soft-dirty
tracking) and ``tracker`` (userfaultfd write-protect live snapshots).  Each
module registers its starter ``run(sim, process_name, spec)`` by kind in
:mod:`~cowsim.sim.workloads.registry`; importing this package registers them all.
"""

from cowsim.sim.workloads import checkpointer, direct_io, forking_server, tracker
from cowsim.sim.workloads.registry import kinds, register, starter

__all__ = ["checkpointer", "direct_io", "forking_server", "kinds", "register", "starter", "tracker"]
