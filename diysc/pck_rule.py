"""The PCK correctness rule, shared by the evaluation (PCK) and the pseudo-label quality report.

A prediction is correct at α iff its distance to the ground-truth point is *strictly* below
α · threshold (the max side of the target bbox in the padded frame), measured in the reference's
precision: keypoints and predictions are float32 and the error is measured there, while α is a
float32 that meets the threshold in float64, so the bound is float64(float32(α)) · threshold.
Following it exactly scores a point at the boundary the same way (α = 0.1 is 0.10000000149 in
float32, so an error of 26.4 px is below 0.1 · 264).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def correct_at(
    pred_xy: np.ndarray, gt_xy: np.ndarray, threshold, alphas: Sequence[float]
) -> np.ndarray:
    """(A, K) bool: ‖pred − gt‖ < α · threshold for each α. `threshold` is a scalar or (K,);
    a NaN ground-truth point is never hit."""
    diff = np.asarray(pred_xy, np.float32) - np.asarray(gt_xy, np.float32)
    err = np.sqrt(diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1])  # float32 throughout
    alpha = np.asarray(alphas, np.float32).astype(np.float64)
    bound = alpha[:, None] * np.asarray(threshold, np.float64)
    return err.astype(np.float64)[None, :] < bound
