"""The report's plots: chosen from the sweep's axes, drawn by matplotlib as inline SVG.

**Which plots** (:func:`choose_plots`).  One plot per (metric, numeric swept axis):
each of :data:`~cowsim.clients.report_data.KEY_METRICS` against each axis with
several numeric values, one line per kernel, the 95% interval of the summary
(``M_ci95_low`` … ``M_ci95_high``) as error bars and a faint band.  A metric that is
zero or missing in every point (no requests, no forks, no shootdowns) is not
plotted; the report says so.  The other swept axes are handled so that a line
never mixes points that differ in more than the plotted axis:

* the first other swept axis **facets** the plot (one panel per value, at most
  :data:`MAX_FACETS`, evenly chosen; the rest in summary.csv);
* any further one is **pinned** at its middle value (named in the caption);
* in a sampled design (``random``, ``lhs``) no two points share the other values, so
  the points are drawn unjoined (a scatter per kernel) and the caption says the
  other axes vary.

A sweep with no numeric swept axis gets one plot per metric with the kernels along x.

**Drawing** (:func:`render_svg`).  A :class:`matplotlib.figure.Figure` printed by
the Agg canvas (``FigureCanvasAgg``: no display, no pyplot global state) as SVG
with text kept as text (``svg.fonttype: none``), so the labels are searchable in
the page, and a salt per plot so that element ids of two inline SVGs never
collide.  Labels name the axis column and its unit (``fork_every_seconds
(seconds)``); tick labels are formatted like the table (``50 ms``, ``64 MiB``,
``20k/s``).  matplotlib is imported by the functions that draw: half a second no
other ``cowsim`` command should pay (ruff's TID253 bans it at module level).
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cowsim.clients.report_data import (
    KEY_METRICS,
    AxisInfo,
    Metric,
    SweepData,
    format_value,
    is_number,
)

__all__ = ["MAX_FACETS", "Plot", "choose_plots", "render_svg", "unit_words"]

MAX_FACETS = 4
"""Panels per plot at most (values of the faceting axis, evenly chosen beyond that)."""

_Y_UNITS: dict[str, tuple[tuple[float, str], ...]] = {
    "B": ((2.0**40, "TiB"), (2.0**30, "GiB"), (2.0**20, "MiB"), (2.0**10, "KiB"), (1.0, "bytes")),
    "s": ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")),
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")

Row = dict[str, Any]


def unit_words(unit: str) -> str:
    """How a label spells a unit: ``seconds``, ``bytes``, ``per second`` … (``""``: none)."""
    return {"s": "seconds", "B": "bytes", "B/s": "bytes per second", "/s": "per second",
            "CPUs": "CPUs"}.get(unit, "")


def _label(name: str, unit: str) -> str:
    words = unit_words(unit)
    return f"{name} ({words})" if words else name


@dataclass(frozen=True)
class Plot:
    """One chosen plot: a metric against an axis, maybe faceted, other axes pinned."""

    metric: Metric
    axis: AxisInfo
    """The x axis (the pseudo-axis ``kernel`` when the sweep has no numeric swept axis)."""
    facet: AxisInfo | None = None
    facet_values: tuple[Any, ...] = ()
    pinned: dict[str, Any] = field(default_factory=dict)
    """Other swept axes held at one value: column → value."""
    scatter: bool = False

    @property
    def id(self) -> str:
        return re.sub(r"[^A-Za-z0-9_-]", "-", f"plot-{self.metric.column}-{self.axis.column}")

    @property
    def title(self) -> str:
        return f"{self.metric.title} vs {self.axis.column}"

    @property
    def xlabel(self) -> str:
        return _label(self.axis.column, self.axis.unit)

    def y_scale(self, data: SweepData) -> tuple[float, str]:
        """The factor the metric is divided by on the y axis and the label that says so:
        bytes in the binary unit of the largest value (``memory peak (MiB)``), seconds in
        ``s``/``ms``/``µs``/``ns``, counts as they are (``COW copies (per run)``)."""
        highest = max((abs(float(row[f"{self.metric.column}_{s}"])) for row in data.summary
                       for s in ("mean", "ci95_high")
                       if is_number(row.get(f"{self.metric.column}_{s}"))), default=0.0)
        for factor, name in _Y_UNITS.get(self.metric.unit, ()):
            if highest >= factor or factor == _Y_UNITS[self.metric.unit][-1][0]:
                return factor, f"{self.metric.title} ({name})"
        return 1.0, f"{self.metric.title} (per run)"

    def caption(self, data: SweepData) -> str:
        """What the plot shows, in words (the figure's caption, after its title)."""
        lines = "one point per kernel" if self.axis.column == "kernel" else \
            "one line per kernel" if not self.scatter else "one marker style per kernel"
        parts = [f"{lines}; bars and bands are the 95% interval over "
                 f"{data.replications} replication{'s' if data.replications != 1 else ''}"]
        if self.facet is not None:
            shown = "" if len(self.facet_values) == len(self.facet.values) else \
                f" ({len(self.facet_values)} of {len(self.facet.values)} values)"
            parts.append(f"a panel per {self.facet.column}{shown}")
        if self.pinned:
            parts.append("with " + ", ".join(
                f"{column} = {format_value(value, data.axis(column).unit)}"
                for column, value in self.pinned.items()))
        if self.scatter:
            parts.append(f"the other axes vary ({data.design} design)")
        return "; ".join(parts) + "."


def _spread(values: Sequence[Any], most: int) -> tuple[Any, ...]:
    if len(values) <= most:
        return tuple(values)
    picks = np.linspace(0, len(values) - 1, most).round().astype(int)
    return tuple(values[i] for i in dict.fromkeys(picks.tolist()))


def _measured(data: SweepData, metric: Metric) -> str | None:
    """None when the metric has a nonzero mean somewhere, else why it is not plotted."""
    means = [row.get(f"{metric.column}_mean") for row in data.summary]
    numbers = [float(m) for m in means if is_number(m)]
    if not numbers:
        return f"{metric.title}: not measured in any run"
    if not any(numbers):
        return f"{metric.title}: 0 in every run"
    return None


def choose_plots(data: SweepData) -> tuple[list[Plot], list[str]]:
    """The plots of a sweep (see the module docstring) and a line per metric left out."""
    metrics, skipped = [], []
    for metric in KEY_METRICS:
        reason = _measured(data, metric)
        if reason is None:
            metrics.append(metric)
        else:
            skipped.append(reason)
    swept = data.swept
    xs = [axis for axis in swept if axis.numeric]
    sampled = data.design != "grid"
    plots = []
    if not xs:
        kernel = AxisInfo("kernel", "kernel", data.kernels, False, "")
        facet = swept[0] if swept and not sampled else None
        for metric in metrics:
            plots.append(Plot(metric, kernel, facet, _spread(facet.values, MAX_FACETS) if facet
                              else (), scatter=sampled))
        return plots, skipped
    for axis in xs:
        others = [other for other in swept if other is not axis]
        facet = others[0] if others and not sampled else None
        pinned = {} if sampled else {o.column: o.values[len(o.values) // 2] for o in others[1:]}
        for metric in metrics:
            plots.append(Plot(metric, axis, facet,
                              _spread(facet.values, MAX_FACETS) if facet else (), pinned,
                              scatter=sampled and len(swept) > 1))
    return plots, skipped


def _rows(data: SweepData, plot: Plot, facet_value: Any) -> list[Row]:
    rows = []
    for row in data.summary:
        if not row.get("replications"):
            continue
        if plot.facet is not None and row.get(plot.facet.column) != facet_value:
            continue
        if any(row.get(column) != value for column, value in plot.pinned.items()):
            continue
        rows.append(row)
    return rows


def _formatter(unit: str) -> Any:
    from matplotlib.ticker import FuncFormatter
    return FuncFormatter(lambda value, _: format_value(value, unit))


def _series(rows: Sequence[Row], plot: Plot, kernel: str, position: dict[Any, float],
            factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x, mean, and the interval's lower and upper distances (NaN: no interval), by x."""
    stem = plot.metric.column
    points = []
    for row in rows:
        mean = row.get(f"{stem}_mean")
        if row["kernel"] != kernel or not is_number(mean):
            continue
        x = position[kernel] if plot.axis.column == "kernel" else float(row[plot.axis.column])
        low, high = row.get(f"{stem}_ci95_low"), row.get(f"{stem}_ci95_high")
        # the metrics are never negative: an interval reaching below zero is drawn to zero
        below = mean - max(float(low), 0.0) if is_number(low) else np.nan
        above = float(high) - mean if is_number(high) else np.nan
        points.append((x, float(mean), below, above))
    points.sort()
    columns = np.array(points, dtype=float).reshape(-1, 4).T
    return columns[0], columns[1] / factor, columns[2] / factor, columns[3] / factor


def _draw_panel(axes: Any, data: SweepData, plot: Plot, rows: Sequence[Row],
                factor: float) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter
    position = {kernel: float(i) for i, kernel in enumerate(data.kernels)}
    count = len(data.kernels)
    for i, kernel in enumerate(data.kernels):
        x, mean, below, above = _series(rows, plot, kernel, position, factor)
        if not len(x):
            continue
        color = f"C{i % 10}"
        joined = not plot.scatter and plot.axis.column != "kernel"
        axes.errorbar(x, mean, yerr=np.vstack([below, above]), color=color,
                      # the first kernels drawn larger: a line equal to a later one shows
                      marker=MARKERS[i % len(MARKERS)], markersize=4 + 2.0 * (count - 1 - i),
                      capsize=3, linewidth=1.2 + 1.2 * (count - 1 - i) / max(count - 1, 1),
                      linestyle="-" if joined else "none", label=f"kernel {kernel}")
        if joined and np.isfinite(below).any():
            axes.fill_between(x, mean - np.nan_to_num(below), mean + np.nan_to_num(above),
                              color=color, alpha=0.12, linewidth=0)
    if plot.axis.column == "kernel":
        axes.xaxis.set_major_locator(FixedLocator(list(position.values())))
        axes.set_xticklabels(list(position), fontsize=8)
        axes.set_xlim(-0.5, len(position) - 0.5)
    else:
        values = [float(v) for v in plot.axis.values]
        if min(values) > 0 and max(values) / min(values) >= 20:
            axes.set_xscale("log")
        if len(values) <= 8:
            axes.xaxis.set_major_locator(FixedLocator(values))
            axes.xaxis.set_minor_locator(FixedLocator([]))
        axes.xaxis.set_major_formatter(_formatter(plot.axis.unit))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.4g}"))
    axes.grid(True, alpha=0.3)
    axes.set_xlabel(plot.xlabel)


def render_svg(data: SweepData, plot: Plot) -> str:
    """The plot as an ``<svg>`` element (no XML prologue), ready to inline in HTML."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": plot.id,
                                "font.size": 9, "axes.titlesize": 9}):
        facets = plot.facet_values if plot.facet is not None else (None,)
        wide = len(facets) > 1
        figure = Figure(figsize=(min(3.4 * len(facets) + 0.9, 11.0) if wide else 5.6, 3.7),
                        layout="constrained")
        factor, ylabel = plot.y_scale(data)
        FigureCanvasAgg(figure)
        panels = figure.subplots(1, len(facets), sharey=True, squeeze=False)[0]
        for panel, value in zip(panels, facets, strict=True):
            _draw_panel(panel, data, plot, _rows(data, plot, value), factor)
            if plot.facet is not None:
                panel.set_title(f"{plot.facet.column} = {format_value(value, plot.facet.unit)}")
        panels[0].set_ylabel(ylabel)
        if plot.metric.column != "memory_peak_bytes":  # a peak is mostly the resident set
            panels[0].set_ylim(bottom=0)  # once all panels are drawn: they share y
        handles, labels = panels[0].get_legend_handles_labels()
        if handles:
            figure.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 6),
                          fontsize=8, frameon=False)
        out = io.StringIO()
        figure.savefig(out, format="svg", metadata={"Date": None})
    text = out.getvalue()
    svg = text[text.index("<svg"):]
    return svg.replace("<svg ", f'<svg role="img" aria-label="{html.escape(plot.title)}" ', 1)
