"""A finished sweep's directory, read back for a report: tables, axes, kernels, machine memory.

:func:`load_sweep_dir` reads what ``cowsim sweep`` wrote into DIR (docs/design.md,
"Sweeps as built") and checks it enough that a report can trust it: ``sweep.json``
(the sweep as validated, its axis ``columns`` and ``paths``), ``summary.parquet``
(one row per point: the axes, ``kernel``, ``M_mean``/``M_ci95_low``/``M_ci95_high``),
``runs.parquet`` (one row per run, ``status`` and ``error``) and ``failures.json``.
Anything missing or malformed — DIR itself, sweep.json, the tables, or a sweep with
no completed run — is one :class:`~cowsim.sim.InvalidInput` whose source is DIR.

What a report needs to know about the axes is decided here, once:

* The **kernel** is the ``kernel`` column (an axis or the base's own kernel); every
  other axis column is an :class:`AxisInfo`.  An axis with one value only pins a field
  (``fixed``); one with several is ``swept``, and ``numeric`` when every value is a
  number (those get plots).
* An axis's **unit** is guessed from its column or path (``*_seconds``, ``duration``,
  ``…every``: seconds; ``*_bytes``, ``memory``: bytes; ``*_per_s``, ``…rate``: per
  second; ``cpus``): what the labels and the table print its values in.
* The **machine's memory** at each point is what the run was planned against
  (``plan_run(spec).costs.memory_bytes``: the profile's memory or a
  ``machine.costs.memory_bytes`` override).  The points are re-planned from
  sweep.json (:func:`cowsim.sim.plan_sweep`); when that is impossible — a base given
  as a path that is gone, or a base that changed since the sweep ran (the run keys no
  longer match) — the memory is unknown and :attr:`SweepData.memory_note` says why.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from cowsim.service.sweeps import sweep_runs
from cowsim.sim import (
    InvalidInput,
    WorkloadSpec,
    format_bytes,
    format_rate,
    format_seconds,
    parse_sweep,
    plan_run,
    plan_sweep,
)

__all__ = ["KEY_METRICS", "VIOLATION_COLUMNS", "AxisInfo", "Metric", "SweepData", "axis_unit",
           "format_value", "is_number", "load_sweep_dir"]

Row = dict[str, Any]


@dataclass(frozen=True)
class Metric:
    """A summary metric a report shows: its column stem, what people call it, its unit."""

    column: str
    """The stem of the summary's ``{column}_mean`` / ``_ci95_low`` / ``_ci95_high``."""
    title: str
    unit: str
    """``B``, ``s`` or ``""`` (a count)."""


KEY_METRICS: tuple[Metric, ...] = (
    Metric("cow_copies_total", "COW copies", ""),
    Metric("memory_peak_bytes", "memory peak", "B"),
    Metric("request_latency_p99_seconds", "p99 request latency", "s"),
    Metric("fork_pause_p99_seconds", "fork pause p99", "s"),
    Metric("tlb_shootdowns_total", "TLB shootdowns", ""),
    Metric("violations_total", "correctness violations", ""),
)
"""The metrics plotted and tabulated, in the order shown (the rest stay in summary.csv)."""

VIOLATION_COLUMNS = ("dma_lost_writes_total", "stale_pin_reads_total", "leaks_total",
                     "pin_diverged_total")
"""The four counts violations_total sums (service/sweep_table.py)."""


