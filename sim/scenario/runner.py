"""Running a scenario on one kernel generation.

Each step becomes one call on a fresh :class:`~cowsim.sim.kernel.Kernel`;
expectations are checked where they stand; after every step the pin oracles
run.  The result has exactly the keys of the design's JSON interface.  An
operation the simulated kernel refuses (writing a read-only region, GUP on an
unmapped one, releasing an unknown id …) is invalid input: a
:class:`ScenarioError` naming the step and field.

The kernel model is built with the frames bound that
:func:`~cowsim.sim.scenario.capacity.check_capacity` computed, so a scenario
it accepted never runs out of frames; one it refuses is refused here too,
before the first step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from cowsim.sim.budget import Budget
from cowsim.sim.errors import BudgetExceeded, InvalidInput
from cowsim.sim.kernel import Generation, Kernel, Violation
from cowsim.sim.scenario import schema as s
from cowsim.sim.scenario.capacity import check_capacity
from cowsim.sim.scenario.loader import ScenarioError

SUMMARY_COUNTERS = ("page_faults", "cow_copies", "wp_reuses", "tlb_flushes")


@dataclass
class Expectation:
    step: int
    ok: bool
    expected: Any
    observed: Any
    what: str

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "ok": self.ok, "expected": self.expected,
                "observed": self.observed, "what": self.what}


@dataclass
class ScenarioResult:
    """The outcome of one scenario on one generation."""

    scenario: str
    file: str
    kernel: str
    era: str
    expectations: list[Expectation] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    frames_peak: int = 0
    """The most page frames the kernel model held at once (not part of the JSON)."""
    max_frames: int = 0
    """The frames bound the model was built with (check_capacity's; not part of the JSON)."""

    @property
    def ok(self) -> bool:
        return all(expectation.ok for expectation in self.expectations)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "file": self.file,
            "kernel": self.kernel,
            "era": self.era,
            "ok": self.ok,
            "expectations": [e.as_dict() for e in self.expectations],
            "violations": [
                {"kind": v.kind, "step": v.step, "detail": v.detail, "proc": v.proc,
                 "region": v.region, "page": v.page, "frames": list(v.frames)}
                for v in self.violations
            ],
            "counters": dict(self.counters),
        }


def _pages_label(selector: list[int] | range | None) -> str:
    if selector is None:
        return "all pages"
    if isinstance(selector, range):
        return f"pages {selector.start}-{selector.stop - 1}"
    if len(selector) == 1:
        return f"page {selector[0]}"
    return "pages " + ",".join(str(page) for page in selector)


def _values_check(values: npt.NDArray[np.uint32], expected: int) -> tuple[bool, int | None]:
    """All values equal expected?  Observed: the first differing value (or expected)."""
    if values.size == 0:
        return True, expected
    wrong = np.flatnonzero(values != expected)
    if wrong.size == 0:
        return True, expected
    return False, int(values[wrong[0]])


