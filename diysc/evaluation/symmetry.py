"""Symmetric-counterpart confusions: how many transfer errors land on the mirrored part.

Where annotations name left/right counterparts (`symmetry_pairs`, as the synthetic dataset
writes), a transferred keypoint that is wrong at α but lies strictly within α·threshold of its
counterpart's location in the target is a *counterpart confusion* — the failure DIY-SC's 3D-aware
pseudo-labels address. Figures are broken down by the circular azimuth-bin difference of the pair
(Tab. 1's axis), pooled per keypoint.

`feature_affinities` measures the property the offline stand-in backbone is built to have: at
ground-truth keypoints, the cosine similarity of the same keypoint in two images, of a keypoint
and its counterpart, and of two unrelated keypoints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from diysc.data.spair import SPairDataset
from diysc.evaluation.pck import PairOutcome
from diysc.geometry import ResizePad, flat_index, pixel_to_patch
from diysc.pck_rule import correct_at


def counterparts(record) -> np.ndarray:
    """(30,) slot of each slot's left/right counterpart, -1 where it has none."""
    other = np.full(len(record.visible), -1)
    for i, j in record.extra.get("symmetry_pairs") or []:
        other[int(i)], other[int(j)] = int(j), int(i)
    return other


def confusion_by_azimuth(
    dataset: SPairDataset, outcomes: Sequence[PairOutcome], size: int, alpha: float
) -> dict[str, dict[str, float | int]]:
    """Per Δazimuth bin ("0".."4") and "all": keypoints, correct, confused, their shares.

    `at_risk` counts the keypoints whose counterpart is visible in the target (only those can be
    confused); `confused_share_of_errors` = confused / (keypoints − correct).
    """
    bins: dict[str, np.ndarray] = {}
    for result in outcomes:
        truth = result.truth
        trg = dataset.image(truth.category, truth.trg)
        frame = ResizePad(trg.width, trg.height, size)
        mirror = counterparts(trg)[truth.slots]
        has = (mirror >= 0) & trg.visible[np.maximum(mirror, 0)]
        mirror_xy = frame.points(np.nan_to_num(trg.keypoints[np.maximum(mirror, 0)]))
        # the evaluation's own PCK rule, against the keypoint and against its counterpart
        right = correct_at(result.pred_xy, truth.trg_xy, truth.threshold, [alpha])[0]
        near_mirror = has & correct_at(result.pred_xy, mirror_xy, truth.threshold, [alpha])[0]
        counts = np.array(
            [len(right), right.sum(), (near_mirror & ~right).sum(), has.sum()], dtype=np.int64
        )
        for key in ("all", str(truth.azimuth_delta)):
            bins[key] = bins.get(key, np.zeros(4, dtype=np.int64)) + counts
    return {key: _shares(bins[key]) for key in sorted(bins)}


def _shares(counts: np.ndarray) -> dict[str, float | int]:
    keypoints, correct, confused, at_risk = (int(c) for c in counts)
    errors = keypoints - correct
    return {
        "keypoints": keypoints,
        "pck": round(correct / keypoints, 6) if keypoints else 0.0,
        "confused": confused,
        "confused_share_of_errors": round(confused / errors, 6) if errors else 0.0,
        "at_risk": at_risk,
        "confused_share_of_at_risk": round(confused / at_risk, 6) if at_risk else 0.0,
    }


def feature_affinities(
    dataset: SPairDataset,
    images: dict[str, list[str]],
    describe: Callable[[str, str], torch.Tensor],
    size: int,
    grid: int,
) -> dict[str, float | int]:
    """Mean cosine at keypoints over pairs of different images: same slot, counterpart, other.

    `describe(cat, stem)` gives (grid², C) L2-normalised rows. "other" excludes the slot itself
    and its counterpart. `counterpart_closer` / `same_closer` are the shares of (keypoint,
    image pair) cases where the counterpart / the same slot is more similar than the mean over
    the other slots.
    """
    sums = {"same": [], "counterpart": [], "other": []}
    wins = {"same": [], "counterpart": []}
    for cat, stems in images.items():
        records = [dataset.image(cat, s) for s in stems]
        descs = []
        for record in records:
            xy = ResizePad(record.width, record.height, size).points(
                np.nan_to_num(record.keypoints)
            )
            index = torch.as_tensor(flat_index(pixel_to_patch(xy, size, grid), grid))
            descs.append(describe(cat, record.name)[index])  # (30, C)
        for a, ra in enumerate(records):
            mirror = counterparts(ra)
            for b, rb in enumerate(records):
                if a == b:
                    continue
                cos = descs[a] @ descs[b].T  # (30, 30)
                for k in np.flatnonzero(ra.visible):
                    others = rb.visible.copy()
                    others[k] = False
                    if mirror[k] >= 0:
                        others[mirror[k]] = False
                    if not others.any():
                        continue
                    other = float(cos[k, torch.as_tensor(others)].mean())
                    sums["other"].append(other)
                    if rb.visible[k]:
                        sums["same"].append(float(cos[k, k]))
                        wins["same"].append(float(cos[k, k]) > other)
                    if mirror[k] >= 0 and rb.visible[mirror[k]]:
                        sums["counterpart"].append(float(cos[k, mirror[k]]))
                        wins["counterpart"].append(float(cos[k, mirror[k]]) > other)
    out: dict[str, float | int] = {}
    for key, values in sums.items():
        out[f"{key}_cosine"] = round(float(np.mean(values)), 6) if values else 0.0
        out[f"{key}_cases"] = len(values)
    for key, values in wins.items():
        out[f"{key}_closer"] = round(float(np.mean(values)), 6) if values else 0.0
    return out
