"""frame_runs' sampled proof of "too many runs" (a read of 1 Ki evenly spaced frames before
the full pass) gives the full pass's answer: the same runs, or None exactly when there are
at least RUNS_MAX of them."""

from __future__ import annotations

import numpy as np
import pytest

from cowsim.sim.kernel.pages import (
    RUNS_MAX,
    RUNS_MIN_FRAMES,
    SAMPLED_GAPS,
    SAMPLED_MIN_STRIDE,
    frame_runs,
)


def plain_runs(frames: np.ndarray) -> list[tuple[int, int]] | None:
    """The full pass alone (frame_runs before the sampled proof)."""
    if frames.size < RUNS_MIN_FRAMES:
        return None
    breaks = np.flatnonzero(np.diff(frames) != 1)
    if breaks.size >= RUNS_MAX:
        return None
    starts = [0, *(breaks + 1).tolist()]
    stops = [*(breaks + 1).tolist(), int(frames.size)]
    return [(int(frames[a]), int(frames[a]) + (b - a)) for a, b in zip(starts, stops, strict=True)]


def _runs_of(rng: np.random.Generator, size: int, nruns: int) -> np.ndarray:
    """``size`` frames in ``nruns`` runs of consecutive numbers (runs of random lengths,
    placed at random, never touching), the shape of a region after some COW copies."""
    cuts: list[int] = (np.sort(rng.choice(np.arange(1, size), nruns - 1, replace=False)).tolist()
                       if nruns > 1 else [])
    lengths = np.diff([0, *cuts, size])
    starts = np.cumsum(rng.integers(2, 1000, nruns)) + np.concatenate(([0], np.cumsum(lengths)[:-1]))
    rng.shuffle(starts)
    return np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths, strict=True)]
                          ).astype(np.int32)


SIZES = [RUNS_MIN_FRAMES, SAMPLED_GAPS * SAMPLED_MIN_STRIDE - 1, SAMPLED_GAPS * SAMPLED_MIN_STRIDE,
         SAMPLED_GAPS * SAMPLED_MIN_STRIDE * 3 + 17]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("nruns", [1, 2, RUNS_MAX - 1, RUNS_MAX, RUNS_MAX + 1, 500])
def test_sampled_runs_equal_the_full_pass(size: int, nruns: int) -> None:
    rng = np.random.default_rng(size * 1000 + nruns)
    for _ in range(3):
        frames = _runs_of(rng, size, nruns)
        assert frame_runs(frames) == plain_runs(frames)


def test_scattered_copies_are_refused_by_the_samples() -> None:
    """A populated region with copies scattered all over it (the parent after a COW phase)."""
    rng = np.random.default_rng(7)
    size = SAMPLED_GAPS * SAMPLED_MIN_STRIDE * 4
    frames = np.arange(1, size + 1, dtype=np.int32)
    copied = rng.choice(size, size // 20, replace=False)
    frames[copied] = size + 1 + np.arange(copied.size, dtype=np.int32)
    assert frame_runs(frames) is None
    assert plain_runs(frames) is None
    frames[:] = np.arange(1, size + 1)
    frames[size // 3] = size + 5  # two breaks: three runs, found by the full pass
    assert frame_runs(frames) == plain_runs(frames) == [
        (1, size // 3 + 1), (size + 5, size + 6), (size // 3 + 2, size + 1)]
