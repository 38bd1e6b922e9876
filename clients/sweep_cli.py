"""``cowsim sweep``: a what-if study, many runs of one spec, into a directory of tables.

``cowsim sweep SWEEP [--executor local|dask-local|dask://HOST:PORT] [--workers N]
[--out DIR] [--dry-run]`` validates the sweep and every one of its points
(:func:`cowsim.sim.plan_sweep`: each point's spec by ``parse_spec`` and
``plan_run``) before anything runs, then runs the runs not stored in DIR yet on
the executor, with a progress bar over runs (done, running, failed, ETA) on a
terminal and a line per tenth otherwise, and writes the tables
(:mod:`cowsim.service.sweeps`).  ``--out`` defaults to ``sweeps/NAME``;
``--workers`` to the CPUs of this machine; ``--dry-run`` stops after the
validation and says how many runs there are and how many are stored.
``cowsim sweep --schema`` prints the JSON Schema of sweep specs.

Exit status: 0 every run stored; 1 some run failed (the tables are written, the
failed runs marked, failures.json says why; run it again to retry them); 2 invalid
input, one line (an option, the sweep file's field, or the axis and value of an
invalid point); 3 the Dask scheduler unreachable; 130 Ctrl-C (every finished run
stays stored: run it again to resume).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cowsim.clients.output import say
from cowsim.service.executors import ExecutorUnavailableError, check_executor, open_executor
from cowsim.service.sweeps import SweepProgress, SweepStore, run_sweep, sweep_runs
from cowsim.sim import escape_control, load_sweep, plan_sweep, sweep_json_schema

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_UNREACHABLE = 0, 1, 2, 3

__all__ = ["add_command", "main"]


def add_command(commands: Any) -> None:
    sweep = commands.add_parser(
        "sweep", help="run a what-if sweep of a workload spec",
        description="Run every point of a sweep spec (axes over a base workload spec) and "
                    "write the tables (runs and summary, Parquet and CSV) into --out. Runs "
                    "already stored there are not run again.")
    sweep.add_argument("sweep", metavar="SWEEP", nargs="?")
    sweep.add_argument("--executor", default="local",
                       help="local (the default), dask-local or dask://HOST:PORT")
    sweep.add_argument("--workers", type=int, default=None,
                       help="worker processes (default: the CPUs of this machine)")
    sweep.add_argument("--out", type=Path, help="the sweep's directory (default: sweeps/NAME)")
    sweep.add_argument("--dry-run", action="store_true",
                       help="validate every point, count the runs, run nothing")
    sweep.add_argument("--schema", action="store_true",
                       help="print the JSON Schema of sweep specs")


class _Bar:
    """The progress display: a rich bar on a terminal, a line per tenth otherwise."""

    def __init__(self, name: str, console: Console, live: bool) -> None:
        self.name = name
        self.live = live
        self.tenth = -1
        self.failed = 0
        self.progress: Progress | None = None
        self.task: Any = None
        if live:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("runs · {task.fields[running]} running · {task.fields[failed]} failed"),
                TimeRemainingColumn(), console=console, transient=True)

    def __enter__(self) -> _Bar:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, state: SweepProgress) -> None:
        if state.failed > self.failed and state.last_error is not None:
            self.failed = state.failed
            self._line(f"a run failed: {state.last_error}")
        if self.progress is not None:
            if self.task is None:
                self.task = self.progress.add_task(escape(escape_control(self.name)),
                                                   total=state.total, completed=state.done,
                                                   running=state.running, failed=state.failed)
            self.progress.update(self.task, completed=state.done + state.failed,
                                 running=state.running, failed=state.failed)
            return
        tenth = (10 * (state.done + state.failed)) // max(state.total, 1)
        if tenth > self.tenth:
            self.tenth = tenth
            self._line(f"sweep {self.name}: {state.done}/{state.total} runs stored, "
                       f"{state.failed} failed")

    def _line(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(escape(escape_control(text)), highlight=False)
        else:
            print(escape_control(text), flush=True)


def main(args: argparse.Namespace, console: Console) -> int:
    if args.schema:
        print(json.dumps(sweep_json_schema(), indent=2))
        return EXIT_OK
    if args.sweep is None:
        say("sweep: give a SWEEP file (or --schema)")
        return EXIT_INVALID
    workers = args.workers if args.workers is not None else os.cpu_count() or 1
    check_executor(args.executor, workers)
    sweep, base_dir = load_sweep(args.sweep)
    plan = plan_sweep(sweep, source=args.sweep, base_dir=base_dir)
    runs = sweep_runs(plan)
    out = args.out if args.out is not None else Path("sweeps") / sweep.name
    if args.dry_run:
        keys = {run.key for run in runs}
        stored = sum((out / "runs" / f"{key}.json").is_file() for key in keys)
        print(f"sweep {sweep.name}: {len(plan.points)} points × {sweep.replications} "
              f"replications = {len(runs)} runs ({len(keys)} distinct), {stored} stored in {out}")
        return EXIT_OK
    store = SweepStore.prepare(out, plan, runs)
    try:
        executor = open_executor(args.executor, workers)
    except ExecutorUnavailableError as exc:
        say(str(exc))
        return EXIT_UNREACHABLE
    try:
        with _Bar(sweep.name, console, sys.stderr.isatty()) as bar:
            report = run_sweep(plan, store, executor, runs=runs, on_progress=bar.update)
    finally:
        executor.close()
    state = report.progress
    print(f"sweep {sweep.name}: {state.total} runs, {state.reused} already stored, "
          f"{report.ran - state.failed} run now, {state.failed} failed; tables in {out}/ "
          "(runs.csv, summary.csv, .parquet)")
    if report.failures:
        say(f"{len(report.failures)} runs failed (see {out / 'failures.json'}); run the sweep "
            "again to retry them")
        return EXIT_FAILED
    return EXIT_OK
