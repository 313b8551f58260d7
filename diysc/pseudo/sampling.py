"""Which images are matched: azimuth chains (K-tuples) or uniformly sampled pairs.

Images are given by their position in a category's sorted image list; every function returns
an (M, K) int64 array of such positions and draws from a seeded `numpy.random.Generator`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from diysc.azimuth import AZIMUTH_BINS


def tuples_to_sample(cap: int, pairs_per_tuple: int) -> int:
    """How many tuples to draw for `cap` emitted pairs: twice what is needed, as the reference
    (`2·(cap // pairs_per_tuple + 1)`), because pairs left with no points are dropped."""
    return 2 * (cap // pairs_per_tuple + 1)


def chain_groups(
    azimuths: Sequence[int | None], k: int, bins: int = AZIMUTH_BINS
) -> list[list[np.ndarray]]:
    """Every chain family: for each direction (+1, -1) and anchor bin b, the K image sets of bins
    b, b±1, …, b±(K-1) (mod `bins`). A chain is one image from each set (Cartesian product), so
    each link steps exactly one azimuth bin, monotonically. Empty families are left out."""
    az = np.array([-1 if a is None else a for a in azimuths], dtype=np.int64)
    by_bin = [np.flatnonzero(az == b) for b in range(bins)]
    groups = []
    for sign in (1, -1):
        for anchor in range(bins):
            sets = [by_bin[(anchor + sign * i) % bins] for i in range(k)]
            if all(len(s) for s in sets):
                groups.append(sets)
    return groups


def sample_chains(
    azimuths: Sequence[int | None],
    k: int,
    count: int,
    rng: np.random.Generator,
    label: str = "",
    bins: int = AZIMUTH_BINS,
) -> np.ndarray:
    """Up to `count` distinct azimuth chains drawn uniformly from all of them, without
    enumerating the product (it reaches 10⁷ chains per category on SPair-71k).

    When no chain exists (fewer than K distinct bins, or no K consecutive bins, or no azimuth
    annotations) this falls back to random K-tuples of distinct images, with a warning naming
    `label`, as the reference does for fewer than K bins.
    """
    groups = chain_groups(azimuths, k, bins)
    sizes = [int(np.prod([len(s) for s in sets])) for sets in groups]
    total = sum(sizes)
    if total == 0:
        distinct = len({a for a in azimuths if a is not None})
        warnings.warn(
            f"{label or 'category'}: no azimuth chain of length {k} ({distinct} distinct azimuth "
            f"bins among {len(azimuths)} images); falling back to random {k}-tuples",
            stacklevel=2,
        )
        return sample_random_tuples(len(azimuths), k, count, rng, label)
    picks = _choice_without_replacement(total, min(count, total), rng)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    out = np.empty((len(picks), k), dtype=np.int64)
    for row, flat in enumerate(picks):  # per tuple (≤ a few thousand), not per point
        g = int(np.searchsorted(starts, flat, side="right")) - 1
        rest = flat - starts[g]
        for i, members in reversed(list(enumerate(groups[g]))):
            rest, digit = divmod(rest, len(members))
            out[row, i] = members[digit]
    return out


def sample_random_tuples(
    n_images: int, k: int, count: int, rng: np.random.Generator, label: str = ""
) -> np.ndarray:
    """`count` random K-tuples of distinct images (tuples may repeat across draws)."""
    if n_images < k:
        raise ValueError(
            f"{label or 'category'}: {n_images} images, fewer than the {k} a tuple needs"
        )
    return np.stack([rng.choice(n_images, size=k, replace=False) for _ in range(count)]).reshape(
        count, k
    )


def sample_pairs(
    n_images: int, count: int, rng: np.random.Generator, label: str = ""
) -> np.ndarray:
    """Up to `count` distinct ordered pairs (i, j), i ≠ j, uniform over all same-category pairs.

    (The reference's non-chaining mode pairs every image with one of the first eight images of
    the category; see docs/deviations.md.)"""
    if n_images < 2:
        raise ValueError(f"{label or 'category'}: {n_images} image(s), a pair needs two")
    total = n_images * (n_images - 1)
    flat = _choice_without_replacement(total, min(count, total), rng)
    src, rest = np.divmod(np.asarray(flat, dtype=np.int64), n_images - 1)
    trg = rest + (rest >= src)  # skip the diagonal
    return np.stack([src, trg], axis=1)


def _choice_without_replacement(total: int, count: int, rng: np.random.Generator) -> list[int]:
    """`count` distinct integers uniform in [0, total), in random order (Floyd's method inside
    numpy for a large `total`, so nothing of size `total` is allocated)."""
    return [int(x) for x in rng.choice(total, size=count, replace=False)]
