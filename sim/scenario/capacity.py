"""Refusing scenarios the model cannot hold, before running anything.

The model keeps about :data:`BYTES_PER_PTE` bytes per page-table entry and
:data:`BYTES_PER_FRAME` per physical frame.  Walking the steps once (mmap adds
a region, fork duplicates every region of the parent, munmap and exit drop
them) gives the peak number of mapped pages; every mapped page may need its
own frame.  If that peak exceeds the model's frame limit or half of this
machine's memory, the scenario is refused with a clear error at the step that
would cross it, rather than failing with an out-of-memory crash mid-run.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cowsim.sim.kernel.kernel import DEFAULT_MAX_FRAMES

if TYPE_CHECKING:
    from cowsim.sim.scenario.schema import Scenario

BYTES_PER_PTE = 6
BYTES_PER_FRAME = 13


def memory_budget_bytes() -> int:
    """Half of this machine's physical memory (16 GiB if it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def check_capacity(scenario: Scenario, file: str, max_frames: int = DEFAULT_MAX_FRAMES,
                   budget_bytes: int | None = None) -> None:
    """Raise ScenarioError if the scenario's peak mapped pages exceed what the model may hold."""
    from cowsim.sim.scenario.loader import ScenarioError

    budget = memory_budget_bytes() if budget_bytes is None else budget_bytes
    regions: dict[str, dict[str, int]] = {}
    total = 0
    for index, step in enumerate(scenario.steps):
        if step.op == "mmap":
            proc = regions.setdefault(step.proc, {})
            total += step.pages - proc.get(step.region, 0)
            proc[step.region] = step.pages
            field = "pages"
        elif step.op == "fork":
            child = dict(regions.get(step.proc, {}))
            total += sum(child.values()) - sum(regions.get(step.child, {}).values())
            regions[step.child] = child
            field = "proc"
        elif step.op == "munmap":
            total -= regions.get(step.proc, {}).pop(step.region, 0)
            continue
        elif step.op == "exit":
            total -= sum(regions.pop(step.proc, {}).values())
            continue
        else:
            continue
        need_bytes = total * (BYTES_PER_PTE + BYTES_PER_FRAME)
        if total > max_frames or need_bytes > budget:
            raise ScenarioError(
                file,
                f"{total:,} mapped pages ({total * 4096 / 2**30:,.1f} GiB simulated) need about "
                f"{need_bytes / 2**30:,.1f} GiB of model state; the limit here is "
                f"{min(max_frames, budget // (BYTES_PER_PTE + BYTES_PER_FRAME)):,} pages "
                f"({budget / 2**30:,.1f} GiB)",
                step=index, op=step.op, field=field,
            )
