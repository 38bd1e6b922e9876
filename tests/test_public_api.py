"""The public API: ``api.__all__`` is pinned, as httpx pins its exported members.

Programs outside the library (the CLI, the service, sweep workers, users' scripts) import
these names from ``cowsim.sim``; the modules behind them may change.  Adding a name is a
deliberate act: add it here too.  The CLI uses nothing else of the library.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from cowsim.sim import ProgressEvent, parse_spec
from cowsim.sim import __all__ as exported
from cowsim.sim import run as run_spec

api = sys.modules["cowsim.sim"]  # the package itself (``import cowsim.sim`` names it too)

ROOT = Path(__file__).resolve().parent.parent

PUBLIC = [
    "BOUNDS_SECONDS", "Budget", "BudgetExceeded", "COW_CAUSES", "CapacityError", "ERAS", "Era",
    "Estimate", "FAULT_TYPES", "FaultFlags", "FaultReport", "Generation", "HistogramDelta",
    "InvalidInput", "Kernel", "KernelOpError", "KernelVersionError", "MAX_DOCUMENT_BYTES",
    "MAX_PACE", "MIN_PACE",
    "NEWEST_KNOWN_VERSION", "ProgressEvent", "Prot", "Pte", "RunPlan", "SUMMARY_COUNTERS",
    "Scenario", "ScenarioResult", "Simulation", "VIOLATION_KINDS", "Violation", "WHAT_IFS",
    "WORKLOAD_COUNTERS", "WorkloadSpec", "__version__", "all_generations", "changes_in",
    "check_pace", "check_seed", "escape_control", "format_bytes", "format_rate", "format_seconds",
    "generation_for", "generations_for", "json_schema", "kernel_choices", "load_scenario",
    "load_spec", "parse_bytes", "parse_scenario", "parse_spec", "plan_run", "read_text", "result", "run",
    "run_scenario", "simulate",
    # sweeps (cowsim.sim.sweep)
    "MAX_SWEEP_RUNS", "SweepError", "SweepPlan", "SweepPoint", "SweepSpec", "load_sweep",
    "parse_sweep", "plan_sweep", "sweep_json_schema",
    # validate-host's predictions (cowsim.sim.scenario.trace)
    "PAGE_OUTCOMES", "PageState", "page_outcome", "trace_scenario",
]


def test_the_public_names_are_pinned() -> None:
    assert sorted(exported) == sorted(PUBLIC)
    for name in PUBLIC:
        assert hasattr(api, name), name


def test_public_names_have_docstrings() -> None:
    undocumented = [name for name in PUBLIC if callable(getattr(api, name))
                    and not (getattr(api, name).__doc__ or "").strip()]
    assert undocumented == []


def test_the_cli_uses_only_the_public_api() -> None:
    """clients/ imports cowsim.sim names from the package itself, never from its modules."""
    offending = []
    for path in sorted((ROOT / "clients").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cowsim.sim."):
                offending.append(f"{path.name}: from {node.module} import ...")
            if isinstance(node, ast.Import):
                offending += [f"{path.name}: import {alias.name}" for alias in node.names
                              if alias.name.startswith("cowsim.sim.")]
    assert offending == []


def test_the_library_runs_through_the_public_api() -> None:
    spec = parse_spec("""
name: api
duration: 50ms
processes:
  - name: web
    memory: 1MiB
    workloads:
      - kind: forking_server
        requests: {rate: 10k/s}
        fork: {mode: periodic, every: 10ms, snapshot: {scan_rate: 1GiB/s}}
""")
    events: list[ProgressEvent] = []
    outcome = run_spec(spec, kernel="5.10", progress=events.append)
    assert outcome["kernel"] == "5.10"
    assert outcome["status"] == "completed"
    assert outcome["metrics"]["cow_copies_total"] > 0
    assert sum(event.counters.get("cow_copies", 0) for event in events) == \
        outcome["metrics"]["cow_copies_total"]
