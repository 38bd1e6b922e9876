"""Fitting the cost model's parameters to host measurements: pure arithmetic, no OS access.

:mod:`cowsim.clients.host_probes` fills a :class:`Measurements`; :func:`fit` turns it into
one :class:`Estimate` per ``CostModel`` field, each with its spread over the repetitions,
composed exactly as the model composes its costs (docs/cost-model.md, ``CostModel``):

* fork: ``fork_ns = fork_fixed_ns + ptes × fork_per_pte_ns + pmds × fork_per_pmd_ns``, a
  least-squares line of fork time against the process's anonymous 4 KiB PTEs; THP forks
  then give ``fork_per_pmd_ns`` as the slope of what the line leaves against PMDs.  The
  exit and reaping time gets its own line (``exit_fixed_ns``, ``exit_per_pte_ns``).
* first touch: a 4 KiB fault is ``anon_fault_ns + 4096 × z`` and a THP fault
  ``anon_fault_ns + 2 MiB × z`` (z = 1 / ``page_zero_bytes_per_s``): two equations, so the
  kernel's own clearing rate comes out of its faults; without THP, numpy's memset rate.
* COW: ``cow_fault_fixed_ns`` = the COW fault − copying 4 KiB at the measured copy rate;
  ``thp_split_ns`` = a THP's first write after fork − a 4 KiB COW fault;
  ``wp_reuse_fault_ns`` = the reuse fault as measured.
* walks: ``mprotect_per_pte_ns`` and ``pagemap_per_page_ns`` as measured per page.
* shootdown: ``ipi_base_ns`` = the unmap-and-refault loop with a thread on a second CPU −
  the same loop alone, per repetition.

A derived value is computed per repetition and then summarized (median, median absolute
deviation, min, max), so its spread is the spread of what was measured; a fit's spread is
that of the same fit done on each repetition alone.  Values the arithmetic would make
negative (noise larger than the quantity) are clamped at 0 and say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["Estimate", "Fit", "ForkPoint", "Measurements", "base_profile", "fit", "fork_check",
           "fork_ns", "summarize"]

PAGE = 4096
THP = 2 << 20
PAGES_PER_GIB = (1 << 30) // PAGE


@dataclass(frozen=True)
class ForkPoint:
    """One timed fork (or exit): the process's anonymous 4 KiB PTEs and PMD-mapped THPs
    at the time, the nanoseconds it took, and which repetition it belongs to."""

    ptes: int
    pmds: int
    ns: float
    rep: int


@dataclass
class Measurements:
    """Raw samples, one per repetition (per-page figures in ns per page)."""

    memory_bytes: int | None
    fork_4k: list[ForkPoint] = field(default_factory=list)
    exit_4k: list[ForkPoint] = field(default_factory=list)
    fork_thp: list[ForkPoint] = field(default_factory=list)
    first_touch_ns: list[float] = field(default_factory=list)
    cow_ns: list[float] = field(default_factory=list)
    reuse_ns: list[float] = field(default_factory=list)
    thp_first_touch_ns: list[float] = field(default_factory=list)
    thp_split_ns: list[float] = field(default_factory=list)
    thp_skip: str | None = None
    copy_bytes_per_s: list[float] = field(default_factory=list)
    memset_bytes_per_s: list[float] = field(default_factory=list)
    mprotect_ns: list[float] = field(default_factory=list)
    pagemap_ns: list[float] = field(default_factory=list)
    shootdown_local_ns: list[float] = field(default_factory=list)
    shootdown_remote_ns: list[float] = field(default_factory=list)
    shootdown_skip: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Every sample, JSON-able."""
        return asdict(self)


@dataclass(frozen=True)
class Estimate:
    """A fitted parameter: its value and the spread over repetitions."""

    value: float
    median: float
    mad: float
    """Median absolute deviation of the per-repetition values."""
    low: float
    high: float
    n: int
    how: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Fit:
    """The fitted parameters (CostModel field → estimate) and what could not be fitted."""

    params: dict[str, Estimate]
    skipped: dict[str, str]

    def costs(self) -> dict[str, float]:
        """The values, as a profile's ``costs`` mapping."""
        return {name: estimate.value for name, estimate in self.params.items()}


