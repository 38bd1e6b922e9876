"""Budgets: refusing, before anything runs, what could not finish here.

A valid scenario or spec may still be too big: 256 GiB pinned eight times
needs 6 GiB of reference bookkeeping; ``duration: 1000h`` at a 1 ms tick is
3.6 billion simulated events.  Rather than die in numpy or run for a week,
cowsim estimates up front what a run needs and refuses it with
:class:`~cowsim.sim.errors.BudgetExceeded` — the estimate and the limit in
the message, the field that drives it in the path.

What is estimated (an :class:`Estimate`, a sum of :class:`Cost` items, one
per thing that costs: a region, a held reference, a workload):

* **model memory**: page tables (:data:`BYTES_PER_PTE` per entry, for every
  process and every child a fork creates), frames (:data:`BYTES_PER_FRAME`,
  twice while the frame arrays grow), references held by GUP, pins,
  vmsplice, O_DIRECT and io_uring (:data:`BYTES_PER_HELD_PAGE`), and the
  transient index arrays one operation on the largest region needs
  (:data:`TRANSIENT_BYTES_PER_PAGE`, measured), plus per-tick batches;
* **frames**: an upper bound on the page frames in use at once.  It is the
  ``max_frames`` a run's kernel model is then given, so an accepted input can
  never hit :class:`~cowsim.sim.errors.CapacityError` halfway through;
* **work**: simulated events (ticks, I/Os, forks, walks) and pages touched
  (requests × pages each, fork/exit/checkpoint/sampler walks × resident pages);
* **batch**: the largest per-tick array (requests or transfers of one tick ×
  their pages).

The limits are a :class:`Budget`.  Its memory limit is the least of the
caller's, half of physical memory, and what this process may still allocate
(``RLIMIT_AS`` and ``RLIMIT_DATA`` less what it already uses, a cgroup's
``memory.max`` less its ``memory.current``).  Defaults accept every example
and the 64 GiB, 60 s benchmark; a server passes tighter ones, and
environment variables override the defaults:

=========================  =======================================  ===========
variable                   field                                    default
=========================  =======================================  ===========
``COWSIM_MAX_MEMORY``      ``max_memory_bytes`` (``"2GiB"``)        the machine
``COWSIM_MAX_FRAMES``      ``max_frames``                           2**27
``COWSIM_MAX_EVENTS``      ``max_events``                           10**8
``COWSIM_MAX_PAGE_TOUCHES``  ``max_page_touches``                   2·10**10
``COWSIM_MAX_BATCH``       ``max_batch_elements``                   2**24
=========================  =======================================  ===========
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from cowsim.sim.errors import BudgetExceeded, InvalidInput, PathPart
from cowsim.sim.units import format_bytes, parse_bytes, parse_count

__all__ = [
    "BYTES_PER_FRAME",
    "BYTES_PER_HELD_PAGE",
    "BYTES_PER_PTE",
    "DEFAULT_MAX_FRAMES",
    "ENVIRONMENT",
    "TRANSIENT_BYTES_PER_PAGE",
    "Budget",
    "Cost",
    "Estimate",
    "approx_count",
    "available_memory_bytes",
]

BYTES_PER_PTE = 6
"""A page-table entry: frame number (int32) and PTE bits (uint16)."""
BYTES_PER_FRAME = 13
"""A frame: refcount, mapcount, content (int32 each) and flags (uint8); 4 more with swap."""
BYTES_PER_HELD_PAGE = 12
"""A page held by a reference: its page index (int64) and frame (int32)."""
TRANSIENT_BYTES_PER_PAGE = 64
"""Temporary arrays of one operation (fork, a write, clear_refs, pagemap) over a region,
per page: measured peaks are 30–60 bytes above the steady state."""
DEFAULT_MAX_FRAMES = 1 << 27
"""The kernel model's frame limit: 128 Mi frames, 512 GiB of simulated memory."""
FIXED_OVERHEAD_BYTES = 32 << 20
"""Interpreter-side bookkeeping of a run (metrics, simpy, Python objects)."""

