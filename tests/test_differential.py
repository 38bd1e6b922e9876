"""Differential tests: the vectorized kernel model against the page-by-page reference.

Both models run the same random operation sequence (``strategies.op_sequences``);
after every operation they must agree on whether it failed (and on the field at
fault), on what it returned, and, after ``end_step()``, on the whole canonical
state (``snapshots.py``): page tables, frames, swap, holders, LRU batch, counters
and violations.

The default run is kept short; ``pytest -m slow tests/test_differential.py`` runs the
same property with many more and longer sequences.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from cowsim.sim.kernel import Generation, Kernel, KernelOpError
from tests.reference_model import RefKernel
from tests.snapshots import diff, snapshot_kernel, snapshot_ref
from tests.strategies import GENERATIONS, Op, describe, op_sequences, script

FAST = settings(settings.get_profile("property"), deadline=None,  # tests/conftest.py
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SLOW = settings(settings.get_profile("sweep"), deadline=None,  # examples: tests/conftest.py
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _outcome(op: Op, model: Any) -> tuple[str, Any]:
    try:
        return "ok", op.apply(model)
    except KernelOpError as error:
        return "error", error.field


def run_differential(gen: Generation, ops: list[Op]) -> None:
    """Apply ``ops`` to both models, comparing after each one."""
    kernel = Kernel(gen)
    ref = RefKernel(gen)
    for step, op in enumerate(ops):
        kernel.step = step
        ref.step = step
        got = _outcome(op, kernel)
        want = _outcome(op, ref)
        if got != want:
            pytest.fail(f"[{gen.name}] step {step} {op!r}: kernel gave {got!r}, "
                        f"reference gave {want!r}\n{describe(ops, step)}")
        kernel.end_step()
        ref.end_step()
        a = snapshot_kernel(kernel)
        b = snapshot_ref(ref)
        if a != b:
            lines = diff(a, b)
            shown = "\n".join(f"  {line}" for line in lines[:40])
            more = f"\n  ... {len(lines) - 40} more" if len(lines) > 40 else ""
            pytest.fail(f"[{gen.name}] models disagree after step {step} {op!r}:\n"
                        f"{shown}{more}\nops:\n{describe(ops, step)}")


@pytest.mark.parametrize("gen", GENERATIONS, ids=lambda g: g.name)
@FAST
@given(ops=op_sequences())
def test_models_agree(gen: Generation, ops: list[Op]) -> None:
    run_differential(gen, ops)


@pytest.mark.slow
@pytest.mark.parametrize("gen", GENERATIONS, ids=lambda g: g.name)
def test_models_agree_long(gen: Generation, request: pytest.FixtureRequest) -> None:
    """Many more, longer sequences; only with ``-m slow``."""
    if "slow" not in str(request.config.getoption("markexpr", "")):
        pytest.skip("long differential run: select it with -m slow")

    @SLOW
    @given(ops=op_sequences(max_ops=80))
    def run(ops: list[Op]) -> None:
        run_differential(gen, ops)

    run()


# ----------------------------------------------------------------------
# fixed sequences: each era's distinctive paths, and past disagreements
# ----------------------------------------------------------------------
FIXED: dict[str, list[Op]] = {
    # A write fault through a swap entry, then a fresh allocation (5.18+: the page the
    # fault maps must not be freed on the way, or the next allocation reuses it).
    "swapin_write_then_alloc": script(
        ("mmap", "p0", "a", 1), ("write", "p0", "a", None, 7),
        ("madvise", "p0", "a", "pageout", None), ("write", "p0", "a", None, 8),
        ("mmap", "p0", "b", 1), ("write", "p0", "b", None, 9), ("read", "p0", "a", None),
    ),
    # Sixteen fresh pages: the LRU-add batch fills and flushes in the middle of a write.
    "lru_batch_overflow": script(
        ("mmap", "p0", "a", 6), ("mmap", "p0", "b", 6), ("write", "p0", "a", None, 1),
        ("fork", "p0", "p1"), ("write", "p0", "b", None, 2), ("write", "p1", "a", None, 3),
        ("write", "p0", "a", None, 4),
    ),
    # fork of a pinned page (early copy from 5.9), then writes on both sides.
    "fork_pinned": script(
        ("mmap", "p0", "a", 2), ("write", "p0", "a", None, 1),
        ("pin", "p0", "a", [0], "i0", {"write": False}), ("fork", "p0", "p1"),
        ("write", "p1", "a", None, 2), ("write", "p0", "a", None, 3), ("dma_read", "i0"),
    ),
    # uffd-wp protect on several pages, resolved by one multi-page write: one
    # UFFDIO_WRITEPROTECT(0) per faulting page, whether or not the pages sit in the
    # LRU-add batch.
    "uffd_wp_multi_page_write": script(
        ("mmap", "p0", "a", 3), ("write", "p0", "a", None, 1), ("lru_add_drain",),
        ("uffd_register", "p0", "a"),
        ("uffd_wp", "p0", "a", None, True), ("write", "p0", "a", None, 2),
    ),
    # Two leaks into id i0, each into a different physical page that happens to get the
    # same frame number (the first was freed in between): both must be reported.
    "leak_into_recycled_frame": script(
        ("mmap", "p0", "a", 1), ("write", "p0", "a", None, 1), ("fork", "p0", "p1"),
        ("gup", "p1", "a", None, "i0"), ("exit", "p1"), ("write", "p0", "a", None, 2),
        ("release", "i0"), ("lru_add_drain",), ("munmap", "p0", "a"),
        ("mmap", "p0", "b", 1), ("write", "p0", "b", None, 3), ("fork", "p0", "p2"),
        ("gup", "p2", "b", None, "i0"), ("exit", "p2"), ("write", "p0", "b", None, 4),
    ),
    # clear_refs over a GUP'd page, then a write (Andrea's O_DIRECT case).
    "clear_refs_odirect": script(
        ("mmap", "p0", "a", 1), ("write", "p0", "a", None, 1),
        ("odirect_read", "p0", "a", None, "i0"), ("clear_refs", "p0", "soft_dirty"),
        ("write", "p0", "a", None, 2), ("dma_write", "i0", 3), ("read", "p0", "a", None),
    ),
}


@pytest.mark.parametrize("gen", GENERATIONS, ids=lambda g: g.name)
@pytest.mark.parametrize("name", sorted(FIXED))
def test_fixed_sequences(name: str, gen: Generation) -> None:
    run_differential(gen, FIXED[name])
