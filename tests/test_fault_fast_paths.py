"""The fused write-protect fault path (fault._wp_copy_few: the reuse decision, the copies and
their LRU-add batch entry in one step) leaves exactly the state the plain path leaves
(do_wp_page, wp_page_copy, then lru_cache_add), in every generation.

Two kernels run the same operations; in one the fused path is switched off (its size
bound set to zero, so every batch of write faults takes do_wp_page).  After each write
their frames, page tables, LRU-add batches, free lists, counters and fault reports must
be identical, frame number for frame number.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from cowsim.sim.kernel import Kernel, fault
from tests.strategies import GENERATIONS


def _state(k: Kernel) -> dict[str, object]:
    pg = k.frames
    used = pg.nr_used
    state: dict[str, object] = {
        "refcount": pg.refcount[:used].tolist(),
        "mapcount": pg.mapcount[:used].tolist(),
        "flags": pg.flags[:used].tolist(),
        "content": pg.content[:used].tolist(),
        "free": pg._free[: pg._nr_free].tolist(),
        "counters": dict(k.counters),
        "lru": {cpu: k.lru.frames(cpu).tolist() for cpu in k.lru.cpus()},
    }
    for name, owner in k.procs.items():
        for region, vma in owner.mm.vmas.items():
            state[f"{name}/{region}"] = (vma.pfn.tolist(), vma.pte.tolist())
    return state


def _script(seed: int) -> Iterator[tuple[str, tuple[object, ...], dict[str, object]]]:
    """Forks, child writes (so that some parent pages become reusable), mprotect cycles
    (another cause of read-only PTEs), child exits, reads of untouched pages (the zero
    page), LRU-add drains and parent writes of random page sets, in a fixed random order."""
    rng = np.random.default_rng(seed)
    yield "mmap", ("p", "heap", 96), {}
    yield "write", ("p", "heap", list(range(80)), 1), {}
    forks = 0
    alive: list[str] = []
    for step in range(20):
        choice = rng.integers(7)
        if rng.integers(3) == 0:
            yield "lru_add_drain", (), {}  # (a page in a batch keeps a write off the fused path)
        if choice == 0 or step == 0:
            forks += 1
            child = f"c{forks}"
            alive.append(child)
            yield "fork", ("p", child), {}
            if rng.integers(2):
                pages = np.unique(rng.integers(0, 96, 20)).tolist()
                yield "write", (child, "heap", pages, 100 + step), {"cpu": 1}
        elif choice == 1 and alive:
            yield "exit", (alive.pop(int(rng.integers(len(alive)))),), {}
        elif choice == 2:
            yield "mprotect", ("p", "heap", "r"), {}
            yield "mprotect", ("p", "heap", "rw"), {}
        elif choice == 3:
            yield "read", ("p", "heap", np.unique(rng.integers(0, 96, 8)).tolist()), {}
        else:
            pages = np.unique(rng.integers(0, 96, int(rng.integers(1, 40)))).tolist()
            yield "write", ("p", "heap", pages, 200 + step), {"cpu": int(rng.integers(2))}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("gen", GENERATIONS, ids=lambda g: g.name)
def test_fused_write_faults_equal_the_plain_path(gen: object, seed: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fused, plain = Kernel(gen), Kernel(gen)  # type: ignore[arg-type]
    taken = 0
    original = fault._wp_copy_few

    def counting(*args: object) -> object:
        nonlocal taken
        taken += 1
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(fault, "_wp_copy_few", counting)
    for op, args, kwargs in _script(seed):
        got = getattr(fused, op)(*args, **kwargs)
        with monkeypatch.context() as plain_only:
            plain_only.setattr(fault, "RUNS_MIN_FRAMES", 0)  # every batch: do_wp_page
            want = getattr(plain, op)(*args, **kwargs)
        if op == "write":
            assert got.flags.tolist() == want.flags.tolist(), (op, args)
        elif op == "read":
            assert got.tolist() == want.tolist()
        assert _state(fused) == _state(plain), (op, args)
    assert taken > 0, "the script never took the fused path"


@pytest.mark.parametrize("gen", GENERATIONS, ids=lambda g: g.name)
def test_fused_path_frees_a_dead_batch_page_as_the_plain_path(
        gen: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child's copies still in CPU 1's LRU-add batch when it exits hold only the batch's
    reference; the parent's copies flushing that batch free them, in the same order."""
    kernels = []
    for plain in (False, True):
        k = Kernel(gen)  # type: ignore[arg-type]
        with monkeypatch.context() as patch:
            if plain:
                patch.setattr(fault, "RUNS_MIN_FRAMES", 0)
            k.mmap("p", "heap", 64)
            k.write("p", "heap", None, 1)
            k.lru_add_drain()
            k.fork("p", "c")
            k.write("c", "heap", [3, 5, 7, 9], 2, cpu=1)  # four copies batched on CPU 1
            k.exit("c")
            k.fork("p", "d")
            report = k.write("p", "heap", list(range(10, 40)), 3, cpu=1)  # flushes the batch
        kernels.append((k, report.flags.tolist()))
    (fused, fused_flags), (plain_kernel, plain_flags) = kernels
    assert fused.counters["pages_freed"] > 0
    assert fused_flags == plain_flags
    assert _state(fused) == _state(plain_kernel)
