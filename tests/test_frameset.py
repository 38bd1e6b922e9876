"""FrameSet's three update strategies (slices, dense mask, fancy indexing) agree with plain numpy."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from cowsim.sim.kernel.pages import DENSE_SHARE, RUNS_MIN_FRAMES, FrameSet


def reference(size: int, frames: np.ndarray, delta: int) -> np.ndarray:
    out = np.full(size, 5, dtype=np.int32)
    np.add.at(out, frames, delta)
    return out


CASES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "consecutive": lambda rng, n: np.arange(100, 100 + n, dtype=np.int32),
    "few runs": lambda rng, n: np.concatenate([np.arange(10, 10 + n // 2),
                                               np.arange(5 * n, 5 * n + n - n // 2)]).astype(np.int32),
    "scattered, large share": lambda rng, n: rng.permutation(2 * n)[:n].astype(np.int32),
    "scattered, small share": lambda rng, n: rng.choice(40 * n, n, replace=False).astype(np.int32),
    "small": lambda rng, n: rng.choice(1000, 10, replace=False).astype(np.int32),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("delta", [1, -1, 1024, -1024])
def test_updates_agree_with_numpy(case: str, delta: int) -> None:
    rng = np.random.default_rng(42)
    count = RUNS_MIN_FRAMES * 3
    frames = CASES[case](rng, count)
    size = int(max(frames.max() + 1, count * DENSE_SHARE // 2))
    array = np.full(size, 5, dtype=np.int32)
    batch = FrameSet(frames)
    batch.add(array, delta)
    assert (array == reference(size, frames, delta)).all()
    flags = np.full(size, 0b1010, dtype=np.uint8)
    batch.set_flag(flags, np.uint8(1))
    batch.clear_flag(flags, np.uint8(0b1000))
    expected = np.full(size, 0b1010, dtype=np.uint8)
    expected[frames] = 0b0011
    assert (flags == expected).all()
    assert (batch.gather(array) == array[frames]).all()
    batch.assign(array, 9)
    assert (array[frames] == 9).all()
