"""A run's series as OpenMetrics text with timestamps, for Prometheus's backfill.

A live scrape shows what a server's runs did *now*; a run's history is in
simulated time.  :func:`openmetrics_text` writes one run result's ``"series"``
(:func:`cowsim.sim.timeline.series_dict`) as OpenMetrics samples whose
timestamps are ``start + simulated seconds``, so that ``promtool tsdb
create-blocks-from openmetrics FILE DIR`` turns them into blocks a Prometheus
serves as if a machine had been scraped every ``metrics_interval``::

    text = openmetrics_text(result, start=1_700_000_000.0)
    # # TYPE cowsim_memory_bytes gauge
    # # UNIT cowsim_memory_bytes bytes
    # cowsim_memory_bytes{kernel="6.8",workload="forking_server"} 67108864 1700000000.000
    # ...
    # # EOF

The names are the live exporter's (docs/design.md "Metrics": ``cowsim_cow_copies_total
{cause}``, ``cowsim_page_faults_total{type}``, ``cowsim_violations_total{kind}``, the
TLB counters and the ``cowsim_*_seconds`` histograms with the same ``le`` bounds),
so the same PromQL works on both, plus the sampled gauges ``cowsim_memory_bytes``,
``cowsim_shared_pages{process}`` and ``cowsim_exclusive_pages{process}``.  Every
series is labelled ``kernel`` and ``workload``; ``process`` is a spec's process
name, fine for one run's backfill but not a label for a live endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.utils import floatToGoString

from cowsim.service.metric_names import (
    COUNTER_HELP,
    COW_CAUSES,
    FAULT_TYPES,
    SIM_HISTOGRAMS,
    TLB_COUNTERS,
    VIOLATION_KINDS,
    WORKLOAD_VIOLATIONS,
)

__all__ = ["GAUGES", "NoSeriesError", "openmetrics_text"]

GAUGES = {
    "memory_bytes": ("cowsim_memory_bytes", "bytes", "Physical memory in use."),
    "shared_pages": ("cowsim_shared_pages", "", "Resident pages of a process that another "
                     "process maps too (left to copy on write)."),
    "exclusive_pages": ("cowsim_exclusive_pages", "", "Resident pages of a process mapped by "
                        "it alone."),
}
"""The recorder's sampled series: series name → (metric, unit, help)."""

_go_float: Callable[[float], str] = floatToGoString  # "1e-06", "+Inf": the live exporter's le


class NoSeriesError(ValueError):
    """The result has no ``"series"`` (written by a cowsim from before timelines)."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in pairs) + "}"


def _number(value: float) -> str:
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _header(name: str, kind: str, help_text: str, unit: str = "") -> Iterator[str]:
    yield f"# TYPE {name} {kind}"
    if unit:
        yield f"# UNIT {name} {unit}"
    yield f"# HELP {name} {_escape(help_text)}"


def _labelled_counter(counters: Mapping[str, list[int]], prefix: str, values: Sequence[str],
                      total: str | None) -> dict[str, list[float]]:
    """``{label value: points}`` from ``<prefix><value>`` counters, ``other`` for the rest
    of ``total`` (as the live exporter attributes copies and faults it has no cause for)."""
    out: dict[str, list[float]] = {}
    for value in values:
        points = counters.get(f"{prefix}{value}")
        if points is not None:
            out[value] = [float(p) for p in points]
    if total is not None and total in counters:
        named = [sum(points[i] for points in out.values()) for i in range(len(counters[total]))]
        out["other"] = [max(0.0, float(t) - n) for t, n in zip(counters[total], named, strict=True)]
    return out


def _counter_families(counters: Mapping[str, list[int]]
                      ) -> list[tuple[str, str, str, dict[str, list[float]]]]:
    """(metric family, label name or "", help, {label value: points})."""
    violations = _labelled_counter(counters, "violations_", VIOLATION_KINDS, None)
    for name, kind in WORKLOAD_VIOLATIONS.items():
        if name in counters:
            violations[kind] = [float(p) for p in counters[name]]
    single = [("cowsim_wp_reuses", COUNTER_HELP["cowsim_wp_reuses_total"], "wp_reuses"),
              *((metric.removesuffix("_total"), help_text, name)
                for name, (metric, help_text) in TLB_COUNTERS.items())]
    return [
        ("cowsim_cow_copies", "cause", COUNTER_HELP["cowsim_cow_copies_total"],
         _labelled_counter(counters, "cow_copies_", COW_CAUSES, "cow_copies")),
        ("cowsim_page_faults", "type", COUNTER_HELP["cowsim_page_faults_total"],
         _labelled_counter(counters, "faults_", FAULT_TYPES, "page_faults")),
        ("cowsim_violations", "kind", COUNTER_HELP["cowsim_violations_total"], violations),
        *((family, "", help_text, {"": [float(p) for p in counters[name]]})
          for family, help_text, name in single if name in counters),
    ]


def openmetrics_text(result: Mapping[str, Any], start: float) -> str:
    """The run's series and counters as OpenMetrics, timestamps ``start + t`` (see the
    module doc); raises :class:`NoSeriesError` when the result has none."""
    series = result.get("series")
    if not isinstance(series, Mapping):
        raise NoSeriesError("the result has no time series (a run from a cowsim before timelines)")
    run = (("kernel", str(result.get("kernel", ""))), ("workload", str(series.get("workload", ""))))
    lines: list[str] = []

    def stamp(t: float) -> str:
        return f"{start + float(t):.3f}"

    for key, (metric, unit, help_text) in GAUGES.items():
        scopes: list[tuple[tuple[tuple[str, str], ...], Mapping[str, Any]]] = []
        if key in series.get("run", {}):
            scopes.append((run, series["run"][key]))
        for process in sorted(series.get("processes", {})):
            if key in series["processes"][process]:
                scopes.append(((*run, ("process", process)), series["processes"][process][key]))
        if not scopes:
            continue
        lines.extend(_header(metric, "gauge", help_text, unit))
        for labels, points in scopes:
            text = _labels(labels)
            lines.extend(f"{metric}{text} {_number(v)} {stamp(t)}"
                         for t, v in zip(points["t"], points["v"], strict=True))

    timeline = series.get("timeline", {})
    times: list[float] = list(timeline.get("t", []))
    for family, label, help_text, by_value in _counter_families(timeline.get("counters", {})):
        lines.extend(_header(family, "counter", help_text))
        for value in sorted(by_value):
            text = _labels((*run, (label, value)) if label else run)
            lines.extend(f"{family}_total{text} {_number(v)} {stamp(t)}"
                         for t, v in zip(times, by_value[value], strict=True))

    for name, histogram in sorted(timeline.get("histograms", {}).items()):
        metric = f"cowsim_{name}"
        lines.extend(_header(metric, "histogram", SIM_HISTOGRAMS.get(
            name, f"The run contract's {name} (simulated seconds)."), "seconds"))
        bounds = [_go_float(b) for b in histogram["le"]] + ["+Inf"]
        base = _labels(run)
        for t, row, total in zip(times, histogram["buckets"], histogram["sum"], strict=True):
            ts = stamp(t)
            for bound, count in zip(bounds, row, strict=True):
                lines.append(f"{metric}_bucket{_labels((*run, ('le', bound)))} {count} {ts}")
            lines.append(f"{metric}_count{base} {row[-1]} {ts}")
            lines.append(f"{metric}_sum{base} {_number(total)} {ts}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"