ENVIRONMENT: dict[str, str] = {
    "max_memory_bytes": "COWSIM_MAX_MEMORY",
    "max_frames": "COWSIM_MAX_FRAMES",
    "max_events": "COWSIM_MAX_EVENTS",
    "max_page_touches": "COWSIM_MAX_PAGE_TOUCHES",
    "max_batch_elements": "COWSIM_MAX_BATCH",
}
"""Budget field → the environment variable that overrides its default."""


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read(64).strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _status_bytes(key: str) -> int | None:
    """A ``kB`` line of /proc/self/status (``VmSize``, ``VmData``) in bytes."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """memory.max − memory.current of this process's cgroup v2 (or v1's limit), if set."""
    try:
        with open("/proc/self/cgroup", encoding="ascii", errors="replace") as handle:
            lines = handle.read(65536).splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            base = "/sys/fs/cgroup" + path.rstrip("/")
            limit, used = _read_int(base + "/memory.max"), _read_int(base + "/memory.current")
        elif "memory" in controllers.split(","):
            base = "/sys/fs/cgroup/memory" + path.rstrip("/")
            limit = _read_int(base + "/memory.limit_in_bytes")
            used = _read_int(base + "/memory.usage_in_bytes")
        else:
            continue
        if limit is not None and limit < 1 << 60:
            return max(0, limit - (used or 0))
    return None


def _rlimit_available(which: int, used_key: str) -> int | None:
    try:
        soft, _hard = resource.getrlimit(which)
    except (OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    return max(0, soft - (_status_bytes(used_key) or 0))


def available_memory_bytes() -> int:
    """What a run may use here: the least of half the physical memory, RLIMIT_AS less the
    address space in use, RLIMIT_DATA less the data segment, a cgroup's limit less its use."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 32 << 30
    candidates = [physical // 2]
    for available in (_rlimit_available(resource.RLIMIT_AS, "VmSize"),
                      _rlimit_available(resource.RLIMIT_DATA, "VmData"),
                      _cgroup_available()):
        if available is not None:
            candidates.append(available)
    return min(candidates)


@dataclass(frozen=True)
class Cost:
    """What one part of an input costs: memory, frames, events, pages touched, its batch."""

    path: tuple[PathPart, ...]
    """The field that drives this cost (``processes[0].workloads[0]``, ``steps[3]``)."""
    what: str
    """For the message: ``"forking_server: 3,600,000,000 ticks of 1 ms"``."""
    memory_bytes: float = 0
    frames: float = 0
    events: float = 0
    page_touches: float = 0
    batch_elements: float = 0


@dataclass
class Estimate:
    """The sum of an input's costs, and which of them weighs most in each dimension."""

    costs: list[Cost] = field(default_factory=list)

    def add(self, cost: Cost) -> None:
        self.costs.append(cost)

    def extend(self, costs: Iterable[Cost]) -> None:
        self.costs.extend(costs)

    def total(self, dimension: str) -> float:
        values = [getattr(cost, dimension) for cost in self.costs]
        if dimension == "batch_elements":
            return max(values, default=0.0)
        return math.fsum(values)

    @property
    def memory_bytes(self) -> int:
        return _ceil(self.total("memory_bytes") + FIXED_OVERHEAD_BYTES)

    @property
    def frames(self) -> int:
        """The upper bound on frames in use at once (the zero page included)."""
        return _ceil(self.total("frames")) + 1

    @property
    def events(self) -> int:
        return _ceil(self.total("events"))

    @property
    def page_touches(self) -> int:
        return _ceil(self.total("page_touches"))

    @property
    def batch_elements(self) -> int:
        return _ceil(self.total("batch_elements"))

    def heaviest(self, dimension: str) -> Cost | None:
        return max(self.costs, key=lambda cost: getattr(cost, dimension), default=None)

    def summary(self) -> dict[str, int]:
        return {"memory_bytes": self.memory_bytes, "frames": self.frames, "events": self.events,
                "page_touches": self.page_touches, "batch_elements": self.batch_elements}


def _ceil(value: float) -> int:
    if not math.isfinite(value):
        return 1 << 62
    return min(1 << 62, math.ceil(value))


def approx_count(value: float) -> str:
    """A count for messages: ``12,345`` below a million, else ``3.6e9``."""
    if value >= 1e6:
        return f"{value:.3g}".replace("e+0", "e").replace("e+", "e")
    return f"{value:,.0f}"


@dataclass(frozen=True)
class Budget:
    """The limits a run must fit.  ``None`` memory: what this machine and process allow."""

    max_memory_bytes: int | None = None
    max_frames: int = DEFAULT_MAX_FRAMES
    max_events: int = 100_000_000
    max_page_touches: int = 20_000_000_000
    max_batch_elements: int = 1 << 24
    profile_files: bool = True
    """Whether a spec's ``machine.profile`` may name a file (``host.yaml``, from ``cowsim
    calibrate``).  A server sets False: a spec from the network must not make it read its
    own disk.  (The stricter of two budgets is the one without: ``min(True, False)``.)"""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, base: Budget | None = None) -> Budget:
        """``base`` (the defaults) with the ``COWSIM_MAX_*`` variables that are set applied.
        A malformed value is an :class:`InvalidInput` naming the variable."""
        env = os.environ if environ is None else environ
        budget = base if base is not None else cls()
        changes: dict[str, Any] = {}  # int limits by name
        for name, variable in ENVIRONMENT.items():
            text = env.get(variable)
            if text is None or not text.strip():
                continue
            try:
                value = parse_bytes(text) if name == "max_memory_bytes" else parse_count(text)
            except ValueError as exc:
                raise InvalidInput(str(exc), source=variable) from None
            if value <= 0:
                raise InvalidInput("must be positive", source=variable)
            changes[name] = value
        return replace(budget, **changes)

    def tightened(self, other: Budget) -> Budget:
        """The stricter of two budgets, limit by limit."""
        values: dict[str, int | None] = {}
        for item in fields(self):
            mine, theirs = getattr(self, item.name), getattr(other, item.name)
            values[item.name] = theirs if mine is None else mine if theirs is None else min(mine, theirs)
        return Budget(**values)  # type: ignore[arg-type]

    def memory_limit_bytes(self) -> int:
        available = available_memory_bytes()
        return available if self.max_memory_bytes is None else min(available, self.max_memory_bytes)

    def check(self, estimate: Estimate, *, source: str | None = None,
              where: Sequence[PathPart] | None = None, memory_limit: int | None = None) -> None:
        """Raise :class:`BudgetExceeded` if ``estimate`` does not fit; the path is ``where`` if
        given, else the field of the heaviest cost of the dimension that does not fit.
        ``memory_limit`` saves reading this process's limits again (see
        :meth:`memory_limit_bytes`)."""
        if memory_limit is None:
            memory_limit = self.memory_limit_bytes()
        frames_text = f"{approx_count(estimate.frames)} page frames " \
                      f"({format_bytes(estimate.frames * 4096)} simulated)"
        checks: tuple[tuple[str, int, int, str, str], ...] = (
            ("memory_bytes", estimate.memory_bytes, memory_limit,
             f"about {format_bytes(estimate.memory_bytes)} of model state",
             f"{format_bytes(memory_limit)} (the least of half the physical memory, this "
             f"process's limits and {ENVIRONMENT['max_memory_bytes']})"),
            ("frames", estimate.frames, self.max_frames, f"up to {frames_text}",
             f"{approx_count(self.max_frames)} frames ({ENVIRONMENT['max_frames']})"),
            ("events", estimate.events, self.max_events,
             f"about {approx_count(estimate.events)} simulated events",
             f"{approx_count(self.max_events)} ({ENVIRONMENT['max_events']})"),
            ("page_touches", estimate.page_touches, self.max_page_touches,
             f"about {approx_count(estimate.page_touches)} page operations",
             f"{approx_count(self.max_page_touches)} ({ENVIRONMENT['max_page_touches']})"),
            ("batch_elements", estimate.batch_elements, self.max_batch_elements,
             f"per-tick arrays of {approx_count(estimate.batch_elements)} elements",
             f"{approx_count(self.max_batch_elements)} ({ENVIRONMENT['max_batch_elements']})"),
        )
        for dimension, value, limit, describe, limit_text in checks:
            if value <= limit:
                continue
            heaviest = estimate.heaviest(dimension)
            path = tuple(where) if where is not None else heaviest.path if heaviest else ()
            detail = f" (mostly {heaviest.what})" if heaviest is not None and heaviest.what else ""
            raise BudgetExceeded(f"needs {describe}{detail}; the limit here is {limit_text}",
                                 path=path, source=source)
