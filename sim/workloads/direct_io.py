"""Direct I/O against a buffer: O_DIRECT reads in flight, or a long-term pinned buffer.

**odirect** mode: ``iodepth`` reads are always in flight, each into its own
block of the buffer.  Issuing one takes GUP references on its pages (FOLL_GET
before 6.4, FOLL_PIN from 6.4, with FOLL_WRITE); the device's data lands at
completion (the DMA goes to the frames the references hold), the references
are dropped, and the process reads what arrived.  If the process maps a
different frame by then (a COW after clear_refs or swap), the read is
**lost**: ``dma_lost_writes``.  With ``write_during_io`` another thread
writes the same page while the I/O is in flight (Andrea Arcangeli's
reproducer writes the other end of the page).

**pinned** mode: the whole buffer is registered once (io_uring fixed buffers,
an RDMA memory region: FOLL_PIN|FOLL_WRITE|FOLL_LONGTERM) and a device
transfers blocks at ``dma_rate``: half of the transfers write into memory
(the process must then see the data, else ``dma_lost_writes``), half read
what the process just wrote (else ``stale_pin_reads``).  With ``fork_every``
the process forks a short-lived helper (exec'd at once), which on kernels
without the 5.9 early copy write-protects the pinned pages.

Events (issue, concurrent write, completion) are processed in time order, one
kernel call per event, each on whole blocks of pages.
"""

from __future__ import annotations

import heapq
from collections.abc import Generator
from typing import Any

import numpy as np

from cowsim.sim.engine import NS, PAGE_SIZE, Simulation
from cowsim.sim.spec import DirectIO
from cowsim.sim.workloads.registry import register

_VALUE_MASK = 0xFFFFFFFF


