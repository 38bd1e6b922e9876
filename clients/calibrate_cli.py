"""``cowsim calibrate [--quick] [--out PROFILE.yaml] [--json]``: fit a machine profile to this host.

It reads the host facts (:mod:`cowsim.clients.host_facts`), runs the probes
(:mod:`cowsim.clients.host_probes`; ``--quick`` in seconds, the full run in well under a
minute), fits the cost model's parameters (:mod:`cowsim.clients.calibrate_fit`) and prints
a table of each parameter with its spread, beside the shipped profiles' values, and how
well each predicts the measured fork times.  ``--json`` prints one object instead
(``host``, ``plan``, ``params``, ``skipped``, ``fork_check``, ``profile``, ``notes``).

``--out PROFILE.yaml`` writes the profile, usable as ``machine: {profile: PROFILE.yaml}``
(a path relative to where cowsim runs): ``base`` (the shipped profile the unmeasured
fields come from), ``costs`` (the fitted fields), and ``host`` and ``measured`` blocks the
loader ignores.  The file is written to a temporary sibling, checked by loading it
through ``plan_run`` as a spec would, then renamed into place.

Exit status: 0 done; 1 a probe failed (not Linux, a system call refused); 2 invalid input
(``--out`` not a writable ``.yaml`` path: checked before anything runs); 130 Ctrl-C, with
every probe child killed and reaped and no file left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from cowsim.clients.calibrate_fit import (
    PAGES_PER_GIB,
    Estimate,
    Fit,
    base_profile,
    fit,
    fork_check,
)
from cowsim.clients.host_facts import HostFacts, read_host_facts
from cowsim.clients.host_probes import ProbePlan, run_probes
from cowsim.clients.output import say
from cowsim.sim import InvalidInput, __version__, parse_spec, plan_run

__all__ = ["SHIPPED_PROFILES", "add_command", "main", "profile_costs"]

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
SHIPPED_PROFILES = ("skylake-sp", "zen4", "small-vm")
"""The named profiles compared with the fit (a test checks each is accepted)."""
MAX_PROFILE_REFERENCE = 64
"""The longest ``machine.profile`` a spec accepts (``MachineSpec.profile``)."""


def add_command(commands: Any) -> None:
    parser = commands.add_parser(
        "calibrate", help="measure this host and fit a machine profile to it",
        description="Time fork, faults, copies, walks and TLB shootdowns on this host, fit "
                    "the cost model's parameters and print them with their spread.")
    parser.add_argument("--quick", action="store_true",
                        help="smaller probes, a few seconds (default: the full run, <1 min)")
    parser.add_argument("--out", metavar="PROFILE.yaml",
                        help="write the fitted profile (use as machine: {profile: PATH})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def check_out(option: str | None) -> Path | None:
    """``--out`` as a path to a ``.yaml`` file in a writable directory, or InvalidInput."""
    if option is None:
        return None
    path = Path(option)
    if path.suffix not in (".yaml", ".yml"):
        raise InvalidInput(f"{option!r}: a profile file ends in .yaml or .yml (that is how "
                           "machine.profile tells a file from a profile name)", source="--out")
    if path.is_dir():
        raise InvalidInput(f"{option!r} is a directory", source="--out")
    if path.exists() and not path.is_file():
        raise InvalidInput(f"{option!r} exists and is not a regular file", source="--out")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise InvalidInput(f"directory {parent} does not exist", source="--out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidInput(f"directory {parent} is not writable", source="--out")
    return path


def _probe_spec(profile: str) -> dict[str, Any]:
    return {"name": "calibrate-check", "duration": "1s", "machine": {"profile": profile},
            "processes": [{"name": "p", "memory": "4MiB"}]}


def profile_costs(profile: str) -> dict[str, float]:
    """The cost fields a spec with ``machine: {profile: PROFILE}`` runs with, through the
    same ``plan_run`` every run goes through (so a profile file is validated as in a run)."""
    plan = plan_run(parse_spec(json.dumps(_probe_spec(profile)), "calibrate.json"),
                    source=f"machine profile {profile}")
    return {name: float(value) for name, value in plan.costs.model_dump().items()}


def _round(name: str, value: float) -> float | int:
    if name == "memory_bytes":
        return int(value)
    if name.endswith("_bytes_per_s"):
        return float(f"{value:.4g}")
    return round(value, 1)


NOT_APPLIED = {
    "fork_fixed_ns": "the intercept includes copying the calibrating interpreter's own "
                     "file-backed private mappings, which a modeled process does not have",
    "exit_fixed_ns": "the intercept includes unmapping the calibrating interpreter's own "
                     "mappings and the wait for the child to be scheduled",
}
"""Fitted values kept out of the profile's ``costs`` (reported under ``measured``), and why."""


