"""The sampler's shared-page count (chunked gathers from a byte mask) agrees with a plain gather."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from cowsim.sim.sampler import count_multiply_mapped, multiply_mapped_mask


@st.composite
def mapcounts_and_frames(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    nframes = draw(st.integers(1, 400))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    mapcount = rng.integers(0, 4, nframes).astype(np.int32)
    npages = draw(st.integers(0, 300))
    base = draw(st.integers(0, nframes - 1))
    # A populated region: consecutive frames from `base` (clipped at the end of the
    # frame table), some of them replaced, as COW copies and frees replace them.
    frames = np.minimum(base + np.arange(npages), nframes - 1).astype(np.int32)
    replaced = rng.random(npages) < draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    frames[replaced] = rng.integers(0, nframes, int(replaced.sum()))
    return mapcount, frames, draw(st.integers(1, 64))


@given(mapcounts_and_frames())
def test_count_multiply_mapped_equals_a_gather(case: tuple[np.ndarray, np.ndarray, int]) -> None:
    mapcount, frames, chunk_pages = case
    expected = int(np.count_nonzero(mapcount[frames] > 1))
    assert count_multiply_mapped(mapcount, frames, chunk_pages) == expected
    assert count_multiply_mapped(mapcount, frames) == expected
    mask = multiply_mapped_mask(mapcount)
    assert count_multiply_mapped(mapcount, frames, chunk_pages, mask=mask) == expected
