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

**On a server**: ``cowsim sweep SWEEP --server HOST:PORT [--out DIR] [--wait]
[--request-id ID]`` (and the connection options of ``cowsim submit``) sends the
sweep to a ``cowsim serve`` (SubmitSweep), with a ``base`` given as a path read
here and inlined.  The server validates every point and queues the runs (those
it knows are answered from its result cache); this prints ``SWEEP STATE — N
runs, C from the cache``.  With ``--wait`` or ``--out`` it follows the sweep
(WatchSweep: a bar over runs on a terminal, a line per tenth otherwise), and
with ``--out`` writes what the local sweep writes — sweep.json, runs/KEY.json,
runs.csv and summary.csv (the server's text, byte for byte the local tables),
runs.parquet, summary.parquet and failures.json — so ``cowsim report DIR``
reads it.  ``--request-id`` makes the submission idempotent: the same id
follows the same sweep again (after a Ctrl-C, say) instead of submitting it
twice.  Exit status as below, and as the remote-run commands: 1 the sweep FAILED
or was CANCELLED, 2 invalid input (the sweep's field path, a server limit,
credentials), 3 the server unreachable, 130 Ctrl-C (the sweep goes on on the
server).

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

import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cowsim.clients import service_cli
from cowsim.clients.output import say
from cowsim.clients.service_client import Client, ServiceCallError
from cowsim.service.executors import ExecutorUnavailableError, check_executor, open_executor
from cowsim.service.sweep_table import write_atomic
from cowsim.service.sweeps import (
    SweepProgress,
    SweepStore,
    manifest_tables,
    run_sweep,
    sweep_runs,
    write_table_files,
)
from cowsim.sim import InvalidInput, escape_control, load_sweep, plan_sweep, read_text, sweep_json_schema
from cowsim.v1 import cowsim_pb2 as pb

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

__all__ = ["add_command", "main"]


def add_command(commands: Any) -> None:
    sweep = commands.add_parser(
        "sweep", help="run a what-if sweep of a workload spec",
        parents=[service_cli.connection_parser()],
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
    sweep.add_argument("--wait", action="store_true",
                       help="with --server: follow the sweep to its end (--out does too)")
    sweep.add_argument("--request-id", metavar="ID",
                       help="with --server: make the submission idempotent (the same id "
                            "follows the same sweep)")


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

    def update(self, state: SweepProgress | pb.SweepProgress) -> None:
        last_error = getattr(state, "last_error", None)
        if state.failed > self.failed and last_error is not None:
            self.failed = state.failed
            self._line(f"a run failed: {last_error}")
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
    if args.server is not None:
        return _remote(args, console)
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


# -- on a server ----------------------------------------------------------------------------

def _sweep_text(path: str) -> tuple[str, str, pb.SpecFormat.ValueType]:
    """The sweep's name and the text to send: the file itself when its base is inline, else
    the sweep as JSON with the base file read and inlined (errors then name the sweep file's
    fields)."""
    sweep, base_dir = load_sweep(path)
    text = read_text(path)
    if isinstance(sweep.base, dict):
        return sweep.name, text, pb.SPEC_FORMAT_UNSPECIFIED
    base_path = base_dir / sweep.base
    try:
        base = yaml.safe_load(read_text(base_path))
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"cannot parse: {str(exc).splitlines()[0]}", source=str(base_path)) from None
    data["base"] = base
    return sweep.name, json.dumps(data), pb.SPEC_FORMAT_JSON


def _check_out(out: Path, name: str) -> None:
    """--out before anything is sent: a directory, empty or holding this sweep."""
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"{out} exists and is not a directory", source="--out")
    manifest = out / "sweep.json"
    if manifest.exists():
        try:
            previous = json.loads(manifest.read_text()).get("name")
        except (OSError, ValueError, AttributeError):
            previous = None
        if previous != name:
            raise InvalidInput(f"{out} holds sweep {previous!r}, not {name!r}; give another "
                               "--out", source="--out")


def _write_out(client: Client, sweep: pb.Sweep, out: Path) -> None:
    """The local sweep's files from the server's answer: sweep.json, runs/KEY.json (each
    result fetched), the CSV tables as the server sent them, Parquet from the same rows."""
    store = SweepStore(out)
    store.runs.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(sweep.sweep_json)
    results: dict[str, Any] = {}
    for run in sweep.runs:
        if run.state != pb.RUN_STATE_SUCCEEDED or run.key in results:
            continue
        result = json.loads(client.get(run.run_id).result.result_json)
        results[run.key] = result
        store.store(run.key, result)
    failures = json.loads(sweep.failures_json or "{}")
    write_atomic(out / "sweep.json", sweep.sweep_json.encode())
    write_table_files(out, manifest_tables(manifest, results, failures), failures)
    write_atomic(out / "runs.csv", sweep.runs_csv.encode())
    write_atomic(out / "summary.csv", sweep.summary_csv.encode())


def _remote(args: argparse.Namespace, console: Console) -> int:
    if args.sweep is None:
        say("sweep: give a SWEEP file")
        return EXIT_INVALID
    if args.executor != "local" or args.workers is not None or args.dry_run:
        raise InvalidInput("--executor, --workers and --dry-run are for local sweeps; the "
                           "server runs on its own executor", source="--server")
    connection = service_cli.connection_from_args(args)
    name, text, fmt = _sweep_text(args.sweep)
    source = args.sweep if len(args.sweep) <= 256 else Path(args.sweep).name[-256:]
    if args.out is not None:
        _check_out(args.out, name)
    sweep_id = ""
    try:
        with connection.client() as client:
            response = client.submit_sweep(text, source_name=source, sweep_format=fmt,
                                           request_id=args.request_id or "")
            sweep = response.sweep
            sweep_id = sweep.sweep_id
            note = " (the sweep of an earlier submission with this request id)" \
                if response.replayed else ""
            print(f"{sweep_id} {service_cli.state_name(sweep.state)} — {sweep.progress.total} "
                  f"runs, {sweep.progress.cached} from the cache{note}", flush=True)
            if not (args.wait or args.out is not None):
                return EXIT_OK
            with _Bar(sweep.name, console, sys.stderr.isatty()) as bar:
                for message in client.watch_sweep(sweep_id):
                    if message.HasField("progress"):
                        bar.update(message.progress)
            final = client.get_sweep(sweep_id)
            if args.out is not None:
                _write_out(client, final, args.out)
    except KeyboardInterrupt:
        again = f"; --request-id {args.request_id} follows it again" if args.request_id else ""
        say(f"interrupted (sweep {sweep_id or '(not submitted)'} goes on on the server{again})")
        return EXIT_INTERRUPTED
    except ServiceCallError as error:
        say(service_cli.describe(error, args, connection.target)[:2000])
        return service_cli.exit_status(error)
    counts = final.progress
    where = f"; tables in {args.out}/ (runs.csv, summary.csv, .parquet)" if args.out else ""
    print(f"sweep {final.name} ({sweep_id}): {service_cli.state_name(final.state)} — "
          f"{counts.total} runs, {counts.done} done, {counts.cached} from the cache, "
          f"{counts.failed} failed{where}")
    if final.state != pb.RUN_STATE_SUCCEEDED:
        say(f"{counts.failed} runs failed or were cancelled (failures.json says why)")
        return EXIT_FAILED
    return EXIT_OK