def applied_costs(result: Fit) -> dict[str, float | int]:
    """The fitted values a profile applies (all but :data:`NOT_APPLIED`), rounded."""
    return {name: _round(name, est.value) for name, est in result.params.items()
            if name not in NOT_APPLIED}


def profile_document(result: Fit, facts: HostFacts, base: str, quick: bool) -> dict[str, Any]:
    """The profile file's content: ``base``, ``costs``, and the ignored ``host`` and
    ``measured`` blocks."""
    return {
        "base": base,
        "costs": applied_costs(result),
        "host": {**facts.as_dict(), "cowsim": __version__, "quick": quick},
        "measured": {name: {"value": est.value, "median": est.median, "mad": est.mad,
                            "low": est.low, "high": est.high, "n": est.n, "how": est.how,
                            **({"not_applied": NOT_APPLIED[name]} if name in NOT_APPLIED
                               else {})}
                     for name, est in result.params.items()},
    }


def _header(facts: HostFacts) -> str:
    return (f"# cowsim machine profile, written by `cowsim calibrate` (cowsim {__version__}).\n"
            f"# Host: Linux {facts.kernel_release} (cowsim generation {facts.generation}, "
            f"era {facts.era}), {facts.cpus} CPUs, {facts.cpu_model or 'CPU unknown'}, "
            f"{'a VM' if facts.virtualized else 'bare metal' if facts.virtualized is False else 'VM?'}"
            f", THP {facts.thp_enabled}.\n"
            "# Use it as `machine: {profile: THIS_FILE.yaml}` (a path relative to where cowsim\n"
            "# runs). Fields not under `costs` come from `base`; the `host` and `measured`\n"
            "# blocks are ignored by the loader: they say what was measured and its spread.\n")


def _write_profile(path: Path, document: dict[str, Any], facts: HostFacts) -> bool:
    """Write atomically after loading the temporary file as a spec would; returns whether
    that check could run (a reference longer than a spec accepts cannot be checked)."""
    text = _header(facts) + yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix,
                                         dir=path.absolute().parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        reference = os.path.relpath(temporary)
        checked = len(reference) <= MAX_PROFILE_REFERENCE
        if checked:
            profile_costs(reference)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return checked


def _fmt(name: str, value: float) -> str:
    if name.endswith("_bytes_per_s"):
        return f"{value / 1e9:.2f} GB/s"
    if name == "memory_bytes":
        return f"{value / (1 << 30):.1f} GiB"
    if value >= 1e6:
        return f"{value / 1e6:.3g} ms"
    if value >= 1e3:
        return f"{value / 1e3:.3g} µs"
    return f"{value:.3g} ns"


def _spread(name: str, est: Estimate) -> str:
    return f"{_fmt(name, est.low)} … {_fmt(name, est.high)} (n={est.n})"


