"""``cowsim run`` and ``cowsim compare``: workload specs on the simulated machine.

``cowsim run SPEC [--kernel K] [--seed N] [--json] [--out DIR]`` runs one
spec with a progress bar (simulated time, events per second), prints a
summary and, with ``--out``, writes ``result.json`` and the time series
(``series/*.csv``).  ``cowsim compare SPEC --kernel 5.10 --kernel 6.8``
runs one spec on several generations side by side.  Invalid specs: one line
naming the field, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cowsim.sim import run as sim_run
from cowsim.sim.kernel.generations import KernelVersionError, generation_for
from cowsim.sim.machine.costs import cost_model
from cowsim.sim.run import Simulation
from cowsim.sim.spec import SpecError, WorkloadSpec, json_schema, load_spec
from cowsim.sim.units import format_bytes, format_seconds

EXIT_OK, EXIT_INVALID = 0, 2


def add_commands(commands: Any) -> None:
    run = commands.add_parser("run", help="run a workload spec on the simulated machine")
    run.add_argument("spec", metavar="SPEC")
    run.add_argument("--kernel", help="override the spec's kernel (version, era or what-if)")
    run.add_argument("--seed", type=int, help="override the spec's seed")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.add_argument("--out", type=Path, help="write result.json and time series here")
    compare = commands.add_parser("compare", help="run one spec on several kernels side by side")
    compare.add_argument("spec", metavar="SPEC")
    compare.add_argument("--kernel", action="append", required=True,
                         help="a kernel to run (repeat)")
    compare.add_argument("--seed", type=int)
    compare.add_argument("--json", action="store_true")
    commands.add_parser("schema", help="print the JSON Schema of workload specs")


def _validated(args: argparse.Namespace) -> tuple[WorkloadSpec, list[str]]:
    spec = load_spec(args.spec)
    kernels = args.kernel if isinstance(args.kernel, list) else [args.kernel or spec.kernel]
    for kernel in kernels:
        try:
            generation_for(kernel)
        except KernelVersionError as exc:
            raise SpecError(f"--kernel: {exc}") from None
    try:
        costs = cost_model(spec.machine.profile, **spec.machine.costs)
    except ValueError as exc:
        raise SpecError(f"{args.spec}: field 'machine': {exc}") from None
    resident = sum(process.memory for process in spec.processes)
    if resident > costs.memory_bytes:
        raise SpecError(f"{args.spec}: field 'processes': resident memory {format_bytes(resident)} "
                        f"exceeds the machine's {format_bytes(costs.memory_bytes)} "
                        f"(machine.costs.memory_bytes)")
    return spec, kernels


def _run_one(spec: WorkloadSpec, kernel: str, seed: int | None, console: Console,
             show_progress: bool) -> tuple[dict[str, Any], Simulation]:
    """Run on one kernel (with a progress bar on a terminal); the result and the simulation."""
    if not show_progress:
        sim, wall = sim_run.simulate(spec, kernel=kernel, seed=seed)
        return sim_run.result(sim, wall_seconds=wall), sim
    started = time.perf_counter()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.fields[sim]} simulated · {task.fields[rate]} events/s"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(f"{spec.name} on {kernel}", total=spec.duration, sim="0 s", rate="0")

        def progress(done: float, total: float, events: int) -> None:
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.update(task, completed=done, sim=format_seconds(done),
                       rate=f"{events / elapsed:,.0f}")

        sim, wall = sim_run.simulate(spec, kernel=kernel, seed=seed, progress=progress)
        return sim_run.result(sim, wall_seconds=wall), sim


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


def _summary(console: Console, results: list[dict[str, Any]]) -> None:
    table = Table(title=results[0]["name"])
    table.add_column("metric")
    for result in results:
        table.add_column(f"{result['kernel']} ({result['era']})", justify="right")
    for label, value in SUMMARY_ROWS:
        table.add_row(label, *(value(result["metrics"]) for result in results))
    console.print(table)
    for result in results:
        wall = result["wall_seconds"] or 0.0
        console.print(f"{result['kernel']}: {result['sim_seconds']:g} s simulated in {wall:.2f} s "
                      f"wall ({result['sim_seconds'] / max(wall, 1e-9):.1f}× real time)")


def _write_out(out: Path, result: dict[str, Any], recorder_series: Any) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stable = dict(result, wall_seconds=None)  # byte-identical for the same spec and seed
    (out / "result.json").write_text(json.dumps(stable, indent=2, sort_keys=True) + "\n")
    (out / "timing.json").write_text(json.dumps({"wall_seconds": result["wall_seconds"]}) + "\n")
    if recorder_series is not None:
        recorder_series(out / "series")


def main(args: argparse.Namespace, console: Console) -> int:
    if args.command == "schema":
        print(json.dumps(json_schema(), indent=2))
        return EXIT_OK
    try:
        spec, kernels = _validated(args)
    except SpecError as exc:
        sys.stderr.write(f"cowsim: {exc}\n")
        return EXIT_INVALID
    show = not args.json and sys.stderr.isatty()
    if args.command == "run":
        outcome, sim = _run_one(spec, kernels[0], args.seed, console, show)
        if args.out is not None:
            _write_out(args.out, outcome, sim.recorder.write_series)
        if args.json:
            print(json.dumps(outcome, indent=2, sort_keys=True))
        else:
            _summary(console, [outcome])
        return EXIT_OK
    outcomes = [_run_one(spec, kernel, args.seed, console, show)[0] for kernel in kernels]
    if args.json:
        print(json.dumps(outcomes, indent=2, sort_keys=True))
    else:
        _summary(console, outcomes)
    return EXIT_OK