class _Run:
    def __init__(self, scenario: s.Scenario, file: str, generation: Generation,
                 max_frames: int) -> None:
        self.kernel = Kernel(generation, max_frames=max_frames)
        self.result = ScenarioResult(scenario=scenario.name, file=file, kernel=generation.label,
                                     era=generation.era)
        self.file = file

    def expect_values(self, index: int, values: npt.NDArray[np.uint32], expected: int,
                      what: str) -> None:
        ok, observed = _values_check(values, expected)
        self.result.expectations.append(Expectation(index, ok, expected, observed, what))

    def step(self, index: int, step: s.Step) -> None:
        k = self.kernel
        k.step = index
        match step:
            case s.Mmap():
                k.mmap(step.proc, step.region, step.pages, shared=step.shared,
                       populate=step.populate)
            case s.Munmap():
                k.munmap(step.proc, step.region)
            case s.Write():
                k.write(step.proc, step.region, step.selected(), step.value)
            case s.Read():
                values = k.read(step.proc, step.region, step.selected())
                if step.expect is not None:
                    self.expect_values(index, values, step.expect,
                                       f"{step.proc} {step.region} {_pages_label(step.selected())}")
            case s.Fork():
                k.fork(step.proc, step.child)
            case s.Exit():
                k.exit(step.proc)
            case s.Mprotect():
                k.mprotect(step.proc, step.region, step.prot)
            case s.Madvise():
                k.madvise(step.proc, step.region, step.advice, step.selected())
            case s.ClearRefs():
                k.clear_refs(step.proc, step.type)
            case s.Pagemap():
                bits = k.pagemap(step.proc, step.region, step.selected())
                for name, wanted in step.expect.model_dump(exclude_none=True).items():
                    seen = bits[name]
                    wrong = np.flatnonzero(seen != wanted)
                    observed = bool(seen[wrong[0]]) if wrong.size else wanted
                    self.result.expectations.append(Expectation(
                        index, wrong.size == 0, wanted, observed,
                        f"pagemap {name} of {step.proc} {step.region} "
                        f"{_pages_label(step.selected())}"))
            case s.UffdRegister():
                k.uffd_register(step.proc, step.region)
            case s.UffdWp():
                k.uffd_wp(step.proc, step.region, step.selected(), step.protect)
            case s.Gup():
                k.gup(step.proc, step.region, step.selected(), step.id, write=step.write)
            case s.Pin():
                k.pin(step.proc, step.region, step.selected(), step.id, write=step.write,
                      longterm=step.longterm)
            case s.Release():
                k.release(step.id)
            case s.Vmsplice():
                k.vmsplice(step.proc, step.region, step.selected(), step.pipe)
            case s.OdirectRead():
                k.odirect_read(step.proc, step.region, step.selected(), step.id)
            case s.OdirectWrite():
                k.odirect_write(step.proc, step.region, step.selected(), step.id)
            case s.IoUringRegister():
                k.io_uring_register(step.proc, step.region, step.selected(), step.id)
            case s.DmaWrite():
                k.dma_write(step.id, step.value)
            case s.DmaRead():
                values = k.dma_read(step.id)
                if step.expect is not None:
                    self.expect_values(index, values, step.expect, f"device read of id {step.id}")
            case s.LruDrain():
                k.lru_add_drain(step.cpu)
            case s.Expect():
                self.expectation(index, step)
        k.end_step()

    def expectation(self, index: int, step: s.Expect) -> None:
        k = self.kernel
        if step.counters is not None:
            observed = {name: k.counters[name] for name in step.counters}
            self.result.expectations.append(Expectation(
                index, observed == step.counters, dict(step.counters), observed, "counters"))
            return
        if step.same_frame is not None:
            (p1, r1, n1), (p2, r2, n2) = step.same_frame
            f1 = int(k.frames_at(p1, r1, [n1])[0])
            f2 = int(k.frames_at(p2, r2, [n2])[0])
            same = f1 == f2 and f1 >= 0
            self.result.expectations.append(Expectation(
                index, same == step.value, step.value, same,
                f"same frame: {p1} {r1} page {n1} and {p2} {r2} page {n2}"))
            return
        assert isinstance(step.value, int)
        if step.pipe is not None:
            values = k.frames.content[k.pipe(step.pipe).all_frames()]
            self.expect_values(index, values, step.value, f"pipe {step.pipe}")
        elif step.id is not None:
            self.expect_values(index, k.dma_read(step.id), step.value, f"id {step.id}")
        else:
            assert step.proc is not None
            assert step.region is not None
            values = k.peek(step.proc, step.region, step.selected())
            self.expect_values(index, values, step.value,
                               f"{step.proc} {step.region} {_pages_label(step.selected())}")


class StepObserver(Protocol):
    """Sees the kernel model just before and just after each step (the kernel is the
    observer's to query, not to change): how :func:`~cowsim.sim.scenario.trace.trace_scenario`
    records what a real kernel would show."""

    def before(self, index: int, step: s.Step, kernel: Kernel) -> None: ...

    def after(self, index: int, step: s.Step, kernel: Kernel) -> None: ...


def run_scenario(scenario: s.Scenario, generation: Generation, file: str = "<scenario>", *,
                 budget: Budget | None = None,
                 observer: StepObserver | None = None) -> ScenarioResult:
    """Run every step on a fresh kernel of ``generation`` (refused up front, with
    BudgetExceeded, if it does not fit ``budget``; default :meth:`Budget.from_env`),
    showing the kernel to ``observer`` around each step."""
    run = _Run(scenario, file, generation, check_capacity(scenario, file, budget))
    for index, step in enumerate(scenario.steps):
        try:
            if observer is not None:
                observer.before(index, step, run.kernel)
            run.step(index, step)
            if observer is not None:
                observer.after(index, step, run.kernel)
        except BudgetExceeded as exc:  # CapacityError: cannot happen within the bound
            raise BudgetExceeded(exc.message, path=("steps", index, "pages"), source=file,
                                 op=step.op) from None
        except InvalidInput as exc:  # KernelOpError: the simulated kernel refused the step
            raise ScenarioError(file, exc.message, op=step.op,
                                path=("steps", index, *exc.path)) from None
    run.result.violations = list(run.kernel.violations)
    run.result.counters = dict(run.kernel.counters)
    run.result.frames_peak = run.kernel.frames.nr_used - 1
    run.result.max_frames = run.kernel.frames.max_frames
    return run.result
