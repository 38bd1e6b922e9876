"""A sweep's report: one self-contained HTML page built from its DIR.

:func:`build_report` is a pure function of :class:`~cowsim.clients.report_data.SweepData`:
the page holds its own CSS, every plot as inline SVG (:mod:`cowsim.clients.report_plots`),
and no script, link, font or image from anywhere else, so it opens offline and can be
mailed as one file.  In order:

1. the sweep: name, description, design, points × replications, kernels, the swept axes
   with their values and the pinned ones (one-value axes), the machine's memory;
2. **findings** (:mod:`cowsim.clients.report_findings`), each naming its numbers;
3. **plots** chosen from the axes, each a ``<figure id="plot-METRIC-AXIS"
   data-metric=… data-axis=…>`` with a caption saying what it shows, and a line naming
   the metrics left out (zero everywhere);
4. the **summary table**: a row per point, the swept axes and the key metrics as mean
   and 95% interval, formatted with units (``64.3 MiB``, ``951 µs``); cells where a
   violation appears or the memory peak exceeds the machine are marked;
5. the **failed runs** with their error.

:func:`write_report` reads DIR, builds the page and writes DIR/report.html through a
temporary file renamed into place; every problem is one InvalidInput naming DIR.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cowsim.clients.report_data import (
    KEY_METRICS,
    SweepData,
    format_value,
    is_number,
    load_sweep_dir,
)
from cowsim.clients.report_findings import Finding, findings
from cowsim.clients.report_plots import Plot, choose_plots, render_svg
from cowsim.service.sweep_table import write_atomic
from cowsim.sim import InvalidInput, __version__

__all__ = ["MAX_TABLE_ROWS", "REPORT_NAME", "ReportOutcome", "build_report", "write_report"]

REPORT_NAME = "report.html"
MAX_TABLE_ROWS = 500
"""Summary rows shown at most (every row is in summary.csv)."""

Row = dict[str, Any]
TEXT = ' class="text"'

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
       color: #1d232b; margin: 0 auto; max-width: 1120px; padding: 20px 28px 40px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 28px 0 8px;
     border-bottom: 1px solid #d8dde3; padding-bottom: 4px; }
code { font: 13px ui-monospace, "DejaVu Sans Mono", monospace; background: #f1f3f5;
       padding: 1px 4px; border-radius: 3px; }
.meta { color: #4a5563; margin: 2px 0; }
ul.findings { padding-left: 20px; } ul.findings li { margin: 6px 0; }
li.finding-kernel::marker { content: "◆  "; color: #1f6fb5; }
li.finding-violations::marker, li.finding-failures::marker { content: "▲  "; color: #c0392b; }
li.finding-memory::marker { content: "■  "; color: #d68910; }
li.finding-agree::marker { content: "●  "; color: #7b8794; }
li.finding-clean::marker { content: "✔  "; color: #1e8449; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(500px, 1fr)); gap: 8px 24px; }
figure.plot { margin: 10px 0 14px; } figure.plot.wide { grid-column: 1 / -1; }
figure.plot svg { max-width: 100%; height: auto; }
figcaption { color: #4a5563; font-size: 13px; margin-bottom: 2px; }
figcaption b { color: #1d232b; font-size: 14px; }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { padding: 4px 8px; border-bottom: 1px solid #e3e7eb; text-align: right;
         vertical-align: top; white-space: nowrap; }
th { background: #f1f3f5; position: sticky; top: 0; white-space: normal; }
td.text, th.text { text-align: left; }
tbody tr:nth-child(even) { background: #fafbfc; }
td small { color: #6b7684; display: block; font-size: 11px; }
td.bad { background: #fdecea; color: #a93226; font-weight: 600; }
td.error { white-space: normal; text-align: left; font-family: ui-monospace, monospace; }
.scroll { overflow-x: auto; } footer { margin-top: 32px; color: #6b7684; font-size: 12px; }
"""


