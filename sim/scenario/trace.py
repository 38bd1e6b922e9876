"""What the model predicts a real kernel shows, step by step: the other half of validate-host.

``cowsim validate-host`` (:mod:`cowsim.clients.validate_host`) runs a scenario as real
processes and records, per step, what user space can see of the kernel: the faults
a step took, what happened to each page's frame (through ``/proc/PID/pagemap``), the
values a load, a pipe or a device sees.  :func:`trace_scenario` runs the same scenario
on the model and records the same observations in the same words, so the two are
compared as plain dicts.

The vocabulary, per step (``op`` → keys):

* ``faults`` — the step's faults: the model's ``page_faults`` delta; on a real kernel the
  process's ``ru_minflt + ru_majflt`` delta (GUP's faults included).  For CPU accesses and GUP users.
* ``pages`` — one word per page of the step's selection, from the page's state before
  and after the step (:func:`page_outcome`): ``none`` (not mapped, still not), ``faulted
  in``, ``reused`` (the same frame), ``copied`` (another frame), ``unmapped``,
  ``swapped out``, ``swapped in``, ``swapped``.
* ``child`` — for ``fork``: per region of the parent, per page, ``shared`` (the child maps
  the parent's frame), ``copied``, ``absent`` or ``not inherited``.
* ``values`` — what a load (``read``, ``expect`` on a region), a pipe or a device read
  returns: each page's 32-bit value.
* ``same_frame``, ``bits`` (pagemap), ``counters`` — for those expectations.

Only ``page_faults`` and ``cow_copies`` are counters a real kernel lets user space
observe for a scenario (summed from the steps' ``faults`` and ``copied`` pages); the
trace records every counter and the comparison picks those.
"""

from __future__ import annotations

from typing import Any

from cowsim.sim.budget import Budget
from cowsim.sim.errors import InvalidInput
from cowsim.sim.kernel import Generation, Kernel
from cowsim.sim.scenario import schema as s
from cowsim.sim.scenario.runner import run_scenario

__all__ = ["PAGE_OUTCOMES", "PageState", "page_outcome", "trace_scenario"]

PageState = tuple[str, int]
"""A page's state: ``("absent" | "present" | "swapped", frame)`` (frame -1 when absent)."""

PAGE_OUTCOMES = ("none", "faulted in", "reused", "copied", "unmapped", "swapped out",
                 "swapped in", "swapped")


def page_outcome(before: PageState, after: PageState) -> str:
    """What a step did to one page, from its state before and after (see the module doc)."""
    (was, old), (now, new) = before, after
    if was == "present" and now == "present":
        return "reused" if old == new else "copied"
    if was == "swapped":
        return {"present": "swapped in", "swapped": "swapped", "absent": "unmapped"}[now]
    if now == "swapped":
        return "swapped out"
    if was == "absent":
        return "faulted in" if now == "present" else "none"
    return "unmapped"


def _states(k: Kernel, proc: str, region: str) -> list[PageState] | None:
    """Every page of ``region`` in ``proc``: present/swapped/absent and its frame (None when
    the process or the region does not exist)."""
    try:
        bits = k.pagemap(proc, region)
        frames = k.frames_at(proc, region)
    except InvalidInput:
        return None
    out: list[PageState] = []
    for present, swapped, frame in zip(bits["present"], bits["swapped"], frames, strict=True):
        state = "present" if present else "swapped" if swapped else "absent"
        out.append((state, int(frame) if present else -1))
    return out


def _selected(step: s.Step, count: int) -> list[int]:
    chosen = step.selected()
    return list(range(count)) if chosen is None else [page for page in chosen if page < count]


_FAULTING = ("write", "read", "gup", "pin", "vmsplice", "odirect_read", "odirect_write",
             "io_uring_register", "uffd_wp", "mmap")
_PAGES = (*_FAULTING, "mprotect", "madvise")


class _Tracer:
    def __init__(self, scenario: s.Scenario) -> None:
        self.steps: list[dict[str, Any]] = [{} for _ in scenario.steps]
        self._before: list[PageState] | None = None
        self._faults = 0

    def before(self, index: int, step: s.Step, k: Kernel) -> None:
        self._faults = k.counters["page_faults"]
        proc, region = getattr(step, "proc", None), getattr(step, "region", None)
        self._before = (_states(k, proc, region) if step.op in _PAGES and proc and region
                        else None)

    def after(self, index: int, step: s.Step, k: Kernel) -> None:
        seen = self.steps[index]
        if step.op in _FAULTING:
            seen["faults"] = k.counters["page_faults"] - self._faults
        proc, region = getattr(step, "proc", None), getattr(step, "region", None)
        if step.op in _PAGES and proc and region:
            after = _states(k, proc, region) or []
            before = self._before or [("absent", -1)] * len(after)
            seen["pages"] = [page_outcome(before[page], after[page])
                             for page in _selected(step, len(after))]
        match step:
            case s.Fork():
                seen["child"] = self._fork(k, step.proc, step.child)
            case s.Read():
                seen["values"] = [int(v) for v in k.peek(step.proc, step.region, step.selected())]
            case s.DmaRead():
                seen["values"] = [int(v) for v in k.dma_read(step.id)]
            case s.Pagemap():
                bits = k.pagemap(step.proc, step.region, step.selected())
                seen["bits"] = {name: [bool(b) for b in bits[name]]
                                for name in step.expect.model_dump(exclude_none=True)}
            case s.Expect():
                seen.update(self._expectation(k, step))
            case _:
                pass
        seen["counters"] = dict(k.counters)

    @staticmethod
    def _fork(k: Kernel, parent: str, child: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for region in k.procs[parent].mm.vmas:
            mine = _states(k, parent, region) or []
            theirs = _states(k, child, region)
            if theirs is None:
                out[region] = ["not inherited"] * len(mine)
                continue
            out[region] = [
                "absent" if state != "present" else
                "shared" if (p_state == "present" and frame == p_frame) else "copied"
                for (p_state, p_frame), (state, frame) in zip(mine, theirs, strict=True)]
        return out

    @staticmethod
    def _expectation(k: Kernel, step: s.Expect) -> dict[str, Any]:
        if step.counters is not None:
            return {}
        if step.same_frame is not None:
            (p1, r1, n1), (p2, r2, n2) = step.same_frame
            f1 = int(k.frames_at(p1, r1, [n1])[0])
            f2 = int(k.frames_at(p2, r2, [n2])[0])
            return {"same_frame": f1 == f2 and f1 >= 0}
        if step.pipe is not None:
            frames = k.pipe(step.pipe).all_frames()
            return {"values": [int(v) for v in k.frames.content[frames]]}
        if step.id is not None:
            return {"values": [int(v) for v in k.dma_read(step.id)]}
        assert step.proc is not None
        assert step.region is not None
        return {"values": [int(v) for v in k.peek(step.proc, step.region, step.selected())]}


def trace_scenario(scenario: s.Scenario, generation: Generation, file: str = "<scenario>", *,
                   budget: Budget | None = None) -> list[dict[str, Any]]:
    """Run ``scenario`` on the model of ``generation`` and return, per step, the
    observations a real kernel would give (module doc): the prediction validate-host
    compares the host with.  Raises what :func:`run_scenario` raises for invalid input."""
    tracer = _Tracer(scenario)
    run_scenario(scenario, generation, file, budget=budget, observer=tracer)
    return tracer.steps
