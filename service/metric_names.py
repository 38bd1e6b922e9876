"""The simulation's metric families: names, help and label vocabularies, in one place.

Two writers produce them: the live exporter (:mod:`cowsim.service.metrics`, a scrape
of what a server's runs do now) and the backfill export
(:mod:`cowsim.clients.openmetrics`, one run's history with timestamps).  The same
PromQL must work on both, so both take the names from here.  Pure data: no
prometheus_client, nothing that runs.
"""

from __future__ import annotations

from cowsim import sim

__all__ = ["COUNTER_HELP", "COW_CAUSES", "FAULT_TYPES", "SIM_HISTOGRAMS", "TLB_COUNTERS",
           "VIOLATION_KINDS", "WORKLOAD_VIOLATIONS"]

SIM_HISTOGRAMS = {
    "request_latency_seconds": "Latency of the simulated requests (simulated seconds).",
    "fault_latency_seconds": "Latency of page faults (simulated seconds).",
    "fork_pause_seconds": "Time a process stood still in fork() (simulated seconds).",
    "checkpoint_duration_seconds": "Duration of a checkpoint's clear_refs and scan "
                                   "(simulated seconds).",
    "io_latency_seconds": "Latency of direct I/O requests (simulated seconds).",
    "snapshot_duration_seconds": "Duration of a snapshot's scan (simulated seconds).",
}
"""The run contract's histograms (ProgressEvent.histograms), exported as ``cowsim_<name>``."""

COUNTER_HELP = {
    "cowsim_cow_copies_total": "Pages copied to break copy-on-write sharing, by why the page "
                               "was read-only.",
    "cowsim_wp_reuses_total": "Write faults that reused the page instead of copying it "
                              "(pgreuse).",
    "cowsim_page_faults_total": "Page faults handled, by type.",
    "cowsim_violations_total": "Correctness violations: leaks across fork, pins that diverged "
                               "or went stale, DMA writes lost, stale pin reads.",
}
"""Help of the labelled simulation counters."""

# The label vocabularies the series are created with (the library's kernel counter names);
# a value not listed still shows up when it first moves.
COW_CAUSES = sim.COW_CAUSES
FAULT_TYPES = sim.FAULT_TYPES
VIOLATION_KINDS = (*sim.VIOLATION_KINDS, "dma_lost_write", "stale_pin_read")
WORKLOAD_VIOLATIONS = {"dma_lost_writes": "dma_lost_write", "stale_pin_reads": "stale_pin_read"}
"""Counters of the workloads that are violations too, and their ``kind``."""
TLB_COUNTERS = {
    "tlb_shootdowns": ("cowsim_tlb_shootdowns_total",
                       "TLB shootdowns: flushes that had to reach other CPUs."),
    "tlb_ipis": ("cowsim_tlb_ipis_total", "Inter-processor interrupts sent for TLB shootdowns."),
    "tlb_misses": ("cowsim_tlb_misses_total", "TLB misses the machine model charged."),
}
"""Machine counters: progress-event name → (metric, help)."""