def _print(console: Console, facts: HostFacts, result: Fit, shipped: dict[str, dict[str, float]],
           checks: list[dict[str, Any]], summary: dict[str, Any], notes: list[str]) -> None:
    host = Table(title="Host", show_header=False)
    for key, value in facts.as_dict().items():
        host.add_row(key, "unknown" if value is None else str(value))
    console.print(host)
    table = Table(title="Fitted cost parameters (value; min … max over repetitions; "
                        "* not applied to the profile)")
    for column in ("parameter", "fitted", "spread", *shipped):
        table.add_column(column)
    for name, est in result.params.items():
        table.add_row(name + ("*" if name in NOT_APPLIED else ""), _fmt(name, est.value),
                      _spread(name, est),
                      *(_fmt(name, costs[name]) for costs in shipped.values()))
    console.print(table)
    forks = Table(title="fork() of this process: measured median vs each profile (error)")
    for column in ("anon PTEs", "THP PMDs", "measured", *checks[0]["predicted_ns"]):
        forks.add_column(column)
    for row in checks:
        forks.add_row(str(int(row["ptes"])), str(int(row["pmds"])), _fmt("", row["measured_ns"]),
                      *(f"{_fmt('', row['predicted_ns'][n])} ({row['error'][n]:+.0%})"
                        for n in row["predicted_ns"]))
    console.print(forks)
    console.print("fork per GiB of 4 KiB pages: " + ", ".join(
        f"{name} {value / 1e6:.1f} ms" for name, value in summary["fork_per_gib_ns"].items()))
    for name, reason in result.skipped.items():
        console.print(f"not fitted: {name}: {reason}")
    for note in notes:
        console.print(f"note: {note}")


def main(args: argparse.Namespace, console: Console) -> int:
    out = check_out(args.out)
    if not (os.path.exists("/proc/self/pagemap") and hasattr(os, "fork")):
        say("calibrate needs Linux (/proc/self/pagemap and fork)")
        return EXIT_FAILED
    facts = read_host_facts()
    plan, note = (ProbePlan.quick() if args.quick else ProbePlan.full()).fitted_to(
        facts.memory_available_bytes)
    notes = [note] if note else []
    try:
        measurements = run_probes(plan, thp=facts.thp_enabled in ("always", "madvise"))
    except OSError as exc:
        say(f"calibrate: a probe failed: {exc}")
        return EXIT_FAILED
    measurements.memory_bytes = facts.memory_bytes
    result = fit(measurements)
    base = base_profile(facts.virtualized, facts.cpu_model)
    shipped = {name: profile_costs(name) for name in SHIPPED_PROFILES}
    fitted = {**shipped[base], **applied_costs(result)}
    profiles = {"fitted": fitted, **shipped}
    checks = fork_check(measurements.fork_4k, profiles)
    summary = {"fork_per_gib_ns": {name: costs["fork_per_pte_ns"] * PAGES_PER_GIB
                                   for name, costs in profiles.items()}}
    if len(checks) >= 2:
        first, last = checks[0], checks[-1]
        summary["fork_per_gib_ns"] = {
            "measured": (last["measured_ns"] - first["measured_ns"])
            / (last["ptes"] - first["ptes"]) * PAGES_PER_GIB,
            **summary["fork_per_gib_ns"]}
    written = None
    if out is not None:
        document = profile_document(result, facts, base, args.quick)
        if not _write_profile(out, document, facts):
            notes.append(f"{out} was not loaded back: refer to it by a path of at most "
                         f"{MAX_PROFILE_REFERENCE} characters in machine.profile")
        written = str(out)
    if args.json:
        print(json.dumps({
            "host": facts.as_dict(), "plan": vars(plan) | {"quick": args.quick},
            "base": base, "params": {n: e.as_dict() for n, e in result.params.items()},
            "skipped": result.skipped, "fork_check": checks, **summary,
            "profile": written, "notes": notes,
        }, indent=2))
    else:
        _print(console, facts, result, shipped, checks, summary, notes)
        if written:
            console.print(f"wrote {written} (use it as machine: {{profile: {written}}})")
    return EXIT_OK
