"""cowsim.sim — the simulation library: Linux copy-on-write across kernel generations.

This is the public API: what the CLI, the gRPC service and sweep workers use, and
what a program should import (``from cowsim.sim import run, load_spec``).  The
modules behind it are free to change; these names are pinned by
``tests/test_public_api.py``.

Three ways in, from the bottom up:

* **The kernel model.**  ``Kernel(generation)`` holds one machine's memory
  management under one kernel generation (:func:`generation_for` ``"5.10"``,
  an era id, a what-if) and offers the system calls and device actions
  (``mmap``, ``write``, ``fork``, ``pin``, ``clear_refs`` …).  A write returns a
  :class:`FaultReport`; correctness failures are :class:`Violation` objects.
* **Scenario scripts.**  :func:`load_scenario` validates a file,
  :func:`run_scenario` runs it on one generation and returns a
  :class:`ScenarioResult` (docs/design.md's JSON keys).
* **Workload specs.**  :func:`load_spec` validates a spec, :func:`plan_run`
  checks it against the machine and the budget, and :func:`run` runs it to a
  result dict (progress events, cancellation: the run contract of
  docs/architecture.md).  :func:`simulate` returns the simulation too, for its
  time series.
* **Sweeps.**  :func:`load_sweep` validates a sweep spec (a base spec and axes
  over its fields), :func:`plan_sweep` expands it into points with their seeds
  and validates every point's spec and plan before anything runs
  (:class:`SweepPlan`); the service package runs and stores them.

Every invalid input raises :class:`InvalidInput` (``source``, ``field``,
``message``; one line as ``str``); valid input too big to run raises
:class:`BudgetExceeded`.  This package never imports gRPC or Prometheus.
"""

from importlib import metadata

from cowsim.sim.budget import Budget, Estimate
from cowsim.sim.driver import WORKLOAD_COUNTERS, ProgressEvent, result, run, simulate
from cowsim.sim.engine import Simulation
from cowsim.sim.errors import (
    BudgetExceeded,
    CapacityError,
    InvalidInput,
    KernelOpError,
    KernelVersionError,
    escape_control,
)
from cowsim.sim.inputs import MAX_DOCUMENT_BYTES, read_text
from cowsim.sim.kernel import (
    ERAS,
    WHAT_IFS,
    FaultFlags,
    FaultReport,
    Generation,
    Kernel,
    Prot,
    Pte,
    Violation,
    all_generations,
    generation_for,
)
from cowsim.sim.kernel.counters import COW_CAUSES, FAULT_TYPES, VIOLATION_KINDS
from cowsim.sim.kernel.generations import (
    NEWEST_KNOWN_VERSION,
    Era,
    changes_in,
    generations_for,
    kernel_choices,
)
from cowsim.sim.live import BOUNDS_SECONDS, HistogramDelta
from cowsim.sim.plan import MAX_PACE, MIN_PACE, RunPlan, check_pace, check_seed, plan_run
from cowsim.sim.scenario import (
    PAGE_OUTCOMES,
    PageState,
    Scenario,
    ScenarioResult,
    load_scenario,
    page_outcome,
    parse_scenario,
    run_scenario,
    trace_scenario,
)
from cowsim.sim.scenario.runner import SUMMARY_COUNTERS
from cowsim.sim.spec import WorkloadSpec, json_schema, load_spec, parse_spec
from cowsim.sim.sweep import (
    MAX_SWEEP_RUNS,
    SweepError,
    SweepPlan,
    SweepPoint,
    SweepSpec,
    load_sweep,
    parse_sweep,
    plan_sweep,
    sweep_json_schema,
)
from cowsim.sim.units import format_bytes, format_rate, format_seconds, parse_bytes

try:
    __version__ = metadata.version("cowsim")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "BOUNDS_SECONDS",
    "COW_CAUSES",
    "ERAS",
    "FAULT_TYPES",
    "MAX_DOCUMENT_BYTES",
    "MAX_PACE",
    "MAX_SWEEP_RUNS",
    "MIN_PACE",
    "NEWEST_KNOWN_VERSION",
    "PAGE_OUTCOMES",
    "SUMMARY_COUNTERS",
    "VIOLATION_KINDS",
    "WHAT_IFS",
    "WORKLOAD_COUNTERS",
    "Budget",
    "BudgetExceeded",
    "CapacityError",
    "Era",
    "Estimate",
    "FaultFlags",
    "FaultReport",
    "Generation",
    "HistogramDelta",
    "InvalidInput",
    "Kernel",
    "KernelOpError",
    "KernelVersionError",
    "PageState",
    "ProgressEvent",
    "Prot",
    "Pte",
    "RunPlan",
    "Scenario",
    "ScenarioResult",
    "Simulation",
    "SweepError",
    "SweepPlan",
    "SweepPoint",
    "SweepSpec",
    "Violation",
    "WorkloadSpec",
    "__version__",
    "all_generations",
    "changes_in",
    "check_pace",
    "check_seed",
    "escape_control",
    "format_bytes",
    "format_rate",
    "format_seconds",
    "generation_for",
    "generations_for",
    "json_schema",
    "kernel_choices",
    "load_scenario",
    "load_spec",
    "load_sweep",
    "page_outcome",
    "parse_bytes",
    "parse_scenario",
    "parse_spec",
    "parse_sweep",
    "plan_run",
    "plan_sweep",
    "read_text",
    "result",
    "run",
    "run_scenario",
    "simulate",
    "sweep_json_schema",
    "trace_scenario",
]
