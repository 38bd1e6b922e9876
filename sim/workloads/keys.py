"""Which pages a request touches: uniform, Zipf or hot-set key distributions over a region.

Sampling is vectorized: one call draws the pages of a whole batch of
requests.  Zipf ranks use the inverse CDF of the continuous bounded power law
(rank^-s over 1..N), and ranks are spread over the region by a fixed
multiplicative bijection so that hot pages are not all adjacent.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import numpy.typing as npt

from cowsim.sim.spec import KeySpec


@functools.lru_cache(maxsize=64)
def _coprime_multiplier(npages: int) -> int:
    """A multiplier coprime with npages near the golden ratio of it (a bijection mod N)."""
    candidate = max(1, int(npages * 0.6180339887)) | 1
    while math.gcd(candidate, npages) != 1:
        candidate += 2
    return candidate


def sample_pages(rng: np.random.Generator, keys: KeySpec, npages: int,
                 count: int) -> npt.NDArray[np.int64]:
    """``count`` page indices in [0, npages) drawn from the key distribution."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if keys.distribution == "uniform":
        return rng.integers(0, npages, size=count, dtype=np.int64)
    if keys.distribution == "hotset":
        hot = max(1, min(npages, int(npages * keys.hot_fraction)))
        cold = npages - hot
        in_hot = rng.random(count) < keys.hot_probability
        if cold == 0:
            in_hot[:] = True
        hot_pages = rng.integers(0, hot, size=count, dtype=np.int64)
        cold_pages = hot + rng.integers(0, max(cold, 1), size=count, dtype=np.int64)
        return np.where(in_hot, hot_pages, cold_pages)
    return zipf_pages(keys, npages, rng.random(count))


def zipf_pages(keys: KeySpec, npages: int, uniforms: npt.NDArray[np.float64]
               ) -> npt.NDArray[np.int64]:
    """Zipf page indices in [0, npages) from uniform draws in [0, 1), one page per draw:
    P(rank r) ∝ r^-s over 1..N, by the inverse CDF of the continuous law."""
    s = keys.zipf_s
    if abs(s - 1.0) < 1e-9:
        ranks = np.exp(uniforms * math.log(npages))
    else:  # ((N^(1-s) - 1) u + 1)^(1/(1-s)), in place (a tick's arrays are small)
        ranks = uniforms * (npages ** (1.0 - s) - 1.0)
        ranks += 1.0
        np.power(ranks, 1.0 / (1.0 - s), out=ranks)
    # ranks >= 1, so truncation is the floor
    rank = np.minimum(ranks.astype(np.int64), npages)
    rank -= 1
    rank *= _coprime_multiplier(npages)
    rank %= npages
    return rank
