"""Viewpoint and symmetry breakdowns of PCK: azimuth-bin differences (paper Tab. 1), geo-aware subset.

- SPair-71k annotates a 45° azimuth bin (0..7) per image; a pair's viewpoint change is the circular
  bin difference min(|Δ|, 8 − |Δ|) ∈ {0..4}. The paper's Tab. 1 reports zero-shot per-image
  PCK@0.1 for each difference.
- *Geo-aware* keypoints (GeoAware-SC, Zhang et al. 2024): a mutually visible keypoint whose
  symmetry group (e.g. the four wheels of a car) has at least two members visible in the target,
  i.e. a keypoint a left/right confusion could get wrong. Groups come from the annotation
  (`symmetry_pairs`, written by the synthetic generator) or, for SPair-71k, from GeoAware-SC's
  per-category table below (slot ids as in `ImageAnnotation` `kps`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from diysc.data.spair import ImageRecord

AZIMUTH_BINS = 8

# Symmetry groups of the SPair-71k keypoint slots, as listed by GeoAware-SC
# (`utils/utils_geoware.py:SPAIR_GEO_AWARE`); singleton slots are omitted (never geo-aware).
SPAIR_SYMMETRY: dict[str, tuple[tuple[int, ...], ...]] = {
    "aeroplane": (
        (4, 5),
        (6, 7),
        (8, 9),
        (10, 11),
        (12, 13),
        (14, 15),
        (16, 17),
        (18, 19),
        (20, 21),
    ),
    "bicycle": ((2, 3), (6, 7), (9, 10)),
    "bird": ((1, 2), (10, 11), (12, 13), (14, 15)),
    "boat": ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)),
    "bottle": ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)),
    "bus": (
        (0, 1),
        (2, 3, 5, 6),
        (4, 7),
        (10, 13, 20, 23),
        (11, 14, 21, 24),
        (12, 15, 22, 25),
        (16, 17, 26, 27),
        (18, 19, 28, 29),
    ),
    "car": (
        (0, 1),
        (2, 3, 6, 7),
        (4, 8),
        (5, 9),
        (10, 13, 20, 23),
        (11, 14, 21, 24),
        (12, 15, 22, 25),
        (16, 17, 26, 27),
        (18, 19, 28, 29),
    ),
    "cat": ((2, 3), (9, 10, 11, 12)),
    "chair": ((0, 1), (2, 3), (4, 5, 6, 7), (8, 9), (10, 11), (12, 13)),
    "cow": ((2, 3), (9, 10, 11, 12), (15, 16, 17, 18), (19, 20)),
    "dog": ((2, 3), (9, 10, 11, 12)),
    "horse": ((2, 3), (10, 11, 12, 13), (16, 17, 18, 19)),
    "motorbike": ((0, 1), (2, 3)),
    "person": ((8, 9), (10, 11), (12, 13), (14, 15), (16, 17), (18, 19)),
    "pottedplant": ((0, 1, 2, 3), (4, 5), (6, 8)),
    "sheep": ((2, 3), (9, 10, 11, 12), (15, 16, 17, 18), (19, 20)),
    "train": ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17)),
    "tvmonitor": ((0, 2, 4, 6), (1, 3, 5, 7), (8, 10, 12, 14), (9, 11, 13, 15)),
}


def azimuth_difference(a: int | None, b: int | None) -> int | None:
    """Circular difference of two azimuth bins, 0..4; None when either is unknown."""
    if a is None or b is None:
        return None
    d = abs(int(a) - int(b)) % AZIMUTH_BINS
    return min(d, AZIMUTH_BINS - d)


def symmetry_groups(record: ImageRecord) -> tuple[tuple[int, ...], ...] | None:
    """The keypoint symmetry groups of an image's category, or None where they are unknown.

    An annotation's own `symmetry_pairs` (a list of slot groups) wins; otherwise SPair-71k's table
    for SPair-71k categories.
    """
    own = record.extra.get("symmetry_pairs")
    if own is not None:
        try:
            return tuple(tuple(int(i) for i in group) for group in own)
        except (TypeError, ValueError):
            raise ValueError(
                f"{record.category}/{record.name}: 'symmetry_pairs' must be a list of "
                f"lists of keypoint slots, got {own!r}"
            ) from None
    return SPAIR_SYMMETRY.get(record.category)


def geo_aware(
    slots: np.ndarray, trg_visible: np.ndarray, groups: Sequence[Sequence[int]]
) -> np.ndarray:
    """(K,) bool: which evaluated slots have ≥ 2 members of their group visible in the target.

    `slots` are the mutually visible keypoint slots of a pair, `trg_visible` the target's (30,)
    visibility.
    """
    flags = np.zeros(len(slots), dtype=bool)
    for group in groups:
        members = np.asarray(group, dtype=np.int64)
        members = members[members < len(trg_visible)]
        if trg_visible[members].sum() >= 2:
            flags |= np.isin(slots, members)
    return flags
