"""Pseudo-label precision against ground-truth keypoints (none of the reference codes has this).

A pseudo-label (source patch → target patch) is *evaluated* when its source patch contains a
ground-truth keypoint visible in both images: the patch the evaluation itself uses for that source
keypoint (`pixel_to_patch`), so the label is exactly the prediction PCK would score there (the
keypoint nearest the patch centre when a patch holds several). It is *correct at α* when the centre
of its target patch lies strictly closer than α·max(target bbox side) to that keypoint's location
in the target: the evaluation's PCK rule, the same function (`diysc.pck_rule`, in the reference's
float32 precision). Precision = correct / evaluated; the counts are kept so that precisions can be
pooled over pairs, categories and splits.

Where the annotations name left/right counterparts (`symmetry_pairs`, the synthetic dataset), an
evaluated label that is not correct but lands within the same threshold of the keypoint's
*counterpart* in the target is a *counterpart confusion*: the error the 3D-aware steps target.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from diysc.geometry import (
    ResizePad,
    bbox_threshold,
    flat_index,
    patch_centre,
    pixel_to_patch,
    unflatten_index,
)
from diysc.metric_keys import alpha_key, precision_key
from diysc.pck_rule import correct_at

# The report's α: fixed here rather than `eval.alphas`, so that a new evaluation α does not
# regenerate the pseudo-labels.
ALPHAS = (0.1, 0.05)


@dataclass(frozen=True)
class ImageTruth:
    keypoints: np.ndarray  # (J, 2) (x, y) in the padded frame, NaN where not visible
    bbox_side: float  # max side of the padded-frame bbox: the PCK threshold base
    counterpart: np.ndarray | None = None  # (J,) slot of each slot's counterpart, -1 for none


def image_truth(record, size: int) -> ImageTruth:
    """Ground truth of a `diysc.data.spair.ImageRecord` in the `size` padded frame."""
    frame = ResizePad(record.width, record.height, size)
    counterpart = None
    if record.extra.get("symmetry_pairs"):
        counterpart = np.full(len(record.keypoints), -1)
        for i, j in record.extra["symmetry_pairs"]:
            counterpart[int(i)], counterpart[int(j)] = int(j), int(i)
    return ImageTruth(
        frame.points(record.keypoints), bbox_threshold(frame.bbox(record.bbox)), counterpart
    )


@dataclass
class Counts:
    points: int = 0  # pseudo-labels seen
    evaluated: int = 0  # of which the source patch holds a mutually visible keypoint
    correct: dict[float, int] = field(default_factory=lambda: dict.fromkeys(ALPHAS, 0))
    # wrong, but within the threshold of the keypoint's left/right counterpart in the target
    confused: dict[float, int] = field(default_factory=lambda: dict.fromkeys(ALPHAS, 0))

    def add(self, other: Counts) -> None:
        self.points += other.points
        self.evaluated += other.evaluated
        for a in ALPHAS:
            self.correct[a] += other.correct[a]
            self.confused[a] += other.confused[a]

    def to_dict(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {"points": self.points, "evaluated": self.evaluated}
        for a in ALPHAS:
            out[f"correct_{alpha_key(a)}"] = self.correct[a]
            out[precision_key(a)] = (
                round(self.correct[a] / self.evaluated, 6) if self.evaluated else 0.0
            )
            out[f"confused_{alpha_key(a)}"] = self.confused[a]
            out[f"confusion_{alpha_key(a)}"] = (
                round(self.confused[a] / self.evaluated, 6) if self.evaluated else 0.0
            )
        return out


def score_matches(
    src: torch.Tensor,
    trg: torch.Tensor,
    truth_s: ImageTruth,
    truth_t: ImageTruth,
    size: int,
    grid: int,
) -> Counts:
    """Count evaluated and correct pseudo-labels among (M,) flat source / target patch indices."""
    visible = ~np.isnan(truth_s.keypoints[:, 0]) & ~np.isnan(truth_t.keypoints[:, 0])
    counts = Counts(points=int(src.numel()))
    if not visible.any() or src.numel() == 0:
        return counts
    kp_s = torch.as_tensor(truth_s.keypoints[visible], dtype=torch.float64)
    src_xy = patch_centre(_colrow(src, grid), size, grid)
    trg_xy = patch_centre(_colrow(trg, grid), size, grid)
    same_patch = flat_index(pixel_to_patch(kp_s, size, grid), grid)[None, :] == src.cpu()[:, None]
    dist = torch.cdist(src_xy, kp_s).masked_fill(~same_patch, float("inf"))
    nearest = dist.argmin(dim=1).numpy()
    near = same_patch.any(dim=1).numpy()
    counts.evaluated = int(near.sum())
    trg_xy = trg_xy.numpy()
    right = near & correct_at(
        trg_xy, truth_t.keypoints[visible][nearest], truth_t.bbox_side, ALPHAS
    )
    mirror = _counterpart_xy(nearest, visible, truth_t)
    near_mirror = near & correct_at(trg_xy, mirror, truth_t.bbox_side, ALPHAS)
    for i, a in enumerate(ALPHAS):
        counts.correct[a] = int(right[i].sum())
        counts.confused[a] = int((near_mirror[i] & ~right[i]).sum())
    return counts


def _counterpart_xy(nearest: np.ndarray, visible: np.ndarray, truth_t: ImageTruth) -> np.ndarray:
    """(M, 2) target location of the counterpart of each label's keypoint (NaN where none shows)."""
    if truth_t.counterpart is None:
        return np.full((len(nearest), 2), np.nan)
    other = truth_t.counterpart[np.flatnonzero(visible)[nearest]]
    return np.where((other >= 0)[:, None], truth_t.keypoints[np.maximum(other, 0)], np.nan)


def _colrow(index: torch.Tensor, grid: int) -> torch.Tensor:
    return unflatten_index(index.detach().to("cpu", torch.int64), grid).double()