def summarize(values: Sequence[float], how: str, *, value: float | None = None,
              floor: float = 0.0) -> Estimate:
    """Median, MAD, min and max of ``values``; the estimate is ``value`` (a fit over all
    samples) or the median, clamped at ``floor`` (said in ``how``)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError(f"no samples for {how}")
    median = float(np.median(data))
    chosen = median if value is None else value
    if chosen < floor:
        how += f" (clamped: the measurement gave {chosen:.4g})"
        chosen = floor
    return Estimate(value=chosen, median=median, mad=float(np.median(np.abs(data - median))),
                    low=float(data.min()), high=float(data.max()), n=int(data.size), how=how)


def _line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)``; needs two distinct x values."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError("a line needs at least two distinct sizes")
    design = np.column_stack([np.ones_like(x), x])
    (intercept, slope), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(intercept), float(slope)


def _by_rep(points: Sequence[ForkPoint]) -> list[list[ForkPoint]]:
    reps: dict[int, list[ForkPoint]] = {}
    for point in points:
        reps.setdefault(point.rep, []).append(point)
    return [reps[rep] for rep in sorted(reps)]


def _medians(points: Sequence[ForkPoint]) -> list[ForkPoint]:
    """One point per size (the i-th point of every repetition): the median of each."""
    reps = _by_rep(points)
    out = []
    for index in range(min(len(rep) for rep in reps)):
        group = [rep[index] for rep in reps]
        out.append(ForkPoint(ptes=round(float(np.median([p.ptes for p in group]))),
                             pmds=round(float(np.median([p.pmds for p in group]))),
                             ns=float(np.median([p.ns for p in group])), rep=0))
    return out


def _fit_line(points: Sequence[ForkPoint], fixed_name: str, slope_name: str, what: str
              ) -> dict[str, Estimate]:
    middle = _medians(points)
    intercept, slope = _line([p.ptes for p in middle], [p.ns for p in middle])
    fits = [_line([p.ptes for p in rep], [p.ns for p in rep]) for rep in _by_rep(points)
            if len({p.ptes for p in rep}) > 1]
    how = f"least-squares line of the median {what} per size against anonymous 4 KiB PTEs"
    return {
        fixed_name: summarize([f[0] for f in fits] or [intercept], how + ": intercept",
                              value=intercept),
        slope_name: summarize([f[1] for f in fits] or [slope], how + ": slope", value=slope),
    }


def _fit_pmd(points: Sequence[ForkPoint], fixed: float, per_pte: float) -> Estimate:
    def slope(group: Sequence[ForkPoint]) -> float:
        rest = [p.ns - fixed - per_pte * p.ptes for p in group]
        return _line([p.pmds for p in group], rest)[1]

    how = "slope of the median THP fork time, less the 4 KiB line, against PMD-mapped THPs"
    per_rep = [slope(rep) for rep in _by_rep(points) if len({p.pmds for p in rep}) > 1]
    return summarize(per_rep or [slope(points)], how, value=slope(_medians(points)))


def _paired(first: Sequence[float], second: Sequence[float]) -> list[tuple[float, float]]:
    return list(zip(first, second, strict=False))


def fit(m: Measurements) -> Fit:
    """Every parameter the measurements determine (see the module docstring)."""
    params: dict[str, Estimate] = {}
    skipped: dict[str, str] = {}
    if m.fork_4k:
        params.update(_fit_line(m.fork_4k, "fork_fixed_ns", "fork_per_pte_ns", "fork time"))
    if m.exit_4k:
        params.update(_fit_line(m.exit_4k, "exit_fixed_ns", "exit_per_pte_ns",
                                "exit + reap time"))
    if m.fork_thp and "fork_fixed_ns" in params:
        params["fork_per_pmd_ns"] = _fit_pmd(m.fork_thp, params["fork_fixed_ns"].value,
                                             params["fork_per_pte_ns"].value)
    elif not m.fork_thp:
        skipped["fork_per_pmd_ns"] = m.thp_skip or "no THP forks measured"

    if m.copy_bytes_per_s:
        params["page_copy_bytes_per_s"] = summarize(m.copy_bytes_per_s, "numpy copy of a "
                                                    "buffer larger than the caches", floor=1.0)
    if m.first_touch_ns and m.thp_first_touch_ns:
        pairs = _paired(m.first_touch_ns, m.thp_first_touch_ns)
        per_byte = [(thp - small) / (THP - PAGE) for small, thp in pairs]
        params["page_zero_bytes_per_s"] = summarize(
            [1e9 / z for z in per_byte if z > 0] or [1.0],
            "kernel clearing: (THP first touch − 4 KiB first touch) / (2 MiB − 4 KiB)",
            floor=1.0)
        params["anon_fault_ns"] = summarize(
            [small - PAGE * z for (small, _thp), z in zip(pairs, per_byte, strict=True)],
            "4 KiB first-touch fault − clearing 4 KiB at that rate")
    elif m.first_touch_ns and m.memset_bytes_per_s:
        zero = float(np.median(m.memset_bytes_per_s))
        params["page_zero_bytes_per_s"] = summarize(m.memset_bytes_per_s, "numpy memset "
                                                    "(no THP to time the kernel's clearing)",
                                                    floor=1.0)
        params["anon_fault_ns"] = summarize([t - PAGE * 1e9 / zero for t in m.first_touch_ns],
                                            "4 KiB first-touch fault − memset of 4 KiB")
    if m.cow_ns and m.copy_bytes_per_s:
        copy_ns = PAGE * 1e9 / params["page_copy_bytes_per_s"].value
        params["cow_fault_fixed_ns"] = summarize([t - copy_ns for t in m.cow_ns],
                                                 "COW fault − copying 4 KiB")
        if m.thp_split_ns:
            cow = params["cow_fault_fixed_ns"].value + copy_ns
            params["thp_split_ns"] = summarize([t - cow for t in m.thp_split_ns],
                                               "first write to a shared THP − a 4 KiB COW fault")
    if not m.thp_split_ns:
        skipped["thp_split_ns"] = m.thp_skip or "no THP faults measured"
    if m.reuse_ns:
        params["wp_reuse_fault_ns"] = summarize(m.reuse_ns, "write fault on an exclusive "
                                                "write-protected page (reuse)")
    if m.mprotect_ns:
        params["mprotect_per_pte_ns"] = summarize(m.mprotect_ns, "mprotect RO and RW, per "
                                                  "call and populated PTE")
    if m.pagemap_ns:
        params["pagemap_per_page_ns"] = summarize(m.pagemap_ns, "pread of /proc/self/pagemap "
                                                  "per page")
    if m.shootdown_remote_ns and m.shootdown_local_ns:
        params["ipi_base_ns"] = summarize(
            [remote - local for local, remote in _paired(m.shootdown_local_ns,
                                                         m.shootdown_remote_ns)],
            "MADV_DONTNEED + refault of a page with a thread on a second CPU − alone")
    else:
        skipped["ipi_base_ns"] = m.shootdown_skip or "no shootdowns measured"
    if m.memory_bytes:
        params["memory_bytes"] = Estimate(float(m.memory_bytes), float(m.memory_bytes), 0.0,
                                          float(m.memory_bytes), float(m.memory_bytes), 1,
                                          "MemTotal of /proc/meminfo")
    return Fit(params=params, skipped=skipped)


def base_profile(virtualized: bool | None, cpu_model: str | None) -> str:
    """The named profile whose values stand in for what calibrate does not measure (TLB
    geometry, pins, uffd): the VM profile in a VM, Zen 4 on AMD, else Skylake-SP."""
    if virtualized:
        return "small-vm"
    if cpu_model and "amd" in cpu_model.lower():
        return "zen4"
    return "skylake-sp"


def fork_ns(costs: dict[str, float], ptes: float, pmds: float = 0.0) -> float:
    """What a cost model predicts for a fork (``CostModel.fork_ns``, from its fields)."""
    return (costs["fork_fixed_ns"] + ptes * costs["fork_per_pte_ns"]
            + pmds * costs["fork_per_pmd_ns"])


def fork_check(points: Sequence[ForkPoint], profiles: dict[str, dict[str, float]]
               ) -> list[dict[str, Any]]:
    """Per fork size (the points of each repetition are in size order): the measured
    median, and each profile's prediction for the same PTEs and PMDs with its error."""
    reps = _by_rep(points)
    rows: list[dict[str, Any]] = []
    for index in range(min(len(rep) for rep in reps) if reps else 0):
        group = [rep[index] for rep in reps]
        ptes = float(np.median([p.ptes for p in group]))
        pmds = float(np.median([p.pmds for p in group]))
        measured = float(np.median([p.ns for p in group]))
        predicted = {name: fork_ns(costs, ptes, pmds) for name, costs in profiles.items()}
        rows.append({
            "ptes": ptes, "pmds": pmds, "measured_ns": measured,
            "predicted_ns": predicted,
            "error": {name: (value - measured) / measured if measured else None
                      for name, value in predicted.items()},
        })
    return rows
