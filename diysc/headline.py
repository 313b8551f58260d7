"""The headline of a run: a few numbers that answer "how good, and with what settings?".

`dvc metrics show` and `dvc exp show` list every metric of every file (hundreds of columns); the
headline file is the short view a researcher compares experiments on (README: `dvc exp show` with
`--keep` on this file). It is built from the stage records, never recomputed:
`metrics/<dataset>/eval.json` (PCK), `metrics/pseudo_labels.json` (label precision),
`metrics/train.json` (the settings the adapter was trained with).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diysc.evaluation.pck import alpha_key

ALPHAS = (0.1, 0.05, 0.01)
STEPS = ("raw_nn", "cycle", "chaining", "sphere_filter", "emitted")  # pseudo-label filter order


def headline(
    eval_metrics: Mapping[str, Any],
    pseudo_metrics: Mapping[str, Any],
    train_record: Mapping[str, Any],
) -> dict[str, Any]:
    """PCK per image and per keypoint (zero-shot and adapter), label precision and the settings."""
    out: dict[str, Any] = {}
    for method in ("adapter", "zero_shot"):
        block = eval_metrics.get(method)
        if not block:
            continue
        out[method] = {
            f"{average}_{_short(a)}": block[average][alpha_key(a)]
            for average in ("per_image", "per_keypoint")
            for a in ALPHAS
        }
    trn = pseudo_metrics.get("trn", {})
    out["labels"] = {
        "pairs": trn.get("pairs"),
        "points": trn.get("points"),
        "precision_10": trn.get("emitted", {}).get("precision_alpha10"),
    }
    labels = train_record.get("labels") or {}
    out["settings"] = {
        **{k: labels.get(k) for k in ("mask", "cycle", "chaining", "sphere_filter")},
        "channels": train_record.get("adapter", {}).get("channels"),
        "steps": train_record.get("steps"),
        "seed": train_record.get("seed"),
    }
    return out


def precision_by_step(pseudo_metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows `step, order, <split>_precision_10, <split>_points` in filtering order (a DVC plot)."""
    rows = []
    for order, step in enumerate(STEPS):
        row: dict[str, Any] = {"step": step, "order": order}
        for split in ("trn", "val"):
            record = pseudo_metrics.get(split, {}).get(step)
            if record is not None:
                row[f"{split}_precision_10"] = record.get("precision_alpha10")
                row[f"{split}_points"] = record.get("points")
        if len(row) > 2:
            rows.append(row)
    return rows


def _short(alpha: float) -> str:
    """0.1 → '10', 0.05 → '05', 0.01 → '01' (DVC reads dots in metric names as nesting)."""
    return f"{round(alpha * 100):02d}"
