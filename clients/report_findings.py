"""Findings: short sentences computed from a sweep's tables, each naming its numbers.

:func:`findings` looks for four things, in this order:

* **Where the kernel changes the answer.**  Points that differ only in the kernel
  (every other axis equal) are compared metric by metric (:data:`KEY_METRICS`,
  violations aside: they have their own finding).  The highest and lowest kernel
  *differ* when the gap is more than :data:`RELATIVE_GAP` of the larger mean **and**
  their 95% intervals do not overlap (with one replication there are no intervals and
  the gap alone decides).  Per metric: at how many of the compared points they differ,
  and the point of the largest gap: its axis values and every kernel's mean with its 95%
  interval in brackets.
  Metrics on which the kernels agree everywhere are named in one line.
* **Where memory exceeds the machine.**  Each point's highest ``memory_peak_bytes``
  over its runs against the machine's memory the point was planned with
  (:attr:`SweepData.machine_memory`): which kernels and points exceed it and by how
  much, or the headroom at the highest peak when none does.
* **Where a correctness violation appears.**  Runs with ``violations_total`` > 0, per
  kernel: at how many points and runs, the worst run's count by kind (lost DMA writes,
  stale pin reads, leaks, diverged pins) and where; and the kernels with none.
* **Failed runs**, when there are any.

Everything here is a pure function of :class:`~cowsim.clients.report_data.SweepData`;
the texts are plain (the HTML escapes them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cowsim.clients.report_data import (
    KEY_METRICS,
    VIOLATION_COLUMNS,
    Metric,
    SweepData,
    format_value,
    is_number,
)

__all__ = ["RELATIVE_GAP", "Finding", "context", "findings"]

RELATIVE_GAP = 0.10
"""Kernels differ on a metric when the gap exceeds this share of the larger mean (and the
intervals are apart)."""

Row = dict[str, Any]


@dataclass(frozen=True)
class Finding:
    """One sentence of the report's findings; ``kind`` is ``kernel``, ``agree``, ``memory``,
    ``violations``, ``clean`` (no violation) or ``failures``."""

    kind: str
    text: str


def context(data: SweepData, row: Row) -> str:
    """Where a row is: its swept axes' values (``fork_every_seconds = 50 ms, …``), or
    ``the one point`` in a sweep with no swept axis besides the kernel."""
    parts = [f"{axis.column} = {format_value(row.get(axis.column), axis.unit)}"
             for axis in data.swept]
    return ", ".join(parts) if parts else "the one point"


def _interval(row: Row, metric: Metric) -> tuple[float, float] | None:
    low, high = row.get(f"{metric.column}_ci95_low"), row.get(f"{metric.column}_ci95_high")
    return (float(low), float(high)) if is_number(low) and is_number(high) else None


def _with_interval(row: Row, metric: Metric) -> str:
    mean = format_value(row.get(f"{metric.column}_mean"), metric.unit)
    interval = _interval(row, metric)
    if interval is None:
        return mean
    return f"{mean} [{format_value(interval[0], metric.unit)}, " \
           f"{format_value(interval[1], metric.unit)}]"


def _gap(high: Row, low: Row, metric: Metric) -> float | None:
    """The relative gap between two rows' means when they differ (see the module), else None."""
    top, bottom = float(high[f"{metric.column}_mean"]), float(low[f"{metric.column}_mean"])
    scale = max(abs(top), abs(bottom))
    if scale == 0 or (top - bottom) / scale <= RELATIVE_GAP:
        return None
    above, below = _interval(high, metric), _interval(low, metric)
    if above is not None and below is not None and below[1] >= above[0]:
        return None
    return (top - bottom) / scale


