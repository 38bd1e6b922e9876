"""``cowsim validate-host [SCENARIO...] [--json]``: check the model against the running kernel.

Each scenario file (or every ``.yaml``/``.yml``/``.json`` file of a directory; by default
the repository's ``examples/scenarios/``) is validated by the library first, compiled
into the executor's plan and run for real (:mod:`cowsim.clients.validate_host`), then
compared step by step with the model's predictions for this kernel's release.

Output: a table per scenario (the steps that disagree or were skipped, with the reason;
``--verbose`` every step), or with ``--json`` a list of objects ``{"scenario", "file",
"kernel", "era", "steps": [{"step", "op", "status", "reason", "observed",
"predicted"}]}`` (an interface: docs/design.md).  Exit status: 0 nothing disagrees, 1 a
step disagrees or the executor failed, 2 invalid input (a scenario file, an option) or
validate-host cannot run here (not Linux, no C compiler), 130 Ctrl-C (every process of
the executor killed and reaped).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cowsim.clients.output import say
from cowsim.clients.qemu_guest import DEFAULT_GUEST_TIMEOUT_SECONDS, kernel_release, run_guest
from cowsim.clients.validate_host import (
    DEFAULT_RUNS,
    DEFAULT_TIMEOUT_SECONDS,
    Plan,
    ValidateHostError,
    build_executor,
    cache_dir,
    compile_plan,
    run_plan,
    validate_scenario,
)
from cowsim.clients.validate_matrix import build_matrix, matrix_markdown, matrix_table
from cowsim.sim import Generation, InvalidInput, Scenario, generation_for, load_scenario

__all__ = ["add_command", "default_scenarios", "main", "scenario_files"]

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
MAX_FILES = 1000
MAX_TIMEOUT_SECONDS = 3600.0
MAX_RUNS = 100
MAX_APPEND = 1024


def default_scenarios() -> Path | None:
    """The repository's ``examples/scenarios`` beside this package (an editable install or a
    checkout), or None."""
    here = Path(__file__).resolve().parent.parent / "examples" / "scenarios"
    return here if here.is_dir() else None


def add_command(commands: Any) -> None:
    parser = commands.add_parser(
        "validate-host", help="run scenarios for real on this kernel and compare with the model",
        description="Run scenario scripts as real processes on the running kernel and compare "
                    "every step (faults, copied or reused frames, values seen) with the "
                    "model's prediction for this kernel's release.")
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help="scenario files or directories (default: examples/scenarios)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of objects")
    parser.add_argument("--verbose", "-v", action="store_true", help="show every step")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, metavar="N",
                        help="run each scenario N times, report each step's most common "
                             "observation (default %(default)d)")
    parser.add_argument("--model", metavar="VERSION",
                        help="compare with this kernel version's model instead of the one "
                             "the running release maps to")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS,
                        metavar="SECONDS", help="time limit per scenario (default %(default)g)")
    guest = parser.add_argument_group("on a kernel image booted in qemu")
    guest.add_argument("--kernel-image", action="append", metavar="PATH",
                       help="boot this bzImage in qemu and run the scenarios there (repeatable)")
    guest.add_argument("--modules", metavar="DIR",
                       help="the image's lib/modules/RELEASE (default: beside its boot/ folder)")
    guest.add_argument("--append", metavar="ARGS", help="more kernel command-line arguments")
    guest.add_argument("--guest-timeout", type=float, default=DEFAULT_GUEST_TIMEOUT_SECONDS,
                       metavar="SECONDS", help="time limit per boot (default %(default)g)")
    guest.add_argument("--matrix", action="store_true",
                       help="a scenario × kernel table: this host and every --kernel-image")
    guest.add_argument("--markdown", action="store_true", help="the matrix as Markdown")


def scenario_files(names: list[str]) -> list[Path]:
    """The files named, directories expanded (sorted), or InvalidInput naming the one that
    is missing; the default directory when none are named."""
    if not names:
        default = default_scenarios()
        if default is None:
            raise InvalidInput("name the scenario files to run (examples/scenarios is not "
                               "beside this installation)", source="SCENARIO")
        names = [str(default)]
    files: list[Path] = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir()
                                if p.suffix in (".yaml", ".yml", ".json") and p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise InvalidInput(f"{name!r}: no such file or directory", source="SCENARIO")
        if len(files) > MAX_FILES:
            raise InvalidInput(f"more than {MAX_FILES} scenario files", source="SCENARIO")
    if not files:
        raise InvalidInput(f"no scenario files in {', '.join(names)}", source="SCENARIO")
    return files


def _print(console: Console, results: list[dict[str, Any]], verbose: bool) -> None:
    for result in results:
        steps = result["steps"]
        counts = {status: sum(s["status"] == status for s in steps)
                  for status in ("agree", "disagree", "skipped")}
        console.print(f"[bold]{result['file']}[/bold] — kernel {result['kernel']} "
                      f"(era {result['era']}): {counts['agree']} agree, "
                      f"{counts['disagree']} disagree, {counts['skipped']} skipped")
        shown = [s for s in steps if verbose or s["status"] != "agree"]
        if not shown:
            continue
        table = Table(show_edge=False, pad_edge=False)
        for column in ("step", "op", "status", "observed", "predicted", "reason"):
            table.add_column(column, overflow="fold")
        rows: list[list[str]] = []
        for s in shown:  # a run of steps not run for the same reason: one row
            if (rows and s["status"] == "skipped" and rows[-1][2] == "skipped"
                    and rows[-1][5] == (s["reason"] or "") and s["reason"]
                    and s["reason"].startswith("not run")):
                rows[-1][0] = f"{rows[-1][0].split('-')[0]}-{s['step']}"
                rows[-1][1] = "…"
                continue
            rows.append([str(s["step"]), s["op"], s["status"],
                         "" if s["observed"] is None else json.dumps(s["observed"]),
                         "" if s["predicted"] is None else json.dumps(s["predicted"]),
                         s["reason"] or ""])
        for row in rows:
            table.add_row(*row)
        console.print(table)


def _check_image(option: str) -> Path:
    path = Path(option)
    if not path.is_file():
        raise InvalidInput(f"{option!r}: no such file", source="--kernel-image")
    if kernel_release(path) is None:
        raise InvalidInput(f"{option!r} is not a bootable x86 kernel image (no bzImage setup "
                           "header)", source="--kernel-image")
    return path


def _on_host(binary: Path, loaded: list[tuple[Scenario, str]], plans: list[Plan], runs: int,
             timeout: float, model: Generation | None) -> tuple[list[dict[str, Any]], bool]:
    results: list[dict[str, Any]] = []
    failed = False
    for (scenario, file), plan in zip(loaded, plans, strict=True):
        try:
            outputs = [run_plan(binary, plan.text(), timeout_seconds=timeout) for _ in range(runs)]
            results.append(validate_scenario(scenario, file, outputs, plan, model=model))
        except ValidateHostError as exc:
            say(f"validate-host: {file}: {exc}")
            failed = True
    return results, failed


def _in_guest(binary: Path, image: Path, loaded: list[tuple[Scenario, str]], plans: list[Plan],
              args: argparse.Namespace, model: Generation | None) -> list[dict[str, Any]]:
    """Every scenario × run in one boot of ``image`` (GuestError when the guest fails)."""
    texts = [plan.text() for plan in plans for _ in range(args.runs)]
    guest = run_guest(image, texts, executor=binary, cache_dir=cache_dir(),
                      modules_dir=Path(args.modules) if args.modules else None,
                      append=args.append or "", timeout_seconds=args.guest_timeout)
    results = []
    for index, ((scenario, file), plan) in enumerate(zip(loaded, plans, strict=True)):
        outputs = guest.outputs[index * args.runs:(index + 1) * args.runs]
        result = validate_scenario(scenario, file, outputs, plan, model=model)
        result["image"] = str(image)
        results.append(result)
    return results


def main(args: argparse.Namespace, console: Console) -> int:
    if not 0 < args.timeout <= MAX_TIMEOUT_SECONDS:
        raise InvalidInput(f"{args.timeout:g}: a time limit is more than 0 and at most "
                           f"{MAX_TIMEOUT_SECONDS:g} seconds", source="--timeout")
    if not 0 < args.guest_timeout <= MAX_TIMEOUT_SECONDS:
        raise InvalidInput(f"{args.guest_timeout:g}: a time limit is more than 0 and at most "
                           f"{MAX_TIMEOUT_SECONDS:g} seconds", source="--guest-timeout")
    if not 1 <= args.runs <= MAX_RUNS:
        raise InvalidInput(f"{args.runs}: runs is from 1 to {MAX_RUNS}", source="--runs")
    if args.append is not None and (len(args.append) > MAX_APPEND or "\n" in args.append):
        raise InvalidInput(f"at most {MAX_APPEND} characters on one line", source="--append")
    images = [_check_image(option) for option in args.kernel_image or []]
    if (args.modules or args.append) and not images:
        raise InvalidInput("--modules and --append go with --kernel-image", source="--modules")
    if args.markdown and not args.matrix:
        raise InvalidInput("--markdown goes with --matrix", source="--markdown")
    model = generation_for(args.model) if args.model is not None else None
    if not sys.platform.startswith("linux"):
        say("validate-host needs Linux (real processes on the running kernel)")
        return EXIT_INVALID
    files = scenario_files(args.scenarios)
    loaded = [(load_scenario(path), str(path)) for path in files]  # all valid, or exit 2
    plans = [compile_plan(scenario, file) for scenario, file in loaded]
    try:
        binary = build_executor()
    except ValidateHostError as exc:
        say(f"validate-host: {exc}")
        return EXIT_INVALID
    columns: list[list[dict[str, Any]]] = []
    failed = False
    if not images or args.matrix:
        on_host, failed = _on_host(binary, loaded, plans, args.runs, args.timeout, model)
        columns.append(on_host)
    for image in images:
        try:
            columns.append(_in_guest(binary, image, loaded, plans, args, model))
        except ValidateHostError as exc:
            say(f"validate-host: {exc}")
            failed = True
    results = [result for column in columns for result in column]
    if args.matrix:
        matrix = build_matrix(loaded, columns)
        if args.markdown:
            print(matrix_markdown(matrix))
        else:
            console.print(matrix_table(matrix))
        if args.json:
            print(json.dumps(results, indent=2))
    elif args.json:
        print(json.dumps(results, indent=2))
    else:
        _print(console, results, args.verbose)
    disagree = any(step["status"] == "disagree" for r in results for step in r["steps"])
    return EXIT_FAILED if disagree or failed else EXIT_OK
