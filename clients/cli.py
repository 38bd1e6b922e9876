"""The ``cowsim`` command line.

``cowsim scenario run FILE... [--kernel VERSION|ERA|all] [--json]`` runs
scenario scripts (exit 0: every expectation held; 1: one failed; 2: invalid
input, with one line naming the file, step and field).  ``cowsim kernels``
lists the kernel generations and the rules in which they differ.  ``cowsim
run``, ``compare`` and ``schema`` are the workload commands (workload_cli);
``submit``, ``status``, ``watch``, ``cancel``, ``list`` and ``result`` talk to a
``cowsim serve`` (service_cli: exit 3 when it cannot be reached); ``cowsim sweep``
runs a what-if sweep into a directory of tables (sweep_cli) and ``cowsim report
DIR`` renders one as an HTML page (report_cli); ``cowsim calibrate`` times this host's
kernel and fits a machine profile to it (calibrate_cli) and ``cowsim validate-host`` runs
scenarios for real on it and compares every step with the model (validate_host_cli);
``cowsim --version`` prints the installed version.

Whatever the input, the command ends in one of four ways, never a traceback:

* exit 0 or 1 with its output;
* exit 2 and one line on stderr for invalid input — every
  :class:`~cowsim.sim.errors.InvalidInput` the library raises, printed as it
  renders itself (control characters escaped, so a newline inside a name
  cannot split the line), and argparse's own errors;
* exit 130 and ``cowsim: interrupted`` on Ctrl-C, with nothing half-written;
* exit 1 and ``cowsim: internal error: …``, only as a last resort.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from rich.console import Console

from cowsim.clients import (
    calibrate_cli,
    export_cli,
    render,
    report_cli,
    service_cli,
    sweep_cli,
    validate_host_cli,
    workload_cli,
)
from cowsim.clients.kernel_images import fetch_debian
from cowsim.clients.output import say
from cowsim.clients.validate_host import ValidateHostError
from cowsim.service import cli as serve_cli
from cowsim.sim import (
    Generation,
    InvalidInput,
    KernelVersionError,
    Scenario,
    ScenarioResult,
    all_generations,
    generations_for,
    load_scenario,
    run_scenario,
)

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line (its default also exits 2, but prints usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        say(message)
        raise SystemExit(EXIT_INVALID)


def version() -> str:
    """The installed distribution's version (its metadata), or "unknown"."""
    try:
        return metadata.version("cowsim")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cowsim", description="Simulate Linux copy-on-write across kernel "
                                                "generations.")
    parser.add_argument("--version", action="version", version=f"cowsim {version()}")
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
    kernels = commands.add_parser("kernels", help="list kernel generations and their rules, or "
                                                   "fetch kernel images to validate against")
    kernels.add_argument("--json", action="store_true")
    kernels.add_argument("--fetch", choices=["debian"],
                         help="download and unpack Debian's 6.1 and 6.12 cloud kernels (apt)")
    kernels.add_argument("--dir", metavar="DIR",
                         help="where --fetch unpacks them (default ~/.cache/cowsim/kernels)")
    workload_cli.add_commands(commands)
    serve_cli.add_command(commands)
    service_cli.add_commands(commands)
    export_cli.add_commands(commands)
    sweep_cli.add_command(commands)
    report_cli.add_command(commands)
    calibrate_cli.add_command(commands)
    validate_host_cli.add_command(commands)
    return parser


def kernel_option(option: str | None) -> list[Generation] | None:
    """The generations ``--kernel`` names (``all`` too), or None without the option; an
    invalid one is an InvalidInput whose source is ``--kernel``."""
    if option is None:
        return None
    try:
        return generations_for(option)
    except KernelVersionError as exc:
        raise exc.within(source="--kernel") from None


def _generations(option: list[Generation] | None, scenario: Scenario, file: str) -> list[Generation]:
    if option is not None:
        return option
    if scenario.kernel is None:
        return all_generations()
    try:
        return generations_for(scenario.kernel)
    except KernelVersionError as exc:
        raise exc.within("kernel", source=file) from None


def _scenario_run(args: argparse.Namespace, console: Console) -> int:
    option = kernel_option(args.kernel)
    loaded: list[tuple[str, Scenario, list[Generation]]] = []
    errors: list[str] = []
    for file in args.files:
        try:
            scenario = load_scenario(file)
            loaded.append((file, scenario, _generations(option, scenario, file)))
        except InvalidInput as exc:
            errors.append(str(exc))
    if errors:
        for line in errors:
            say(line)
        return EXIT_INVALID
    results: dict[tuple[str, str], ScenarioResult] = {}
    ordered: list[ScenarioResult] = []
    for file, scenario, generations in loaded:
        for generation in generations:
            result = run_scenario(scenario, generation, file)
            results[(file, generation.label)] = result
            ordered.append(result)
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
    if args.fetch:
        try:
            images = fetch_debian(Path(args.dir) if args.dir else None)
        except ValidateHostError as exc:
            say(f"kernels --fetch: {exc}")
            return EXIT_FAILED
        for image in images:
            print(image)
        return EXIT_OK
    if args.dir:
        raise InvalidInput("--dir goes with --fetch", source="--dir")
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


def _dispatch(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    if args.command == "kernels":
        return _kernels(args, console)
    if args.command == "serve":
        return serve_cli.main(args)
    if args.command in ("run", "compare", "schema"):
        return workload_cli.main(args, console)
    if args.command in service_cli.COMMANDS:
        return service_cli.main(args, console)
    if args.command == "export":
        return export_cli.main(args)
    if args.command == "sweep":
        return sweep_cli.main(args, console)
    if args.command == "report":
        return report_cli.main(args)
    if args.command == "calibrate":
        return calibrate_cli.main(args, console)
    if args.command == "validate-host":
        return validate_host_cli.main(args, console)
    return _scenario_run(args, console)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    try:
        return _dispatch(argv)
    except SystemExit as exc:  # argparse: --help, --version, a usage error (already said)
        return exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None else EXIT_INVALID
    except InvalidInput as exc:
        say(str(exc))
        return EXIT_INVALID
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout went away (| head): nothing left to say it to
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the exit's flush does not complain
        return EXIT_FAILED
    except MemoryError:
        say("internal error: out of memory")
        return EXIT_FAILED
    except Exception as exc:  # the last resort: one line, never a traceback
        say(f"internal error: {type(exc).__name__}: {str(exc)[:500]}")
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
