"""PCK@α on SPair-format pairs, as the reference evaluates it.

- Keypoints come from the per-image annotations and are evaluated iff visible in both images.
- Everything is measured in the padded annotation frame (`ResizePad`, side `size`).
- A prediction is correct iff its distance to the target keypoint is *strictly* below
  α · max(h, w) of the **target** bounding box in that frame (`bbox_threshold`), in the
  reference's precision (`diysc.pck_rule`).
- Two micro-averages: *per image* (mean over pairs of each pair's fraction of correct keypoints)
  and *per keypoint* (correct keypoints / all keypoints). Reported in percent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from diysc.azimuth import azimuth_difference
from diysc.data.spair import PairRecord, SPairDataset
from diysc.evaluation.viewpoint import geo_aware, symmetry_groups
from diysc.geometry import ResizePad, bbox_threshold
from diysc.metric_keys import pck_key
from diysc.pck_rule import correct_at


@dataclass(frozen=True)
class PairKeypoints:
    """The ground truth of one pair in the padded frame."""

    name: str
    category: str
    src: str
    trg: str
    slots: np.ndarray  # (K,) keypoint slots visible in both images
    src_xy: np.ndarray  # (K, 2) padded-frame (x, y) in the source
    trg_xy: np.ndarray  # (K, 2) padded-frame (x, y) in the target
    threshold: float  # max side of the target bbox, padded frame
    azimuth_delta: int | None  # circular azimuth-bin difference 0..4
    geo: np.ndarray | None  # (K,) geo-aware flags; None where symmetry groups are unknown


@dataclass(frozen=True)
class PairOutcome:
    """One method's predictions for one pair, and which of them are correct at each α."""

    truth: PairKeypoints
    pred_xy: np.ndarray  # (K, 2) padded-frame predictions in the target
    correct: np.ndarray  # (A, K) bool


def pair_keypoints(dataset: SPairDataset, pair: PairRecord, size: int) -> PairKeypoints:
    src, trg = dataset.image(pair.category, pair.src), dataset.image(pair.category, pair.trg)
    slots = np.flatnonzero(src.visible & trg.visible)
    trg_frame = ResizePad(trg.width, trg.height, size)
    groups = symmetry_groups(trg)
    return PairKeypoints(
        name=pair.name,
        category=pair.category,
        src=pair.src,
        trg=pair.trg,
        slots=slots,
        src_xy=ResizePad(src.width, src.height, size).points(src.keypoints[slots]),
        trg_xy=trg_frame.points(trg.keypoints[slots]),
        threshold=bbox_threshold(trg_frame.bbox(pair.trg_bbox)),
        azimuth_delta=azimuth_difference(src.azimuth_id, trg.azimuth_id),
        geo=None if groups is None else geo_aware(slots, trg.visible, groups),
    )


def outcome(truth: PairKeypoints, pred_xy: np.ndarray, alphas: Sequence[float]) -> PairOutcome:
    pred_xy = np.asarray(pred_xy, np.float64)
    return PairOutcome(truth, pred_xy, correct_at(pred_xy, truth.trg_xy, truth.threshold, alphas))


def pck(
    outcomes: Iterable[PairOutcome],
    alphas: Sequence[float],
    select: Callable[[PairOutcome], np.ndarray] | None = None,
) -> dict | None:
    """Per-image and per-keypoint PCK (percent) over `outcomes`; None if no keypoint counts.

    `select` restricts each pair to a subset of its keypoints ((K,) bool); pairs left with none
    are not counted.
    """
    per_pair, hits, count = [], np.zeros(len(alphas)), 0
    for o in outcomes:
        c = o.correct if select is None else o.correct[:, select(o)]
        if c.shape[1] == 0:
            continue
        per_pair.append(c.mean(axis=1))
        hits += c.sum(axis=1)
        count += c.shape[1]
    if count == 0:
        return None
    per_image = np.mean(per_pair, axis=0) * 100
    per_keypoint = hits / count * 100
    return {
        "per_image": {
            pck_key(a): round(float(v), 4) for a, v in zip(alphas, per_image, strict=True)
        },
        "per_keypoint": {
            pck_key(a): round(float(v), 4) for a, v in zip(alphas, per_keypoint, strict=True)
        },
        "pairs": len(per_pair),
        "keypoints": count,
    }


def summarise(outcomes: Sequence[PairOutcome], alphas: Sequence[float]) -> dict:
    """Overall, per-category, per-Δazimuth and geo-aware PCK of one method."""
    summary = pck(outcomes, alphas)
    if summary is None:
        raise ValueError("no pair has a keypoint visible in both images: nothing to evaluate")
    categories = sorted({o.truth.category for o in outcomes})
    summary["per_category"] = _present(
        {cat: pck([o for o in outcomes if o.truth.category == cat], alphas) for cat in categories}
    )
    deltas = sorted({o.truth.azimuth_delta for o in outcomes} - {None})
    by_delta = {
        f"d{d}": pck([o for o in outcomes if o.truth.azimuth_delta == d], alphas) for d in deltas
    }
    if _present(by_delta):
        summary["per_azimuth"] = _present(by_delta)
    known = [o for o in outcomes if o.truth.geo is not None]
    geo = pck(known, alphas, select=lambda o: o.truth.geo) if known else None
    if geo is not None:
        summary["geo_aware"] = geo
    return summary


def _present(blocks: dict) -> dict:
    return {k: v for k, v in blocks.items() if v is not None}
