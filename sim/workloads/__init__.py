"""Workloads: simpy processes driving the kernel model on the machine.

``forking_server`` (request streams and forks), ``direct_io`` (O_DIRECT reads,
pinned buffers and their device), ``checkpointer`` (clear_refs soft-dirty
tracking) and ``tracker`` (userfaultfd write-protect live snapshots).  Each is
a generator ``run(sim, process_name, spec)``.
"""
