"""Viewpoint and symmetry breakdowns of PCK: azimuth-bin differences (paper Tab. 1), geo-aware subset.

- SPair-71k annotates a 45° azimuth bin (0..7) per image; a pair's viewpoint change is the circular
  bin difference min(|Δ|, 8 − |Δ|) ∈ {0..4}. The paper's Tab. 1 reports zero-shot per-image
  PCK@0.1 for each difference.
- *Geo-aware* keypoints (GeoAware-SC, Zhang et al. 2024): a mutually visible keypoint whose
  symmetry group (e.g. the four wheels of a car) has at least two members visible in the target,
  i.e. a keypoint a left/right confusion could get wrong. Groups come from the annotation
  (`symmetry_pairs`, written by the synthetic generator) or, for SPair-71k, from GeoAware-SC's
  per-category table (`diysc.data.spair.SPAIR_SYMMETRY`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from diysc.data.spair import SPAIR_SYMMETRY, ImageRecord


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
