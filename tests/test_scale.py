"""Large-model behaviour: exact counts and consistent state at a scale the fast paths use."""

from __future__ import annotations

import numpy as np
import pytest

from cowsim.sim.kernel import Kernel
from cowsim.sim.kernel.pages import PG_anon_exclusive


@pytest.mark.slow
@pytest.mark.parametrize("version", ["5.4", "5.10", "6.8"])
def test_fork_and_cow_of_a_million_pages(version: str) -> None:
    pages = 1 << 20
    k = Kernel(version)
    k.mmap("p", "heap", pages)
    k.write("p", "heap", None, 1)
    k.fork("p", "c")
    chosen = np.sort(np.random.default_rng(7).choice(pages, 100_000, replace=False))
    k.write("p", "heap", chosen, 2)
    assert k.counters["cow_copies"] == 100_000 == k.counters["cow_copies_fork"]
    parent = k.frames_at("p", "heap")
    child = k.frames_at("c", "heap")
    assert int((parent != child).sum()) == 100_000
    assert (k.frames.mapcount[child] == np.where(parent == child, 2, 1)).all()
    assert (k.peek("c", "heap") == 1).all()
    seen = k.peek("p", "heap")
    assert (seen[chosen] == 2).all()
    assert int((seen == 1).sum()) == pages - 100_000
    if k.gen.anon_exclusive:
        exclusive = (k.frames.flags[parent] & PG_anon_exclusive) != 0
        assert (exclusive == (parent != child)).all()
    k.exit("c")
    k.lru_add_drain()
    assert k.frames.nr_in_use == pages
    assert (k.frames.refcount[parent] == 1).all()