def is_number(value: Any) -> TypeGuard[int | float]:
    """A finite int or float (not a bool, not None, not NaN)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_SECONDS_FIELDS = frozenset({"duration", "every", "first_at", "fork_every", "interval",
                             "metrics_interval", "service", "lifetime", "device_latency", "tick"})
_BYTES_FIELDS = frozenset({"memory", "buffer", "block", "memory_bytes"})
"""The spec's fields in seconds and in bytes (sim/spec.py: Duration, Interval, Offset, Seconds;
RegionBytes, Bytes); rates are ``rate``/``dma_rate`` (per second) and ``scan_rate`` (bytes/s)."""


def axis_unit(column: str, path: str) -> str:
    """The unit of an axis from the field its path ends in, else its column name's suffix:
    ``s``, ``B``, ``B/s``, ``/s``, ``CPUs`` or ``""`` (unknown: the bare number)."""
    field = path.rsplit(".", 1)[-1].split("[", 1)[0]
    name = column.lower()
    if field == "scan_rate" or name.endswith("_bytes_per_s"):
        return "B/s"
    if field.endswith("rate") or name.endswith("_per_s"):
        return "/s"
    if field in _SECONDS_FIELDS or name.endswith("_seconds"):
        return "s"
    if field in _BYTES_FIELDS or name.endswith("_bytes"):
        return "B"
    if field == "cpus":
        return "CPUs"
    return ""


def format_value(value: Any, unit: str) -> str:
    """A table or label value for people, in ``unit`` (:func:`axis_unit`, :class:`Metric`):
    ``64 MiB``, ``951 µs``, ``20k/s``, counts with thousands separators; ``–`` for none."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if not is_number(value):
        return str(value)
    number = float(value)
    if unit == "B":
        return format_bytes(number)
    if unit == "B/s":
        return f"{format_bytes(number)}/s"
    if unit == "s":
        return format_seconds(number)
    if unit == "/s":
        return format_rate(number)
    if number.is_integer() or abs(number) >= 100:
        return f"{number:,.0f}"
    return f"{number:.3g}"


@dataclass(frozen=True)
class AxisInfo:
    """One axis column of the tables (the kernel aside)."""

    column: str
    path: str
    values: tuple[Any, ...]
    """Its distinct values: sorted when numeric, else in table order."""
    numeric: bool
    unit: str

    @property
    def swept(self) -> bool:
        return len(self.values) > 1


@dataclass(frozen=True)
class SweepData:
    """What a report reads from a sweep's DIR (see the module docstring)."""

    directory: Path
    name: str
    description: str | None
    design: str
    replications: int
    axes: tuple[AxisInfo, ...]
    """Every axis column except the kernel, in axis order."""
    kernels: tuple[str, ...]
    """The kernels in the order the table first names them."""
    summary: tuple[Row, ...]
    runs: tuple[Row, ...]
    failures: Mapping[str, str]
    machine_memory: Mapping[int, int]
    """Point → the machine's memory in bytes (empty when unknown)."""
    memory_note: str | None
    """Why the machine's memory is unknown, or None."""

    @property
    def swept(self) -> tuple[AxisInfo, ...]:
        return tuple(axis for axis in self.axes if axis.swept)

    @property
    def fixed(self) -> tuple[AxisInfo, ...]:
        return tuple(axis for axis in self.axes if not axis.swept)

    @property
    def completed_runs(self) -> int:
        return sum(row.get("status") == "completed" for row in self.runs)

    @property
    def failed_runs(self) -> tuple[Row, ...]:
        return tuple(row for row in self.runs if row.get("status") != "completed")

    def axis(self, column: str) -> AxisInfo:
        return next(axis for axis in self.axes if axis.column == column)


def _invalid(directory: Path, message: str) -> InvalidInput:
    return InvalidInput(message, source=str(directory))


def _read_table(directory: Path, name: str) -> list[Row]:
    import pyarrow as pa  # only here: the CLI's other commands do not load it (TID253)
    import pyarrow.parquet as pq

    path = directory / f"{name}.parquet"
    if not path.is_file():
        raise _invalid(directory, f"no {path.name}: the sweep has not finished (run `cowsim "
                                  "sweep` again into this directory to complete it)")
    try:
        rows: list[Row] = pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise _invalid(directory, f"cannot read {path.name}: {str(exc)[:200]}") from None
    return rows


