"""A forking server: an open-loop request stream over a resident set, and forks.

Requests arrive as a Poisson stream; each reads or writes a few pages chosen
by the key distribution and is served by one of the process's threads, round
robin (FIFO per CPU: threads placed on the same CPU share it).  The server
forks either periodically for a snapshot child that scans the whole resident
set and exits (Redis BGSAVE), or once per connection for a worker that lives
a while and dirties some pages of its own (a prefork web server, PostgreSQL
backends).

A request's latency = queueing + service + the faults its first writes take
(COW copies while a child shares the page, reuses, TLB shootdowns of the
copies) + TLB misses + stalls behind a fork (which holds the mm's lock for
writing for its whole duration) or another mmap-lock holder (clear_refs).

**Batching.**  Requests are handled one tick (``spec.tick``, 1 ms by
default) at a time: the tick's arrivals are drawn at once, their pages are
written with one vectorized kernel call, and queueing is solved per thread
with the Lindley recursion in closed form::

    finish_i = max(finish_{i-1}, arrival_i) + service_i
             = S_i + max(F, max_{j<=i}(arrival_j - S_{j-1}))      (S = cumsum(service))

so no Python code runs per request.  Within a tick, the first request that
writes a page takes its fault; forks happen at tick boundaries.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import numpy.typing as npt

from cowsim.sim.engine import NS, PAGE_SIZE, Observations, Simulation
from cowsim.sim.spec import ForkingServer
from cowsim.sim.workloads.keys import sample_pages, zipf_pages
from cowsim.sim.workloads.registry import register


def lindley_finish(arrivals: npt.NDArray[np.float64], service: npt.NDArray[np.float64],
                   free_at: float) -> npt.NDArray[np.float64]:
    """Finish times of a FIFO server (arrivals sorted) that becomes free at ``free_at``
    (the formula of the module docstring, computed in place: a tick's arrays are small,
    so each array allocated costs more than the arithmetic)."""
    done = service.cumsum()
    start = arrivals - (done - service)
    np.maximum.accumulate(start, out=start)
    np.maximum(start, free_at, out=start)
    start += done
    return start


def first_occurrences(values: npt.NDArray[np.int64]
                      ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The distinct values, ascending, and where each first occurs: ``np.unique(values,
    return_index=True)`` in four numpy calls (it costs a tick more in dispatch)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.empty(ordered.size, dtype=bool)
    starts[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    return ordered[starts], order[starts]


class Server:
    """One forking server: its request stream, its threads' queues, its forks and children."""

    def __init__(self, sim: Simulation, proc: str, spec: ForkingServer) -> None:
        self.sim, self.proc, self.spec = sim, proc, spec
        self.state = sim.procs[proc]
        self.rng = sim.rng()
        # Threads on the same CPU share it: one FIFO queue per CPU the process uses.
        self.queue_cpus = sorted(set(self.state.cpus))
        self.free_at = np.zeros(len(self.queue_cpus))
        self.next_thread = 0
        self.value = 2
        self.faulted = False
        """Whether the last tick's writes took a fault: then the next tick's are not first
        tried as plain stores (:meth:`Kernel.try_store` would most likely refuse them)."""
        self.children: list[tuple[float, str]] = []  # (exit time, name)
        fork = spec.fork
        self.next_fork = np.inf
        self.connection_rng = sim.rng()
        if fork is not None and fork.mode == "periodic":
            assert fork.every is not None
            self.next_fork = fork.first_at if fork.first_at is not None else fork.every
        self.latencies = Observations(sim, "request_latency_seconds", proc)
        self.fault_latencies = Observations(sim, "fault_latency_seconds", proc)
        self.requests = 0
        """Requests served and not yet counted (the recorder's ``requests`` counter is
        brought up to date by :meth:`flush`, like the observations)."""
        sim.flushers.append(self.flush)

    def flush(self) -> None:
        if self.requests:
            self.sim.recorder.count("requests", self.requests, process=self.proc)
            self.requests = 0

    # -- forks ------------------------------------------------------------------------
    def fork(self, now: float, child_lifetime: float, dirty_pages: int) -> float:
        """fork() at ``now``: returns when the parent's threads can run again."""
        sim, state = self.sim, self.state
        state.children += 1
        child = f"{self.proc}.child{state.children}"
        pause = sim.fork(self.proc, child, cpu=state.cpus[0])
        child_cpus = sim.machine.place(sim.kernel.procs[child].mm, 1)
        if dirty_pages:
            pages = np.unique(sample_pages(self.connection_rng, self.spec.requests.keys,
                                           state.pages, dirty_pages))
            with sim.machine.bill(child_cpus[0]):
                sim.call(child, sim.kernel.write, child, state.region, pages, 0xC0FFEE,
                         cpu=child_cpus[0])
        self.children.append((now + pause + child_lifetime, child))
        self.children.sort()
        return now + pause

    def reap(self, now: float) -> None:
        while self.children and self.children[0][0] <= now:
            _when, child = self.children.pop(0)
            owner = self.sim.kernel.procs[child]
            cpu = min(owner.mm.cpus) if owner.mm.cpus else 0
            with self.sim.machine.bill(cpu):
                self.sim.call(child, self.sim.kernel.exit, child, cpu=cpu)

    # -- one tick of requests ---------------------------------------------------------------
    def tick(self, start: float, length: float) -> None:
        sim, spec, state, rng = self.sim, self.spec.requests, self.state, self.rng
        count = int(rng.poisson(spec.rate * length))
        if count == 0:
            return
        per = spec.pages_per_request
        if spec.keys.distribution == "zipf":
            # The tick's three uniform streams (arrival times, pages, write or read) in one
            # draw: Generator.random fills doubles in sequence, so these are the numbers the
            # three draws one after the other give.
            uniforms = rng.random(count * (per + 2))
            arrivals = uniforms[:count] * length
            pages = zipf_pages(spec.keys, state.pages, uniforms[count : count * (per + 1)])
            writes = uniforms[count * (per + 1) :] < spec.write_fraction
        else:
            arrivals = rng.random(count) * length
            pages = sample_pages(rng, spec.keys, state.pages, count * per)
            writes = rng.random(count) < spec.write_fraction
        arrivals += start
        arrivals.sort()
        pages = pages.reshape(count, per)
        nthreads = len(state.cpus)
        threads = (self.next_thread + np.arange(count)) % nthreads if nthreads > 1 else None
        self.next_thread = (self.next_thread + count) % nthreads
        fault_ns = self._write_faults_ns(pages, writes)
        service_ns = spec.service / NS
        cost_ns = fault_ns + service_ns if fault_ns is not None else np.full(count, service_ns)
        # TLB misses: per thread, the tick's page accesses against that CPU's TLB.
        mm = sim.kernel.procs[self.proc].mm
        walk_ns = sim.costs.tlb_miss_walk_ns
        if threads is None:
            cost_ns += sim.machine.tlb_access(state.cpus[0], mm, count * per) * walk_ns / count
        else:
            for thread, cpu in enumerate(state.cpus):
                mine = threads == thread
                accesses = int(mine.sum()) * per
                if accesses:
                    misses = sim.machine.tlb_access(cpu, mm, accesses)
                    cost_ns[mine] += misses * walk_ns / mine.sum()
        service = cost_ns * NS
        if len(self.queue_cpus) == 1:
            latency = self._queue(0, start, arrivals, service) - arrivals
        else:
            assert threads is not None
            latency = np.empty(count)
            request_cpus = np.asarray(state.cpus)[threads]
            for queue, cpu in enumerate(self.queue_cpus):
                mine = np.flatnonzero(request_cpus == cpu)
                if mine.size:
                    latency[mine] = self._queue(queue, start, arrivals[mine], service[mine]) - arrivals[mine]
        self.latencies.add(latency)
        self.requests += count

    def _queue(self, queue: int, start: float, arrivals: npt.NDArray[np.float64],
               service: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Finish times of one CPU's requests this tick (FIFO after the CPU's earlier work, a
        stall behind the mmap lock, and the IPI handler time the CPU owes)."""
        state, cpu = self.state, self.queue_cpus[queue]
        free_at = max(self.free_at[queue], state.mmap_locked_until
                      if state.mmap_locked_until > start else 0.0)
        owed = self.sim.machine.take_owed(cpu) * NS
        if free_at > start:
            free_at += owed  # IPI handlers steal time from a busy CPU
        finish = lindley_finish(arrivals, service, free_at)
        self.free_at[queue] = finish[-1]
        return finish

    def _write_faults_ns(self, pages: npt.NDArray[np.int64], writes: npt.NDArray[np.bool_]
                         ) -> npt.NDArray[np.float64] | None:
        """Write the pages of the write requests; each request's share of the fault time
        (None: no request took a fault).

        The first request of the tick that writes a page takes that page's faults, priced
        from the kernel's fault report; the shootdowns the copies caused are shared by the
        pages whose faults flushed.
        """
        sim, state = self.sim, self.state
        count, per = pages.shape
        if not np.count_nonzero(writes):
            return None
        occurrences = (pages.reshape(-1)[writes] if per == 1
                       else pages[writes].reshape(-1))  # arrival order
        cpu = state.cpus[0]
        value = self.value
        self.value += 1
        if (sim.shortcuts and not self.faulted
                and sim.kernel.try_store(self.proc, state.region, occurrences, value)):
            return None  # steady state: every page mapped writable and dirty, nothing faults
        unique, first = first_occurrences(occurrences)
        with sim.machine.bill(cpu) as bill:
            report = sim.call_quiet(self.proc, sim.kernel.write, self.proc, state.region, unique,
                                    value, cpu=cpu)
        page_ns = sim.pricing.page_faults_ns(report.flags, bill.ns)
        faulted = page_ns[report.flags != 0]
        self.faulted = faulted.size > 0
        if self.faulted:
            self.fault_latencies.add(faulted * NS)
        owners = np.flatnonzero(writes) if per == 1 else np.repeat(np.flatnonzero(writes), per)
        # Each page's time to the request of its first occurrence (float64: weighted).
        extra = np.bincount(owners[first], weights=page_ns, minlength=count)
        return extra.astype(np.float64, copy=False)


@register("forking_server")
def run(sim: Simulation, proc: str, spec: ForkingServer) -> Generator[Any, Any, None]:
    """The simpy process of one forking-server workload."""
    server = Server(sim, proc, spec)
    tick = sim.spec.tick
    fork = spec.fork
    connections = fork.connections if fork is not None else None
    while True:
        now = sim.env.now
        server.reap(now)
        if fork is not None and fork.mode == "periodic" and now >= server.next_fork:
            lifetime = server.state.pages * PAGE_SIZE / fork.snapshot.scan_rate
            server.fork(now, lifetime, 0)
            assert fork.every is not None
            server.next_fork += fork.every
        if connections is not None:
            for _ in range(int(server.connection_rng.poisson(connections.rate * tick))):
                server.fork(now, connections.lifetime, connections.dirty_pages)
        server.tick(now, tick)
        sim.note_memory()
        yield sim.env.timeout(tick)
