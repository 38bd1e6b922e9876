"""``cowsim run`` and ``cowsim compare``: workload specs on the simulated machine.

``cowsim run SPEC [--kernel K] [--seed N] [--json] [--out DIR]`` runs one
spec with a progress bar (simulated time, events per second), prints a
summary and, with ``--out``, writes ``result.json`` and the time series
(``series/*.csv``).  ``cowsim compare SPEC --kernel 5.10 --kernel 6.8``
runs one spec on several generations side by side (``--kernel all``: one per
era).

Everything is checked before the first simulated event: the options
(``--kernel``, ``--seed``, ``--out``), then the spec and its plan on this
machine (:func:`cowsim.sim.plan.plan_run`: kernel, costs, resident memory,
budget).  Invalid input is one line naming the option or the file and field,
exit 2.  ``--out`` is written atomically (:class:`~cowsim.clients.output.OutputDir`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cowsim.clients import render
from cowsim.clients.output import OutputDir, say
from cowsim.sim import (
    InvalidInput,
    KernelVersionError,
    RunPlan,
    Simulation,
    check_pace,
    check_seed,
    escape_control,
    format_seconds,
    generation_for,
    generations_for,
    json_schema,
    load_spec,
    plan_run,
    simulate,
)
from cowsim.sim import result as run_result

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def add_commands(commands: Any) -> None:
    run = commands.add_parser("run", help="run a workload spec on the simulated machine")
    run.add_argument("spec", metavar="SPEC")
    run.add_argument("--kernel", help="override the spec's kernel (version, era or what-if)")
    run.add_argument("--seed", type=int, help="override the spec's seed (0 … 2**63-1)")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.add_argument("--out", type=Path, help="write result.json and time series here")
    run.add_argument("--pace", type=float, metavar="F",
                     help="run at F simulated seconds per wall-clock second (1: real time), "
                          "e.g. for a live dashboard; the result is the same")
    compare = commands.add_parser("compare", help="run one spec on several kernels side by side")
    compare.add_argument("spec", metavar="SPEC")
    compare.add_argument("--kernel", action="append", required=True,
                         help="a kernel to run (repeat), or 'all'")
    compare.add_argument("--seed", type=int)
    compare.add_argument("--json", action="store_true")
    commands.add_parser("schema", help="print the JSON Schema of workload specs")


def _kernel_options(args: argparse.Namespace) -> list[str | None]:
    """The kernels named by --kernel (None: the spec's own), checked."""
    if args.command == "run":
        if args.kernel is None:
            return [None]
        names = [args.kernel]
    else:
        names = list(args.kernel)
    kernels: list[str | None] = []
    for name in names:
        try:
            if args.command == "compare":
                kernels.extend(generation.name for generation in generations_for(name))
            else:
                kernels.append(generation_for(name).name)
        except KernelVersionError as exc:
            raise exc.within(source="--kernel") from None
    return kernels


def _plans(args: argparse.Namespace) -> list[RunPlan]:
    """Options, spec and plans, all checked (InvalidInput naming the option or the field)."""
    kernels = _kernel_options(args)
    if args.seed is not None:
        try:
            check_seed(args.seed, path=())
        except InvalidInput as exc:
            raise exc.within(source="--seed") from None
    if getattr(args, "pace", None) is not None:
        try:
            check_pace(args.pace, path=())
        except InvalidInput as exc:
            raise exc.within(source="--pace") from None
    spec = load_spec(args.spec)
    return [plan_run(spec, kernel=kernel, seed=args.seed, source=args.spec) for kernel in kernels]


def _run_one(plan: RunPlan, console: Console, show_progress: bool, source: str,
             pace: float | None = None) -> tuple[dict[str, Any], Simulation]:
    """Run one plan (with a progress bar on a terminal), at ``pace`` if given; the result
    and the simulation."""
    spec = plan.spec
    options: dict[str, Any] = {"kernel": plan.kernel, "seed": plan.seed,
                               "max_frames": plan.max_frames, "pace": pace}
    try:
        if not show_progress:
            sim, wall = simulate(spec, **options)
            return run_result(sim, wall_seconds=wall), sim
        started = time.perf_counter()
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                      TextColumn("{task.fields[sim]} simulated · {task.fields[rate]} events/s"),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task(escape(escape_control(f"{spec.name} on {plan.kernel}")),
                                total=spec.duration, sim="0 s", rate="0")

            def progress(event: Any) -> None:
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.update(task, completed=event.sim_seconds, sim=format_seconds(event.sim_seconds),
                           rate=f"{event.events_processed / elapsed:,.0f}")

            sim, wall = simulate(spec, progress=progress, **options)
            return run_result(sim, wall_seconds=wall), sim
    except InvalidInput as exc:  # refused inside the run: name the spec it came from
        raise exc.within(source=source) from None


def _write_out(out: OutputDir, result: dict[str, Any], sim: Simulation) -> None:
    """result.json (byte-identical for the same spec and seed), timing.json and the series,
    into the temporary directory; then into place."""
    stable = dict(result, wall_seconds=None)
    (out.path / "result.json").write_text(json.dumps(stable, indent=2, sort_keys=True) + "\n")
    (out.path / "timing.json").write_text(json.dumps({"wall_seconds": result["wall_seconds"]})
                                          + "\n")
    sim.recorder.write_series(out.path / "series")
    out.commit()


def main(args: argparse.Namespace, console: Console) -> int:
    if args.command == "schema":
        print(json.dumps(json_schema(), indent=2))
        return EXIT_OK
    plans = _plans(args)
    show = not args.json and sys.stderr.isatty()
    if args.command == "run":
        out = OutputDir.prepare(args.out) if args.out is not None else None
        try:
            outcome, sim = _run_one(plans[0], console, show, args.spec, args.pace)
            if out is not None:
                try:
                    _write_out(out, outcome, sim)
                except OSError as exc:
                    say(f"--out: cannot write {args.out}: {exc.strerror or exc}")
                    return EXIT_FAILED
        finally:
            if out is not None:
                out.discard()
        if args.json:
            print(json.dumps(outcome, indent=2, sort_keys=True))
        else:
            render.run_summary(console, [outcome])
        return EXIT_OK
    outcomes = [_run_one(plan, console, show, args.spec)[0] for plan in plans]
    if args.json:
        print(json.dumps(outcomes, indent=2, sort_keys=True))
    else:
        render.run_summary(console, outcomes)
    return EXIT_OK
