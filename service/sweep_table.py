"""The sweep table: one tidy row per run, and a summary per point with 95% intervals.

``runs`` has one row per (point, replication): the point's index and axis
values, the kernel it ran (``kernel``: the resolved name; ``era``), its
``seed`` and store ``key``, ``status`` (``completed`` or ``failed``, with
``error``) and the run's key metrics (:data:`METRICS`, from the result keys of
docs/design.md; null for a failed run).  ``summary`` has one row per point: the
axis values, ``replications`` (runs completed), ``failed``, and per metric
``M_mean``, ``M_ci95_low`` and ``M_ci95_high``: the mean over the replications
and its 95% confidence interval, ``mean ± t(0.975, n-1) · s / √n`` with the
sample standard deviation ``s`` (null with fewer than two runs).

The Student t quantile comes from :func:`t_quantile_975` (numpy only): an exact
table for 1–30 degrees of freedom, the Cornish–Fisher expansion (Abramowitz &
Stegun 26.7.5) above, which agrees with the table to 10⁻⁵ at 30.

Rows are ordered by (point, replication) whatever order the runs finished in, and
nothing non-deterministic (wall time) is in them: the same sweep with the same
seeds gives the same table on any executor.  :func:`write_table` writes Parquet
(pyarrow) and CSV, each through a temporary file renamed into place.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["METRICS", "csv_text", "summarize", "t_quantile_975", "write_atomic", "write_table"]

Row = dict[str, Any]


Reader = Callable[[Mapping[str, Any]], Any]


def _metric(*keys: str) -> Reader:
    def get(metrics: Mapping[str, Any]) -> Any:
        value: Any = metrics
        for key in keys:
            value = value.get(key, 0) if isinstance(value, Mapping) else 0
        return value
    return get


def _violations(metrics: Mapping[str, Any]) -> Any:
    return sum(metrics.get(name, 0) for name in ("leaks_total", "pin_diverged_total",
                                                  "dma_lost_writes_total", "stale_pin_reads_total"))


METRICS: dict[str, Reader] = {
    "cow_copies_total": _metric("cow_copies_total"),
    "wp_reuses_total": _metric("wp_reuses_total"),
    "page_faults_total": _metric("page_faults_total"),
    "tlb_shootdowns_total": _metric("tlb_shootdowns_total"),
    "tlb_ipis_total": _metric("tlb_ipis_total"),
    "tlb_misses_total": _metric("tlb_misses_total"),
    "dma_lost_writes_total": _metric("dma_lost_writes_total"),
    "leaks_total": _metric("leaks_total"),
    "stale_pin_reads_total": _metric("stale_pin_reads_total"),
    "pin_diverged_total": _metric("pin_diverged_total"),
    "violations_total": _violations,
    "memory_peak_bytes": _metric("memory_peak_bytes"),
    "fork_pause_p50_seconds": _metric("fork_pause_seconds", "p50"),
    "fork_pause_p99_seconds": _metric("fork_pause_seconds", "p99"),
    "fork_pause_max_seconds": _metric("fork_pause_seconds", "max"),
    "request_latency_p50_seconds": _metric("request_latency_seconds", "p50"),
    "request_latency_p99_seconds": _metric("request_latency_seconds", "p99"),
    "request_latency_p999_seconds": _metric("request_latency_seconds", "p999"),
    "request_latency_max_seconds": _metric("request_latency_seconds", "max"),
}
"""Table column → how to read it from a result's ``metrics``.  ``violations_total`` is
leaks + pin_diverged + dma_lost_writes + stale_pin_reads."""

_T_975 = (12.7062047, 4.3026527, 3.1824463, 2.7764451, 2.5705818, 2.4469119, 2.3646243,
          2.3060041, 2.2621572, 2.2281389, 2.2009852, 2.1788128, 2.1603687, 2.1447867,
          2.1314495, 2.1199053, 2.1098156, 2.1009220, 2.0930241, 2.0859634, 2.0796138,
          2.0738731, 2.0686576, 2.0638986, 2.0595386, 2.0555294, 2.0518305, 2.0484071,
          2.0452296, 2.0422725)
"""t(0.975, df) for df = 1 … 30."""
_Z_975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` ≥ 1 degrees of freedom."""
    if df < 1:
        raise ValueError("degrees of freedom are at least 1")
    if df <= len(_T_975):
        return _T_975[df - 1]
    z, v = _Z_975, float(df)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / v + g2 / v**2 + g3 / v**3 + g4 / v**4


def _interval(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if len(data) < 2:
        return mean, None, None
    half = t_quantile_975(len(data) - 1) * float(data.std(ddof=1)) / math.sqrt(len(data))
    return mean, mean - half, mean + half


def summarize(rows: Sequence[Row], point_columns: Sequence[str]) -> list[Row]:
    """One row per point (rows grouped by ``point``): ``point_columns``, the counts, and
    each metric's mean and 95% interval over the point's completed runs."""
    by_point: dict[int, list[Row]] = {}
    for row in rows:
        by_point.setdefault(row["point"], []).append(row)
    summary = []
    for point in sorted(by_point):
        group = by_point[point]
        done = [row for row in group if row["status"] == "completed"]
        out: Row = {column: group[0][column] for column in point_columns}
        out["replications"] = len(done)
        out["failed"] = len(group) - len(done)
        for metric in METRICS:
            mean, low, high = _interval([row[metric] for row in done])
            out[f"{metric}_mean"], out[f"{metric}_ci95_low"], out[f"{metric}_ci95_high"] = \
                mean, low, high
        summary.append(out)
    return summary


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, rename it into
    place: a reader sees the old file or the whole new one, never part of it."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def csv_text(rows: Sequence[Row], columns: Sequence[str]) -> str:
    """The CSV of ``rows`` with ``columns`` in order (None is empty, floats as ``repr``):
    exactly what :func:`write_table` writes, so a server can send the file's text."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(column)) for column in columns])
    return text.getvalue()


def write_table(rows: Sequence[Row], columns: Sequence[str], stem: Path) -> None:
    """``stem``.parquet and ``stem``.csv with ``columns`` in order (None is null / empty)."""
    import pyarrow as pa  # only what writes tables pays for pyarrow (pyproject.toml, TID253)
    import pyarrow.parquet as pq

    arrays = {column: pa.array([row.get(column) for row in rows]) for column in columns}
    sink = io.BytesIO()
    pq.write_table(pa.table(arrays), sink)
    write_atomic(stem.with_suffix(".parquet"), sink.getvalue())
    write_atomic(stem.with_suffix(".csv"), csv_text(rows, columns).encode("utf-8"))
