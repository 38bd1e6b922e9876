"""Timing the host kernel: small probes whose results the cost model's parameters are fit to.

Every probe is pure Python over ``libc`` (``mmap``, ``madvise``, ``mprotect``, ``munmap``
through :mod:`ctypes`), :func:`os.fork` and numpy, which writes one byte per page in a C
loop (``view[::4096] = v``) so that the interpreter adds about a nanosecond per page to
a fault that costs a microsecond.  What each probe times:

* **fork** — :func:`time.perf_counter_ns` around ``os.fork()`` in the parent, the child
  calling ``os._exit(0)`` at once, with a region of written anonymous memory of growing
  size; the x value is the process's *own* anonymous resident pages (``RssAnon``, and
  ``AnonHugePages`` for THP) just before the fork, so the interpreter's pages are counted
  instead of being folded into the fixed cost.  The time from the fork's return to
  ``waitpid`` is kept too (the child's exit and reaping).
* **faults** — first touch of fresh 4 KiB pages (``MADV_NOHUGEPAGE``); COW faults: the
  parent writes half the pages of a region while a forked child holds them; reuse faults:
  once the child has exited, the parent writes the other half, still write-protected since
  the fork but now exclusive; a THP's first write after fork (split + 4 KiB COW).  Each is
  net of the time the same loop takes over pages that no longer fault.
* **bandwidth** — numpy copy and memset over buffers larger than the caches, and the
  kernel's own clearing through THP first-touch faults (2 MiB zeroed per fault).
* **walks** — ``mprotect`` RO then RW over written pages, and reading their
  ``/proc/self/pagemap`` entries.
* **remote TLB flush** — one thread pinned on one CPU unmapping and refaulting a page
  (``MADV_DONTNEED``) while another thread of the process runs numpy on a second CPU,
  against the same loop with no second thread: the difference is one shootdown.

Every measurement is repeated (:class:`ProbePlan` ``.reps``); nothing is averaged here,
the fit (:mod:`cowsim.clients.calibrate_fit`) takes medians and spreads.

Cleanliness: every child is forked with SIGINT blocked until its pid is recorded,
:class:`Children` kills (SIGKILL) and reaps whatever is left on the way out of
:func:`run_probes` — Ctrl-C included — and a child holding pages waits on a pipe, so it
exits by itself when its parent dies.  Threads are joined, mappings unmapped.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from cowsim.clients.calibrate_fit import ForkPoint, Measurements

__all__ = ["Children", "ProbePlan", "Region", "run_probes"]

PAGE = 4096
THP = 2 << 20
_MiB = 1 << 20

_PROT_READ, _PROT_WRITE = 0x1, 0x2
_MAP_PRIVATE, _MAP_ANONYMOUS = 0x02, 0x20
_MADV_DONTNEED, _MADV_HUGEPAGE, _MADV_NOHUGEPAGE = 4, 14, 15
_MAP_FAILED = ctypes.c_void_p(-1).value

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
for _name in ("munmap", "madvise", "mprotect"):
    getattr(_libc, _name).restype = ctypes.c_int
    getattr(_libc, _name).argtypes = ([ctypes.c_void_p, ctypes.c_size_t] if _name == "munmap"
                                      else [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int])


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


@dataclass(frozen=True)
class ProbePlan:
    """How much each probe does: ``quick`` finishes in seconds, the full run in well under
    a minute, both bounded in memory by the largest fork size."""

    fork_sizes: tuple[int, ...]
    """Bytes of written anonymous memory the fork probe forks with."""
    reps: int
    fault_pages: int
    thp_faults: int
    bandwidth_bytes: int
    walk_pages: int
    shootdown_iters: int

    @classmethod
    def quick(cls) -> ProbePlan:
        return cls(fork_sizes=(0, 32 * _MiB, 64 * _MiB, 128 * _MiB), reps=5, fault_pages=4096,
                   thp_faults=8, bandwidth_bytes=64 * _MiB, walk_pages=8192,
                   shootdown_iters=400)

    @classmethod
    def full(cls) -> ProbePlan:
        return cls(fork_sizes=(0, 64 * _MiB, 256 * _MiB, 1 << 30), reps=7, fault_pages=32768,
                   thp_faults=32, bandwidth_bytes=256 * _MiB, walk_pages=65536,
                   shootdown_iters=2000)

    def fitted_to(self, available_bytes: int | None) -> tuple[ProbePlan, str | None]:
        """The plan with fork sizes over a quarter of the available memory dropped."""
        if available_bytes is None:
            return self, None
        limit = available_bytes // 4
        sizes = tuple(size for size in self.fork_sizes if size <= limit)
        if sizes == self.fork_sizes:
            return self, None
        dropped = ", ".join(f"{size >> 20} MiB" for size in self.fork_sizes if size > limit)
        plan = ProbePlan(sizes or (0,), self.reps, self.fault_pages, self.thp_faults,
                         min(self.bandwidth_bytes, max(limit // 2, 8 * _MiB)),
                         self.walk_pages, self.shootdown_iters)
        return plan, f"fork sizes {dropped} skipped: over a quarter of the available memory"


class Region:
    """A private anonymous mapping (libc ``mmap``), 2 MiB-aligned, with a numpy view.

    ``huge`` asks ``MADV_HUGEPAGE`` (True) or ``MADV_NOHUGEPAGE`` (False) before anything
    is touched.  :meth:`close` unmaps it; use it as a context manager.
    """

    def __init__(self, size: int, *, huge: bool) -> None:
        self.size = max(PAGE, -(-size // THP) * THP)
        self._length = self.size + THP
        raw = _libc.mmap(None, self._length, _PROT_READ | _PROT_WRITE,
                         _MAP_PRIVATE | _MAP_ANONYMOUS, -1, 0)
        if raw is None or raw == _MAP_FAILED:
            code = ctypes.get_errno()
            raise OSError(code, f"mmap of {self._length >> 20} MiB: {os.strerror(code)}")
        self._raw = int(raw)
        self.address = -(-self._raw // THP) * THP
        _check(_libc.madvise(self.address, self.size,
                             _MADV_HUGEPAGE if huge else _MADV_NOHUGEPAGE), "madvise")
        buffer = (ctypes.c_uint8 * self.size).from_address(self.address)
        self.view: npt.NDArray[np.uint8] = np.ctypeslib.as_array(buffer)

    def pages(self, first: int, last: int, stride: int = PAGE) -> npt.NDArray[np.uint8]:
        """One byte per ``stride`` bytes of pages ``first`` … ``last`` − 1 (a numpy view)."""
        return self.view[first * PAGE:last * PAGE:stride]

    def protect(self, pages: int, writable: bool) -> None:
        prot = _PROT_READ | (_PROT_WRITE if writable else 0)
        _check(_libc.mprotect(self.address, pages * PAGE, prot), "mprotect")

    def discard(self, pages: int) -> None:
        _check(_libc.madvise(self.address, pages * PAGE, _MADV_DONTNEED), "madvise")

    def close(self) -> None:
        if self._raw:
            del self.view
            _libc.munmap(self._raw, self._length)
            self._raw = 0

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Children:
    """Every child forked by the probes; :meth:`reap_all` kills and reaps the rest."""

    def __init__(self) -> None:
        self.pids: set[int] = set()

    def fork(self, hold: tuple[int, int] | None = None) -> tuple[int, int]:
        """Fork a child that exits at once, or (``hold``: a pipe's read and write ends) once
        the parent closes the pipe (or dies).  Returns ``(pid, nanoseconds the parent spent
        in os.fork())``."""
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            start = time.perf_counter_ns()
            pid = os.fork()
            elapsed = time.perf_counter_ns() - start
            if pid == 0:  # the child: never return into the caller's code
                try:
                    if hold is not None:
                        signal.signal(signal.SIGINT, signal.SIG_DFL)
                        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
                        os.close(hold[1])
                        os.read(hold[0], 1)
                finally:
                    os._exit(0)
            self.pids.add(pid)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return pid, elapsed

    def reap(self, pid: int) -> None:
        os.waitpid(pid, 0)
        self.pids.discard(pid)

    def reap_all(self) -> None:
        for pid in list(self.pids):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self.pids.discard(pid)


def _status_kib(name: str, path: str = "/proc/self/status") -> int:
    with open(path) as handle:
        for line in handle:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def _anon_pages() -> tuple[int, int]:
    """This process's anonymous resident memory as (4 KiB PTEs, PMD-mapped THPs)."""
    anon = _status_kib("RssAnon") * 1024
    huge = _status_kib("AnonHugePages", "/proc/self/smaps_rollup") * 1024
    return (anon - huge) // PAGE, huge // THP


@contextmanager
def _quiet() -> Iterator[None]:
    """No garbage collection while timing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _timed(action: Callable[[], object]) -> int:
    start = time.perf_counter_ns()
    action()
    return time.perf_counter_ns() - start


def _write_ns(view: npt.NDArray[np.uint8], value: int) -> int:
    """Nanoseconds to write ``value`` into every byte of ``view`` (one per page)."""
    start = time.perf_counter_ns()
    view[:] = value
    return time.perf_counter_ns() - start


@dataclass
class _Run:
    plan: ProbePlan
    children: Children
    notes: list[str] = field(default_factory=list)
    progress: Callable[[str], None] = lambda _name: None


def _fork_probe(run: _Run, *, huge: bool) -> tuple[list[ForkPoint], list[ForkPoint]]:
    """Fork with each size written; returns (fork points, exit points)."""
    forks: list[ForkPoint] = []
    exits: list[ForkPoint] = []
    sizes = run.plan.fork_sizes
    with Region(max(sizes), huge=huge) as region:
        touched = 0
        for size in sizes:
            pages = size // PAGE
            if pages > touched:
                region.pages(touched, pages)[:] = 1
                touched = pages
            for rep in range(-1, run.plan.reps):  # rep -1 warms up and is not kept
                ptes, pmds = _anon_pages()
                pid, elapsed = run.children.fork()
                start = time.perf_counter_ns()
                run.children.reap(pid)
                waited = time.perf_counter_ns() - start
                if rep < 0:
                    continue
                forks.append(ForkPoint(ptes=ptes, pmds=pmds, ns=float(elapsed), rep=rep))
                exits.append(ForkPoint(ptes=ptes, pmds=pmds, ns=float(waited), rep=rep))
    return forks, exits


def _loop_overhead(region: Region, first: int, last: int) -> float:
    """Nanoseconds per page of the write loop itself, over pages that no longer fault."""
    view = region.pages(first, last)
    best = min(_write_ns(view, 7) for _ in range(3))
    return best / max(1, last - first)


def _fault_probe(run: _Run, m: Measurements) -> None:
    """First-touch, COW and reuse faults on 4 KiB pages."""
    n = run.plan.fault_pages
    half = n // 2
    with Region(n * PAGE, huge=False) as warm:  # let a VM's host back the memory first
        warm.pages(0, n)[:] = 1
    for _rep in range(run.plan.reps):
        with Region(n * PAGE, huge=False) as region:
            view = region.pages(0, n)
            elapsed = _write_ns(view, 1)
            overhead = _loop_overhead(region, 0, n)
            m.first_touch_ns.append(elapsed / n - overhead)
            read, write = os.pipe()
            try:
                pid, _ = run.children.fork(hold=(read, write))
                first = region.pages(0, half)
                cow = _write_ns(first, 2)
            finally:
                os.close(write)
                os.close(read)
            run.children.reap(pid)
            second = region.pages(half, n)
            reuse = _write_ns(second, 2)
            m.cow_ns.append(cow / half - overhead)
            m.reuse_ns.append(reuse / (n - half) - overhead)


def _thp_probe(run: _Run, m: Measurements) -> None:
    """THP first touch (2 MiB cleared per fault) and the first write after fork (split)."""
    count = run.plan.thp_faults
    with Region(count * THP, huge=True) as warm:  # host backing and compaction, not timed
        warm.pages(0, count * THP // PAGE, THP)[:] = 1
    for _rep in range(run.plan.reps):
        with Region(count * THP, huge=True) as region:
            per_thp = region.pages(0, count * THP // PAGE, THP)
            elapsed = _write_ns(per_thp, 1)
            _, pmds = _anon_pages()
            if pmds < count:
                m.thp_skip = (f"only {pmds} of {count} THPs were PMD-mapped (fragmented "
                              "memory or khugepaged settings)")
                return
            m.thp_first_touch_ns.append(elapsed / count)
            read, write = os.pipe()
            try:
                pid, _ = run.children.fork(hold=(read, write))
                split = _write_ns(per_thp, 2)
            finally:
                os.close(write)
                os.close(read)
            run.children.reap(pid)
            m.thp_split_ns.append(split / count)


def _bandwidth_probe(run: _Run, m: Measurements) -> None:
    size = run.plan.bandwidth_bytes
    with Region(size, huge=False) as source, Region(size, huge=False) as target:
        source.view[:] = 3
        target.view[:] = 0
        for _rep in range(run.plan.reps):
            m.copy_bytes_per_s.append(size / _timed(lambda: np.copyto(target.view, source.view))
                                      * 1e9)
            m.memset_bytes_per_s.append(size / _timed(lambda: target.view.fill(0)) * 1e9)


def _walk_probe(run: _Run, m: Measurements) -> None:
    n = run.plan.walk_pages
    with Region(n * PAGE, huge=False) as region:
        region.pages(0, n)[:] = 1
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        try:
            offset = region.address // PAGE * 8
            for _rep in range(run.plan.reps):
                ro = _timed(lambda: region.protect(n, writable=False))
                rw = _timed(lambda: region.protect(n, writable=True))
                m.mprotect_ns.append((ro + rw) / 2 / n)
                m.pagemap_ns.append(_timed(lambda: os.pread(fd, n * 8, offset)) / n)
        finally:
            os.close(fd)


def _shootdown_loop(region: Region, cpu: int, iters: int, out: list[float]) -> None:
    os.sched_setaffinity(0, {cpu})
    page = region.pages(0, 1)
    samples = []
    for _ in range(iters):
        start = time.perf_counter_ns()
        region.discard(1)
        page[0] = 1
        samples.append(time.perf_counter_ns() - start)
    out.append(float(np.median(samples)))


def _spin(cpu: int, stop: threading.Event, started: threading.Event) -> None:
    os.sched_setaffinity(0, {cpu})
    work = np.ones(1 << 18)
    started.set()
    while not stop.is_set():
        work.sum()  # numpy releases the GIL: this thread runs on ``cpu`` in our mm


def _shootdown_probe(run: _Run, m: Measurements) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        m.shootdown_skip = "one CPU available: no remote CPU to flush"
        return
    with Region(PAGE, huge=False) as region:
        region.pages(0, 1)[:] = 1
        for _rep in range(run.plan.reps):
            for remote in (False, True):
                stop, started = threading.Event(), threading.Event()
                spinner = threading.Thread(target=_spin, args=(cpus[1], stop, started),
                                           daemon=True)
                out: list[float] = []
                measurer = threading.Thread(target=_shootdown_loop, daemon=True,
                                            args=(region, cpus[0], run.plan.shootdown_iters, out))
                try:
                    if remote:
                        spinner.start()
                        started.wait()
                    measurer.start()
                    measurer.join()
                finally:
                    stop.set()
                    if remote:
                        spinner.join()
                (m.shootdown_remote_ns if remote else m.shootdown_local_ns).extend(out)


PROBES: tuple[str, ...] = ("fork", "fork-thp", "faults", "thp", "bandwidth", "walks",
                           "shootdown")
"""The probes in the order they run."""


def run_probes(plan: ProbePlan, *, thp: bool, progress: Callable[[str], None] | None = None
               ) -> Measurements:
    """Run every probe (THP ones only if ``thp``); children are reaped whatever happens."""
    m = Measurements(memory_bytes=None)
    run = _Run(plan=plan, children=Children())
    say = progress or (lambda _name: None)
    try:
        with _quiet():
            say("fork")
            m.fork_4k, m.exit_4k = _fork_probe(run, huge=False)
            if thp:
                say("fork-thp")
                m.fork_thp, _ = _fork_probe(run, huge=True)
            else:
                m.thp_skip = "THP is disabled (transparent_hugepage/enabled = never)"
            say("faults")
            _fault_probe(run, m)
            if thp:
                say("thp")
                _thp_probe(run, m)
            say("bandwidth")
            _bandwidth_probe(run, m)
            say("walks")
            _walk_probe(run, m)
            say("shootdown")
            _shootdown_probe(run, m)
    finally:
        run.children.reap_all()
    return m
