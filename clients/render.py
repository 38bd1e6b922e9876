"""Terminal output for the CLI: workload run summaries, scenario results and the matrix, kernels.

Rendering only: everything here takes finished results and prints them with
rich (or as Markdown, for documents).  Text that came from the user (file,
process, region and pipe names) is printed as plain :class:`~rich.text.Text`
with control characters escaped: never parsed as rich markup (a name like
``[/]`` would otherwise be an error) nor passed raw to the terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cowsim.sim import (
    ERAS,
    SUMMARY_COUNTERS,
    WHAT_IFS,
    Generation,
    ScenarioResult,
    changes_in,
    escape_control,
    format_bytes,
    format_seconds,
)


def plain(text: object, style: str = "") -> Text:
    """User-supplied text as plain rich Text (no markup, control characters escaped)."""
    return Text(escape_control(str(text)), style=style)


def _kinds(result: ScenarioResult) -> str:
    return ",".join(sorted({violation.kind for violation in result.violations}))


def _cell_text(result: ScenarioResult) -> str:
    verdict = "pass" if result.ok else "FAIL"
    kinds = _kinds(result)
    return f"{verdict} ({kinds})" if kinds else verdict


def _column(generation: Generation) -> str:
    return f"{generation.label} ({generation.era})"


def _row_name(result: ScenarioResult) -> str:
    return result.file.rsplit("/", 1)[-1]


def matrix(console: Console, files: Sequence[str], generations: Sequence[Generation],
           results: dict[tuple[str, str], ScenarioResult]) -> None:
    """The scenario × generation matrix: pass/FAIL per cell, with violation kinds."""
    table = Table(title="scenario × kernel generation", show_lines=False)
    table.add_column("scenario", overflow="fold")
    for generation in generations:
        table.add_column(_column(generation), justify="center")
    for file in files:
        cells: list[Text | str] = []
        first = results[(file, generations[0].label)]
        for generation in generations:
            result = results[(file, generation.label)]
            style = "green" if result.ok else "bold red"
            cells.append(Text(_cell_text(result), style=style))
        table.add_row(plain(_row_name(first)), *cells)
    console.print(table)
    console.print("pass/FAIL: the scenario's expectations (what a correct kernel delivers); "
                  "in brackets the violations the oracles saw.")


def matrix_markdown(files: Sequence[str], generations: Sequence[Generation],
                    results: dict[tuple[str, str], ScenarioResult]) -> str:
    header = "| scenario | " + " | ".join(_column(g) for g in generations) + " |"
    rule = "|---|" + "---|" * len(generations)
    lines = [header, rule]
    for file in files:
        first = results[(file, generations[0].label)]
        cells = []
        for generation in generations:
            result = results[(file, generation.label)]
            text = _cell_text(result)
            cells.append(f"**{text}**" if not result.ok else text)
        lines.append(f"| {_row_name(first)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detail(console: Console, result: ScenarioResult) -> None:
    """One scenario on one kernel: expectations, violations, counters."""
    verdict = Text("PASS", style="green") if result.ok else Text("FAIL", style="bold red")
    title = Text.assemble(plain(f"{result.scenario} — {result.file} — kernel {result.kernel} "
                                f"(era {result.era}): "), verdict)
    console.print(title)
    if result.expectations:
        table = Table(show_header=True, box=None, padding=(0, 1))
        for column in ("step", "expectation", "expected", "observed", ""):
            table.add_column(column)
        for expectation in result.expectations:
            mark = Text("ok", style="green") if expectation.ok else Text("FAILED", style="bold red")
            table.add_row(str(expectation.step), plain(expectation.what),
                          plain(_fmt(expectation.expected)), plain(_fmt(expectation.observed)), mark)
        console.print(table)
    for violation in result.violations:
        console.print(plain(f"  {violation.kind} at step {violation.step}: {violation.detail}",
                            style="yellow"))
    summary = ", ".join(f"{name} {result.counters.get(name, 0)}" for name in SUMMARY_COUNTERS)
    console.print(f"  counters: {summary}")


def _fmt(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        return str(value)
    return hex(value) if value > 9 else str(value)


def kernels(console: Console) -> None:
    """The eras, their version ranges and the rule changes inside each."""
    table = Table(title="kernel generations (docs/kernel-semantics.md §0)", show_lines=True)
    table.add_column("era")
    table.add_column("versions")
    table.add_column("runs as")
    table.add_column("policy")
    table.add_column("rules that change here")
    for era in ERAS:
        lines = [f"{'.'.join(map(str, c.version))}: {c.field} = "
                 f"{getattr(c.value, 'value', c.value)} — {c.commit}" for c in changes_in(era)]
        if era is ERAS[0]:
            lines.insert(0, "baseline: wp_reuse = mapcount, nothing pin-aware")
        table.add_row(era.id, era.range_label, ".".join(map(str, era.representative)),
                      era.summary, "\n".join(lines))
    console.print(table)
    if WHAT_IFS:
        what_ifs = Table(title="what-if policies (never merged)")
        what_ifs.add_column("name")
        what_ifs.add_column("based on")
        what_ifs.add_column("changes")
        what_ifs.add_column("source")
        for name, (base, overrides, source) in WHAT_IFS.items():
            what_ifs.add_row(name, base, ", ".join(
                f"{key} = {getattr(value, 'value', value)}" for key, value in overrides.items()),
                source)
        console.print(what_ifs)
    console.print("Select with --kernel VERSION (e.g. 5.10, 6.8), an era id (e.g. B, C') "
                  "or a what-if name; --kernel all runs one version per era.")


SUMMARY_ROWS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("COW copies", lambda m: f"{m['cow_copies_total']:,}"),
    ("  by cause", lambda m: ", ".join(f"{k} {v:,}" for k, v in m["cow_copies_by_cause"].items())
     or "—"),
    ("write-fault reuses", lambda m: f"{m['wp_reuses_total']:,}"),
    ("page faults", lambda m: f"{m['page_faults_total']:,}"),
    ("TLB shootdowns / IPIs", lambda m: f"{m['tlb_shootdowns_total']:,} / {m['tlb_ipis_total']:,}"),
    ("TLB misses", lambda m: f"{m['tlb_misses_total']:,}"),
    ("fork pause p50 / p99 / max", lambda m: " / ".join(
        format_seconds(m["fork_pause_seconds"][k]) for k in ("p50", "p99", "max"))),
    ("request latency p50 / p99 / p999", lambda m: " / ".join(
        format_seconds(m["request_latency_seconds"][k]) for k in ("p50", "p99", "p999"))),
    ("memory peak", lambda m: format_bytes(m["memory_peak_bytes"])),
    ("lost DMA writes", lambda m: f"{m['dma_lost_writes_total']:,}"),
    ("stale pin reads", lambda m: f"{m['stale_pin_reads_total']:,}"),
    ("leaks", lambda m: f"{m['leaks_total']:,}"),
)


def run_summary(console: Console, results: list[dict[str, Any]]) -> None:
    """A workload run's result (``cowsim run``, ``cowsim result``): one column per result."""
    table = Table(title=Text(escape_control(str(results[0]["name"]))))
    table.add_column("metric")
    for result in results:
        table.add_column(Text(f"{result['kernel']} ({result['era']})"), justify="right")
    for label, value in SUMMARY_ROWS:
        table.add_row(label, *(value(result["metrics"]) for result in results))
    console.print(table)
    for result in results:
        wall = result["wall_seconds"] or 0.0
        console.print(Text(f"{result['kernel']}: {result['sim_seconds']:g} s simulated in "
                           f"{wall:.2f} s wall ({result['sim_seconds'] / max(wall, 1e-9):.1f}× "
                           "real time)"))