class _DirectIO:
    def __init__(self, sim: Simulation, proc: str, spec: DirectIO) -> None:
        self.sim, self.proc, self.spec = sim, proc, spec
        self.state = sim.procs[proc]
        self.rng = sim.rng()
        self.block_pages = max(1, spec.block // PAGE_SIZE)
        buffer_pages = min(self.state.pages, max(1, spec.buffer // PAGE_SIZE))
        self.blocks = max(1, buffer_pages // self.block_pages)
        self.cpu = self.state.cpus[-1]
        self.events: list[tuple[float, int, str, int]] = []
        self.sequence = 0
        self.issued = 0
        self.values: dict[int, int] = {}
        self.issue_time: dict[int, float] = {}
        self.fixed_id = f"{proc}.fixed"
        """The id the pinned buffer (io_uring fixed buffers, an RDMA region) is held under."""

    def pages(self, block: int) -> np.ndarray:
        start = (block % self.blocks) * self.block_pages
        return np.arange(start, start + self.block_pages, dtype=np.int64)

    def latency(self) -> float:
        spec = self.spec
        if spec.latency_distribution == "fixed":
            return spec.device_latency
        if spec.latency_distribution == "exponential":
            return float(self.rng.exponential(spec.device_latency))
        sigma = spec.latency_sigma
        return float(self.rng.lognormal(np.log(spec.device_latency) - sigma**2 / 2, sigma))

    def push(self, when: float, kind: str, io: int) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (when, self.sequence, kind, io))

    def call(self, operation: Any, *args: Any) -> tuple[Any, float]:
        """A kernel call on the I/O thread's CPU: its result and its price in ns."""
        sim = self.sim
        with sim.machine.bill(self.cpu) as bill:
            result, delta = sim.call(self.proc, operation, *args, cpu=self.cpu)
        return result, sim.pricing.call_ns(delta, bill.ns)

    def ref_id(self, io: int) -> str:
        """The id an I/O's references are held under (ids are global: name them per process)."""
        return f"{self.proc}.dio{io}"

    # -- odirect ---------------------------------------------------------------------
    def issue(self, now: float) -> None:
        io = self.issued
        self.issued += 1
        sim = self.sim
        _result, gup_ns = self.call(sim.kernel.odirect_read, self.proc, self.state.region,
                                    self.pages(io), self.ref_id(io))
        start = max(now, self.state.mmap_locked_until)  # GUP takes the mmap lock for reading
        self.issue_time[io] = now
        done = start + gup_ns * NS + self.latency()
        self.values[io] = (0x10000 + io) & _VALUE_MASK
        if self.spec.write_during_io and self.rng.random() < self.spec.write_during_io:
            self.push(now + (done - now) * float(self.rng.random()), "write", io)
        self.push(done, "complete", io)

    def write(self, io: int) -> None:
        self.call(self.sim.kernel.write, self.proc, self.state.region, self.pages(io)[-1:],
                  (0x20000000 + io) & _VALUE_MASK)

    def complete(self, now: float, io: int) -> None:
        sim, value, ref = self.sim, self.values.pop(io), self.ref_id(io)
        sim.kernel.end_step([ref])  # did the pages move away from the I/O before it landed?
        sim.kernel.dma_write(ref, value)
        sim.call(self.proc, sim.kernel.release, ref)
        seen = sim.kernel.peek(self.proc, self.state.region, self.pages(io))
        if np.count_nonzero(seen != value):
            sim.recorder.count("dma_lost_writes", process=self.proc)
        sim.recorder.count("io_completed", process=self.proc)
        sim.observe("io_latency_seconds", now - self.issue_time.pop(io), process=self.proc)

    # -- pinned ------------------------------------------------------------------------
    def transfers(self, count: int) -> None:
        """``count`` device transfers on random blocks of the pinned buffer, half in each
        direction: the process writes then the device reads, and the device writes then
        the process reads; checked against the frames the pin holds."""
        if count == 0:
            return
        sim, kernel = self.sim, self.sim.kernel
        fixed = self.fixed_id
        blocks = self.rng.integers(0, self.blocks, size=count)
        inbound = self.rng.random(count) < 0.5
        offsets = np.arange(self.block_pages)
        value = (0x30000000 + self.issued) & _VALUE_MASK
        self.issued += 1
        for direction in (False, True):
            chosen = blocks[inbound == direction]
            if chosen.size == 0:
                continue
            pages = (chosen[:, None] * self.block_pages + offsets).reshape(-1)
            unique = np.unique(pages)
            if direction:
                # Device → memory: DMA into the held frames; the process reads its pages.
                kernel.dma_write(fixed, value, pages=unique)
                seen_unique = kernel.peek(self.proc, self.state.region, unique)
                seen = seen_unique[np.searchsorted(unique, pages)].reshape(chosen.size, -1)
                lost = int((seen != value).any(axis=1).sum())
                sim.recorder.count("dma_lost_writes", lost, process=self.proc)
            else:
                # Memory → device: the process writes, the device reads the held frames.
                self.call(kernel.write, self.proc, self.state.region, unique, value)
                device_saw = kernel.dma_read(fixed, pages=unique)
                held = device_saw[np.searchsorted(unique, pages)].reshape(chosen.size, -1)
                stale = int((held != value).any(axis=1).sum())
                sim.recorder.count("stale_pin_reads", stale, process=self.proc)
        sim.recorder.count("dma_transfers", count, process=self.proc)


@register("direct_io")
def run(sim: Simulation, proc: str, spec: DirectIO) -> Generator[Any, Any, None]:
    """The simpy process of one direct-I/O workload."""
    io = _DirectIO(sim, proc, spec)
    tick = sim.spec.tick
    if spec.mode == "pinned":
        yield from _run_pinned(sim, io, spec, tick)
        return
    for _ in range(min(spec.iodepth, io.blocks)):
        io.issue(sim.env.now)
    while True:
        end = sim.env.now + tick
        while io.events and io.events[0][0] < end:
            when, _seq, kind, number = heapq.heappop(io.events)
            if kind == "write":
                io.write(number)
            else:
                io.complete(when, number)
                io.issue(when)
        sim.kernel.end_step()
        yield sim.env.timeout(tick)


def _run_pinned(sim: Simulation, io: _DirectIO, spec: DirectIO, tick: float
                ) -> Generator[Any, Any, None]:
    kernel = sim.kernel
    pages = np.arange(io.blocks * io.block_pages, dtype=np.int64)
    io.call(kernel.io_uring_register, io.proc, io.state.region, pages, io.fixed_id)
    sim.recorder.count("pinned_pages", int(pages.size), process=io.proc)
    rate = spec.dma_rate or 1000.0
    next_fork = spec.fork_every if spec.fork_every else np.inf
    helpers = 0
    alive: list[str] = []
    while True:
        now = sim.env.now
        for helper in alive:  # a helper lives one tick, then execs (its mm goes away)
            with sim.machine.bill(io.cpu):
                sim.call(helper, kernel.exit, helper, cpu=io.cpu)
        alive.clear()
        if now >= next_fork:
            helpers += 1
            alive.append(f"{io.proc}.helper{helpers}")
            sim.fork(io.proc, alive[-1], cpu=io.cpu)
            assert spec.fork_every is not None
            next_fork += spec.fork_every
        io.transfers(int(io.rng.poisson(rate * tick)))
        kernel.end_step()
        yield sim.env.timeout(tick)