def _comparable(data: SweepData) -> list[list[Row]]:
    """Rows grouped by every axis but the kernel, groups with two kernels or more."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in data.summary:
        if row.get("replications"):
            groups.setdefault(tuple(row.get(a.column) for a in data.axes), []).append(row)
    return [rows for rows in groups.values() if len({row["kernel"] for row in rows}) > 1]


def _percent(ratio: float) -> str:
    """``117%``, ``4.2%``, ``0.025%``: enough digits to say something."""
    share = 100 * ratio
    return f"{share:.0f}%" if share >= 10 else f"{share:.1f}%" if share >= 1 else f"{share:.2g}%"


def _ratio(high: float, low: float) -> str:
    if low > 0:
        times = high / low
        return f"{times:.0f}× the lowest" if times >= 10 else f"{times:.2f}× the lowest"
    return "above the lowest, which is zero" if low == 0 else f"{high - low:g} above the lowest"


def _kernel_findings(data: SweepData) -> list[Finding]:
    groups = _comparable(data)
    if not groups:
        return []
    out, agree = [], []
    for metric in KEY_METRICS:
        if metric.column == "violations_total":
            continue
        column = f"{metric.column}_mean"
        compared, differing = 0, []
        for rows in groups:
            present = [row for row in rows if is_number(row.get(column))]
            if len({row["kernel"] for row in present}) < 2:
                continue
            compared += 1
            high = max(present, key=lambda row: float(row[column]))
            low = min(present, key=lambda row: float(row[column]))
            gap = _gap(high, low, metric)
            if gap is not None:
                differing.append((gap, float(high[column]) - float(low[column]), high, low))
        if not compared:
            continue
        if not differing:
            agree.append(metric.title)
            continue
        _, _, high, low = max(differing, key=lambda item: (item[0], item[1]))
        group = next(rows for rows in groups if any(row is high for row in rows))
        ranked = sorted((row for row in group if is_number(row.get(column))),
                        key=lambda row: -float(row[column]))
        out.append(Finding("kernel", (
            f"{metric.title}: the kernel changes the answer at {len(differing)} of {compared} "
            f"points compared. Largest gap at {context(data, high)}: "
            + ", ".join(f"{row['kernel']} {_with_interval(row, metric)}" for row in ranked)
            + f"; {high['kernel']} is {_ratio(float(high[column]), float(low[column]))} "
              f"({low['kernel']}).")))
    if agree:
        out.append(Finding("agree", (
            f"The kernels agree (gap ≤ {RELATIVE_GAP:.0%} or overlapping 95% intervals) at every "
            f"point compared on: {', '.join(agree)}.")))
    return out


def _completed(data: SweepData) -> dict[int, list[Row]]:
    by_point: dict[int, list[Row]] = {}
    for row in data.runs:
        if row.get("status") == "completed":
            by_point.setdefault(int(row["point"]), []).append(row)
    return by_point


def _counted(items: Iterable[str], kernels: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return ", ".join(f"{k} ({counts[k]})" for k in sorted(counts, key=kernels.index))


def _memory_findings(data: SweepData) -> list[Finding]:
    points = {int(row["point"]): row for row in data.summary}
    peaks = []
    for point, runs in _completed(data).items():
        values = [float(run["memory_peak_bytes"]) for run in runs
                  if is_number(run.get("memory_peak_bytes"))]
        if values and point in points:
            peaks.append((max(values), points[point]))
    if not peaks:
        return []
    highest, where = max(peaks, key=lambda item: item[0])
    if not data.machine_memory:
        return [Finding("memory", (
            f"The machine's memory is unknown, so the peaks are not checked against it "
            f"({data.memory_note}); the highest peak is {format_value(highest, 'B')} on "
            f"{where['kernel']} at {context(data, where)}."))]
    share = [(peak / data.machine_memory[int(row["point"])], peak, row) for peak, row in peaks
             if int(row["point"]) in data.machine_memory]
    if not share:
        return []
    over = [item for item in share if item[0] > 1]
    if not over:
        ratio, peak, row = max(share, key=lambda item: item[0])
        return [Finding("memory", (
            f"The memory peak stays within the machine's memory at all {len(share)} points: the "
            f"highest is {format_value(peak, 'B')}, {_percent(ratio)} of "
            f"{format_value(data.machine_memory[int(row['point'])], 'B')}, on {row['kernel']} at "
            f"{context(data, row)}."))]
    ratio, peak, row = max(over, key=lambda item: item[0])
    within = [k for k in data.kernels if k not in {r["kernel"] for _, _, r in over}]
    text = (f"The memory peak exceeds the machine's memory at {len(over)} of {len(share)} points, "
            f"on kernels {_counted((r['kernel'] for _, _, r in over), data.kernels)}: worst "
            f"{format_value(peak, 'B')} against {format_value(data.machine_memory[int(row['point'])], 'B')}"
            f" ({_percent(ratio)}) on {row['kernel']} at {context(data, row)}.")
    if within:
        most = max((item for item in share if item[2]["kernel"] in within), key=lambda i: i[0])
        text += (f" {', '.join(within)} stay{'s' if len(within) == 1 else ''} within it "
                 f"(at most {format_value(most[1], 'B')}, {_percent(most[0])}).")
    return [Finding("memory", text)]


def _violation_kinds(run: Row) -> str:
    kinds = [f"{column.removesuffix('_total').replace('_', ' ')} {format_value(run[column], '')}"
             for column in VIOLATION_COLUMNS if is_number(run.get(column)) and run[column] > 0]
    return ", ".join(kinds)


def _violation_findings(data: SweepData) -> list[Finding]:
    completed = _completed(data)
    runs = [run for rows in completed.values() for run in rows]
    bad = [run for run in runs if is_number(run.get("violations_total")) and run["violations_total"] > 0]
    if not bad:
        return [Finding("clean", f"No correctness violation in any of the {len(runs)} "
                                 "completed runs.")]
    points = {int(row["point"]): row for row in data.summary}
    out = []
    for kernel in data.kernels:
        mine = [run for run in bad if run["kernel"] == kernel]
        if not mine:
            continue
        total_points = sum(1 for rows in completed.values() if rows[0]["kernel"] == kernel)
        total_runs = sum(1 for run in runs if run["kernel"] == kernel)
        worst = max(mine, key=lambda run: float(run["violations_total"]))
        where = points.get(int(worst["point"]), worst)
        out.append(Finding("violations", (
            f"Correctness violations on {kernel}: at {len({int(r['point']) for r in mine})} of "
            f"{total_points} points ({len(mine)} of {total_runs} runs); the worst run has "
            f"{format_value(worst['violations_total'], '')} ({_violation_kinds(worst)}) at "
            f"{context(data, where)}.")))
    clean = [k for k in data.kernels if k not in {run["kernel"] for run in bad}]
    if clean:
        counts = {k: sum(1 for run in runs if run["kernel"] == k) for k in clean}
        out.append(Finding("clean", "No correctness violation on " + ", ".join(
            f"{k} ({counts[k]} runs)" for k in clean) + "."))
    return out


def _failure_findings(data: SweepData) -> list[Finding]:
    failed = data.failed_runs
    if not failed:
        return []
    first = failed[0]
    return [Finding("failures", (
        f"{len(failed)} of {len(data.runs)} runs failed (listed below), so their points' means "
        f"are over fewer replications; the first: point {first['point']} replication "
        f"{first.get('replication')} on {first['kernel']}: {first.get('error') or 'failed'}."))]


def findings(data: SweepData) -> list[Finding]:
    """The findings of a sweep, in the order of the module docstring."""
    return [*_kernel_findings(data), *_memory_findings(data), *_violation_findings(data),
            *_failure_findings(data)]