@dataclass(frozen=True)
class ReportOutcome:
    """What :func:`write_report` wrote."""

    path: Path
    plots: int
    findings: int


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _header(data: SweepData) -> str:
    points = len(data.summary)
    completed, failed = data.completed_runs, len(data.failed_runs)
    lines = [f"<h1>Sweep <code>{_e(data.name)}</code></h1>"]
    if data.description:
        lines.append(f'<p class="meta">{_e(data.description)}</p>')
    lines.append(
        f'<p class="meta">{_e(data.design)} design · {points} points × {data.replications} '
        f"replications = {len(data.runs)} runs ({completed} completed, {failed} failed) · "
        f"kernels {_e(', '.join(data.kernels))}</p>")
    swept = [f"<code>{_e(a.column)}</code> ({_e(', '.join(format_value(v, a.unit) for v in a.values))})"
             for a in data.swept]
    if swept:
        lines.append(f'<p class="meta">Swept: {", ".join(swept)}.</p>')
    if data.fixed:
        pinned = [f"<code>{_e(a.column)}</code> = {_e(format_value(a.values[0], a.unit))}"
                  for a in data.fixed if a.values]
        lines.append(f'<p class="meta">Pinned: {", ".join(pinned)}.</p>')
    memories = sorted(set(data.machine_memory.values()))
    if memories:
        shown = ", ".join(format_value(m, "B") for m in memories)
        lines.append(f'<p class="meta">Machine memory: {_e(shown)}.</p>')
    elif data.memory_note:
        lines.append(f'<p class="meta">Machine memory unknown: {_e(data.memory_note)}.</p>')
    return "<header>\n" + "\n".join(lines) + "\n</header>"


def _findings(items: Sequence[Finding]) -> str:
    rows = "\n".join(f'<li class="finding finding-{_e(f.kind)}">{_e(f.text)}</li>' for f in items)
    return f'<section id="findings">\n<h2>Findings</h2>\n<ul class="findings">\n{rows}\n</ul>\n</section>'


def _figure(data: SweepData, plot: Plot) -> str:
    wide = " wide" if plot.facet is not None else ""
    return (f'<figure class="plot{wide}" id="{_e(plot.id)}" data-metric="{_e(plot.metric.column)}" '
            f'data-axis="{_e(plot.axis.column)}">\n'
            f"<figcaption><b>{_e(plot.title)}</b>: {_e(plot.caption(data))}</figcaption>\n"
            f"{render_svg(data, plot)}\n</figure>")


