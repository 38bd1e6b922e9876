"""Planning a run: every check that makes a spec runnable, in one place, before anything runs.

:func:`plan_run` is the one gate between a spec (from a file, a flag, a gRPC
message) and the engine.  It checks what the models cannot check field by
field and what depends on the caller's overrides and on this machine:

1. the spec's cross-references (unique process names, workload targets, the
   tick within the duration) — :func:`cowsim.sim.spec.check_spec`;
2. the kernel: the override if given, else the spec's ``kernel`` — a real
   release line, an era id or a what-if
   (:func:`~cowsim.sim.kernel.generations.generation_for`);
3. the seed: the override if given, else the spec's, 0 … 2**63-1;
4. the machine: its cost profile and every override in ``machine.costs``;
5. the resident memory of all processes against the machine's memory;
6. the budget (:mod:`cowsim.sim.budget`): model memory, frames, events,
   pages touched and per-tick arrays, estimated per workload kind
   (:mod:`cowsim.sim.estimate`).

It returns a :class:`RunPlan` — the resolved generation, seed and cost model,
the estimate, and ``max_frames``, the frames bound the kernel model must be
built with — or raises :class:`~cowsim.sim.errors.InvalidInput` (a
:class:`~cowsim.sim.errors.BudgetExceeded` for a valid spec too big to run)
whose path names the field.  Errors about a field of the spec carry
``source`` (the file name); errors about an override carry the path
``("kernel",)`` or ``("seed",)`` and no source, so the caller says where the
override came from (the CLI: ``error.within(source="--kernel")``)::

    plan = plan_run(spec, kernel="5.10", source="spec.yaml")
    sim = build(plan.spec, kernel=plan.kernel, seed=plan.seed, max_frames=plan.max_frames)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cowsim.sim.budget import Budget, Estimate
from cowsim.sim.errors import InvalidInput, KernelVersionError
from cowsim.sim.estimate import estimate_spec
from cowsim.sim.kernel.generations import Generation, generation_for
from cowsim.sim.machine.costs import CostModel, cost_model, is_profile_file
from cowsim.sim.spec import MAX_SEED, SpecError, WorkloadSpec, check_spec
from cowsim.sim.units import format_bytes

__all__ = ["MAX_PACE", "MIN_PACE", "RunPlan", "check_pace", "check_seed", "plan_run"]

MIN_PACE = 1e-3
"""The slowest pace: a simulated millisecond per wall-clock second."""
MAX_PACE = 1e6
"""The fastest pace a run is held to (faster runs are not held back at all)."""


@dataclass(frozen=True)
class RunPlan:
    """A spec checked and resolved: what a run needs."""

    spec: WorkloadSpec
    generation: Generation
    seed: int
    costs: CostModel
    estimate: Estimate
    max_frames: int
    """The frames bound of the estimate: build the kernel model with it."""

    @property
    def kernel(self) -> str:
        """The kernel name to build with (the generation's own name)."""
        return self.generation.name


def check_seed(seed: object, *, path: tuple[str, ...] = ("seed",), source: str | None = None) -> int:
    """``seed`` if it is an integer 0 … 2**63-1, else InvalidInput."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidInput(f"a seed is an integer, not {type(seed).__name__}", path=path, source=source)
    if not 0 <= seed <= MAX_SEED:
        raise InvalidInput(f"a seed is 0 … 2**63-1, not {seed}", path=path, source=source)
    return seed


def check_pace(pace: object, *, path: tuple[str, ...] = ("pace",), source: str | None = None
               ) -> float:
    """``pace`` (simulated seconds per wall-clock second) if it is a finite number in
    :data:`MIN_PACE` … :data:`MAX_PACE`, else InvalidInput."""
    if isinstance(pace, bool) or not isinstance(pace, (int, float)):
        raise InvalidInput(f"a pace is a number, not {type(pace).__name__}", path=path, source=source)
    if not (math.isfinite(pace) and MIN_PACE <= pace <= MAX_PACE):
        raise InvalidInput(f"a pace is {MIN_PACE:g} … {MAX_PACE:g} simulated seconds per "
                           f"wall-clock second, not {pace:g}", path=path, source=source)
    return float(pace)


def _costs(spec: WorkloadSpec, source: str | None) -> CostModel:
    """The machine's cost model; an error names ``machine`` (the message names the cost)."""
    machine = spec.machine
    try:
        cost_model(machine.profile)
    except ValueError as exc:
        raise SpecError(str(exc), path=("machine", "profile"), source=source) from None
    try:
        return cost_model(machine.profile, **machine.costs)
    except (ValueError, TypeError) as exc:
        raise SpecError(str(exc), path=("machine",), source=source) from None


def plan_run(spec: WorkloadSpec, *, kernel: str | None = None, seed: int | None = None,
             budget: Budget | None = None, source: str | None = None) -> RunPlan:
    """Check ``spec`` (with the caller's ``kernel`` and ``seed`` overrides) against this
    machine and ``budget`` (default: :meth:`Budget.from_env`); see the module docstring."""
    check_spec(spec, source)
    limits = budget if budget is not None else Budget.from_env()
    if not limits.profile_files and is_profile_file(spec.machine.profile):
        raise SpecError("a profile file is not read here (a server reads no files for a "
                        "spec): name a built-in profile and override its costs in "
                        "machine.costs", path=("machine", "profile"), source=source)
    if kernel is not None:
        try:
            generation = generation_for(kernel)
        except KernelVersionError as exc:
            raise exc.within("kernel") from None
    else:
        try:
            generation = generation_for(spec.kernel)
        except KernelVersionError as exc:
            raise exc.within("kernel", source=source) from None
    resolved_seed = check_seed(seed) if seed is not None else check_seed(spec.seed, source=source)
    costs = _costs(spec, source)
    resident = sum(process.memory for process in spec.processes)
    if resident > costs.memory_bytes:
        raise SpecError(f"resident memory {format_bytes(resident)} exceeds the machine's "
                        f"{format_bytes(costs.memory_bytes)} (machine.costs.memory_bytes)",
                        path=("processes",), source=source)
    estimate = estimate_spec(spec, costs, generation)
    limits.check(estimate, source=source)
    return RunPlan(spec=spec, generation=generation, seed=resolved_seed, costs=costs,
                   estimate=estimate, max_frames=estimate.frames)