def _manifest(directory: Path) -> dict[str, Any]:
    if not directory.exists():
        raise _invalid(directory, "no such directory")
    if not directory.is_dir():
        raise _invalid(directory, "not a directory")
    path = directory / "sweep.json"
    if not path.is_file():
        raise _invalid(directory, "not a sweep directory (no sweep.json; `cowsim sweep SWEEP "
                                  "--out DIR` makes one)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _invalid(directory, f"cannot read sweep.json: {str(exc)[:200]}") from None
    if not (isinstance(manifest, dict) and isinstance(manifest.get("columns"), list)
            and isinstance(manifest.get("paths"), list) and isinstance(manifest.get("sweep"), dict)
            and len(manifest["columns"]) == len(manifest["paths"])):
        raise _invalid(directory, "sweep.json is not a sweep's (no 'sweep', 'columns', 'paths')")
    return manifest


def _axes(summary: Sequence[Row], columns: Sequence[str], paths: Sequence[str],
          directory: Path) -> tuple[AxisInfo, ...]:
    axes = []
    for column, path in zip(columns, paths, strict=True):
        if column == "kernel":
            continue
        if summary and column not in summary[0]:
            raise _invalid(directory, f"summary.parquet has no column {column!r} (an axis of "
                                      "sweep.json)")
        seen = list(dict.fromkeys(row[column] for row in summary))
        numeric = all(is_number(value) for value in seen)
        values = tuple(sorted(seen)) if numeric else tuple(seen)
        axes.append(AxisInfo(str(column), str(path), values, numeric, axis_unit(column, path)))
    return tuple(axes)


def _machine_memory(manifest: Mapping[str, Any]) -> tuple[dict[int, int], str | None]:
    """Point → memory_bytes by re-planning the sweep, or ({}, why not)."""
    source = str(manifest.get("source") or "sweep.json")
    try:
        sweep = parse_sweep(json.dumps(manifest["sweep"]), "sweep.json")
        plan = plan_sweep(sweep, source=source, base_dir=Path(source).parent)
    except InvalidInput as exc:
        return {}, (f"its points cannot be planned again from here ({exc}); run cowsim report "
                    "where cowsim sweep ran")
    stored = [run.get("key") for run in manifest.get("runs", []) if isinstance(run, dict)]
    if [run.key for run in sweep_runs(plan)] != stored:
        return {}, "the base spec has changed since the sweep ran (its run keys differ)"
    by_machine: dict[str, int] = {}
    memory = {}
    for point in plan.points:
        machine = json.dumps(_machine_of(point.spec), sort_keys=True)
        if machine not in by_machine:
            by_machine[machine] = plan_run(point.spec).costs.memory_bytes
        memory[point.index] = by_machine[machine]
    return memory, None


def _machine_of(spec: WorkloadSpec) -> Any:
    return spec.machine.model_dump(mode="json")


def load_sweep_dir(directory: Path) -> SweepData:
    """Read and check a sweep's DIR (see the module docstring); InvalidInput naming DIR."""
    manifest = _manifest(directory)
    summary = _read_table(directory, "summary")
    runs = _read_table(directory, "runs")
    for table, rows, needed in (("summary", summary, ("point", "kernel", "replications")),
                                ("runs", runs, ("point", "kernel", "status", "error"))):
        missing = [c for c in needed if rows and c not in rows[0]]
        if missing:
            raise _invalid(directory, f"{table}.parquet has no column {missing[0]!r}")
    completed = sum(row["status"] == "completed" for row in runs)
    if not completed:
        raise _invalid(directory, f"no completed runs ({len(runs)} in runs.parquet, none "
                                  "completed): nothing to report")
    try:
        failures = json.loads((directory / "failures.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        failures = {}
    failures = failures if isinstance(failures, dict) else {}
    sweep = manifest["sweep"]
    memory, note = _machine_memory(manifest)
    replications = sweep.get("replications")
    return SweepData(
        directory=directory,
        name=str(manifest.get("name") or sweep.get("name") or directory.name),
        description=sweep.get("description") if isinstance(sweep.get("description"), str) else None,
        design=str(sweep.get("design") or "grid"),
        replications=replications if isinstance(replications, int) else 1,
        axes=_axes(summary, manifest["columns"], manifest["paths"], directory),
        kernels=tuple(dict.fromkeys(str(row["kernel"]) for row in summary)),
        summary=tuple(summary),
        runs=tuple(runs),
        failures={str(k): str(v) for k, v in failures.items()},
        machine_memory=memory,
        memory_note=note,
    )