def _plots(data: SweepData, plots: Sequence[Plot], skipped: Sequence[str]) -> str:
    parts = ['<section id="plots">', "<h2>Plots</h2>", '<div class="plots">']
    parts.extend(_figure(data, plot) for plot in plots)
    parts.append("</div>")
    if not plots:
        parts.append('<p class="meta">Nothing to plot: every key metric is zero or missing.</p>')
    if skipped:
        parts.append(f'<p class="meta">Not plotted: {_e("; ".join(skipped))}.</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _cell(row: Row, stem: str, unit: str, bad: bool) -> str:
    mean = row.get(f"{stem}_mean")
    low, high = row.get(f"{stem}_ci95_low"), row.get(f"{stem}_ci95_high")
    interval = (f"<small>{_e(format_value(low, unit))} – {_e(format_value(high, unit))}</small>"
                if is_number(low) and is_number(high) else "")
    marked = ' class="bad"' if bad else ""
    return f"<td{marked}>{_e(format_value(mean, unit))}{interval}</td>"


def _table(head: Iterable[tuple[str, bool]], body: Iterable[str]) -> str:
    header = "".join(f'<th{TEXT if text else ""}>{_e(name)}</th>' for name, text in head)
    rows = "\n".join(body)
    return f'<div class="scroll"><table>\n<thead><tr>{header}</tr></thead>\n<tbody>\n{rows}\n' \
           "</tbody>\n</table></div>"


def _summary(data: SweepData) -> str:
    swept = data.swept
    head = [("point", False), *((a.column, False) for a in swept), ("kernel", True),
            ("era", True), ("runs", False), *((m.title, False) for m in KEY_METRICS)]
    body = []
    for row in data.summary[:MAX_TABLE_ROWS]:
        memory = data.machine_memory.get(int(row["point"]))
        cells = [f"<td>{_e(row['point'])}</td>"]
        cells += [f"<td>{_e(format_value(row.get(a.column), a.unit))}</td>" for a in swept]
        cells += [f'<td class="text">{_e(row["kernel"])}</td>',
                  f'<td class="text">{_e(row.get("era", ""))}</td>']
        failed = f" ({row['failed']} failed)" if row.get("failed") else ""
        cells.append(f"<td>{_e(row.get('replications'))}{_e(failed)}</td>")
        for metric in KEY_METRICS:
            mean = row.get(f"{metric.column}_mean")
            bad = is_number(mean) and (
                (metric.column == "violations_total" and mean > 0)
                or (metric.column == "memory_peak_bytes" and memory is not None and mean > memory))
            cells.append(_cell(row, metric.column, metric.unit, bad))
        body.append(f"<tr>{''.join(cells)}</tr>")
    more = len(data.summary) - MAX_TABLE_ROWS
    note = f"the first {MAX_TABLE_ROWS} of {len(data.summary)} points; " if more > 0 else ""
    return ('<section id="summary">\n<h2>Summary</h2>\n'
            f'<p class="meta">Per point: the mean over its completed runs and, below it, the '
            f"95% interval (Student t; none under two runs). Marked: a violation, or a mean "
            f"memory peak above the machine's memory. {_e(note)}Every metric is in "
            "<code>summary.csv</code> (one row per run: <code>runs.csv</code>).</p>\n"
            f"{_table(head, body)}\n</section>")


def _failures(data: SweepData) -> str:
    failed = data.failed_runs
    if not failed:
        return '<section id="failures">\n<h2>Failed runs</h2>\n<p class="meta">None.</p>\n</section>'
    swept = data.swept
    head = [("point", False), ("replication", False), *((a.column, False) for a in swept),
            ("kernel", True), ("seed", False), ("error", True)]
    body = []
    for row in failed:
        error = row.get("error") or data.failures.get(str(row.get("key")), "failed")
        cells = [f"<td>{_e(row['point'])}</td>", f"<td>{_e(row.get('replication'))}</td>"]
        cells += [f"<td>{_e(format_value(row.get(a.column), a.unit))}</td>" for a in swept]
        cells += [f'<td class="text">{_e(row["kernel"])}</td>', f"<td>{_e(row.get('seed'))}</td>",
                  f'<td class="error">{_e(error)}</td>']
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<section id="failures">\n<h2>Failed runs</h2>\n<p class="meta">{len(failed)} runs '
            "have no result (run the sweep again to retry them).</p>\n"
            f"{_table(head, body)}\n</section>")


def build_report(data: SweepData) -> tuple[str, int, int]:
    """The report page, its number of plots and of findings."""
    plots, skipped = choose_plots(data)
    found = findings(data)
    page = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>cowsim sweep {_e(data.name)}</title>\n<style>{CSS}</style>\n</head>",
        "<body>",
        _header(data),
        _findings(found),
        _plots(data, plots, skipped),
        _summary(data),
        _failures(data),
        f"<footer>cowsim {_e(__version__)} · <code>cowsim report {_e(data.directory)}</code>"
        "</footer>",
        "</body>",
        "</html>",
        "",
    ])
    return page, len(plots), len(found)


def write_report(directory: Path) -> ReportOutcome:
    """Read DIR, build the report, write DIR/report.html atomically (InvalidInput naming DIR
    for a missing or unreadable sweep, one with no completed run, or a failed write)."""
    data = load_sweep_dir(directory)
    page, plots, found = build_report(data)
    path = directory / REPORT_NAME
    try:
        write_atomic(path, page.encode("utf-8"))
    except OSError as exc:
        raise InvalidInput(f"cannot write {REPORT_NAME}: {exc.strerror or exc}",
                           source=str(directory)) from None
    return ReportOutcome(path, plots, found)
