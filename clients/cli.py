"""The ``cowsim`` command line.

``cowsim scenario run FILE... [--kernel VERSION|ERA|all] [--json]`` runs
scenario scripts (exit 0: every expectation held; 1: one failed; 2: invalid
input, with one line naming the file, step and field).  ``cowsim kernels``
lists the kernel generations and the rules in which they differ.  ``cowsim
run``, ``compare`` and ``schema`` are the workload commands (workload_cli).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from rich.console import Console

from cowsim.clients import render, workload_cli
from cowsim.sim.kernel.generations import (
    Generation,
    KernelVersionError,
    all_generations,
    generation_for,
)
from cowsim.sim.scenario import Scenario, ScenarioError, ScenarioResult, load_scenario, run_scenario

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line (its default also exits 2, but prints usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"cowsim: {message}\n")
        raise SystemExit(EXIT_INVALID)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cowsim", description="Simulate Linux copy-on-write across kernel "
                                                "generations.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    scenario = commands.add_parser("scenario", help="scenario scripts")
    scenario_commands = scenario.add_subparsers(dest="scenario_command", required=True,
                                                parser_class=_Parser)
    run = scenario_commands.add_parser(
        "run", help="run scenario files",
        description="Run scenario scripts. Without --kernel a file's own 'kernel' is used, "
                    "else every generation (one version per era).")
    run.add_argument("files", nargs="+", metavar="FILE")
    run.add_argument("--kernel", help="a version (5.10), an era id (B) or a what-if name, "
                                      "or 'all'")
    run.add_argument("--json", action="store_true", help="print results as JSON")
    run.add_argument("--markdown", action="store_true",
                     help="print the scenario × kernel matrix as a Markdown table")
    kernels = commands.add_parser("kernels", help="list kernel generations and their rules")
    kernels.add_argument("--json", action="store_true")
    workload_cli.add_commands(commands)
    return parser


def _generations(option: str | None, scenario: Scenario) -> list[Generation]:
    choice = option if option is not None else scenario.kernel
    if choice is None or choice.strip().lower() == "all":
        return all_generations()
    return [generation_for(choice)]


def _scenario_run(args: argparse.Namespace, console: Console) -> int:
    try:
        if args.kernel is not None and args.kernel.strip().lower() != "all":
            generation_for(args.kernel)
    except KernelVersionError as exc:
        sys.stderr.write(f"cowsim: --kernel: {exc}\n")
        return EXIT_INVALID
    loaded: list[tuple[str, Scenario, list[Generation]]] = []
    errors: list[str] = []
    for file in args.files:
        try:
            scenario = load_scenario(file)
            loaded.append((file, scenario, _generations(args.kernel, scenario)))
        except ScenarioError as exc:
            errors.append(str(exc))
        except KernelVersionError as exc:
            errors.append(str(ScenarioError(file, str(exc), field="kernel")))
    if errors:
        for line in errors:
            sys.stderr.write(f"cowsim: {line}\n")
        return EXIT_INVALID
    results: dict[tuple[str, str], ScenarioResult] = {}
    ordered: list[ScenarioResult] = []
    try:
        for file, scenario, generations in loaded:
            for generation in generations:
                result = run_scenario(scenario, generation, file)
                results[(file, generation.label)] = result
                ordered.append(result)
    except ScenarioError as exc:
        sys.stderr.write(f"cowsim: {exc}\n")
        return EXIT_INVALID
    _print_results(args, console, loaded, results, ordered)
    return EXIT_OK if all(result.ok for result in ordered) else EXIT_FAILED


def _print_results(args: argparse.Namespace, console: Console,
                   loaded: list[tuple[str, Scenario, list[Generation]]],
                   results: dict[tuple[str, str], ScenarioResult],
                   ordered: list[ScenarioResult]) -> None:
    if args.json:
        payload = [result.as_dict() for result in ordered]
        print(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2))
        return
    same_generations = len({tuple(g.label for g in gens) for _, _, gens in loaded}) == 1
    generations = loaded[0][2]
    if same_generations and len(generations) > 1:
        files = [file for file, _, _ in loaded]
        if args.markdown:
            print(render.matrix_markdown(files, generations, results))
        else:
            render.matrix(console, files, generations, results)
        return
    for result in ordered:
        render.detail(console, result)


def _kernels(args: argparse.Namespace, console: Console) -> int:
    if args.json:
        payload = [
            {"name": g.label, "era": g.era, "version": ".".join(map(str, g.version)),
             "rules": g.rules()}
            for g in all_generations()
        ]
        print(json.dumps(payload, indent=2))
    else:
        render.kernels(console)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    if args.command == "kernels":
        return _kernels(args, console)
    if args.command in ("run", "compare", "schema"):
        return workload_cli.main(args, console)
    return _scenario_run(args, console)


if __name__ == "__main__":
    raise SystemExit(main())
