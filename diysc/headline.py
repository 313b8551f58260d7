"""The headline of a run: a few numbers that answer "how good, and with what settings?".

`dvc metrics show` and `dvc exp show` list every metric of every file (hundreds of columns); the
headline file is the short view a researcher compares experiments on (README: `dvc exp show` with
`--keep` on this file). It is built from the stage records, never recomputed:
`metrics/<dataset>/eval.json` (PCK), `metrics/pseudo_labels.json` (label precision),
`metrics/train.json` (the settings the adapter was trained with).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from diysc.filter_steps import STEPS, TOGGLES
from diysc.metric_keys import HEADLINE_ALPHA, alpha_key, pck_key, precision_key

SPLITS = ("trn", "val")


def headline(
    eval_metrics: Mapping[str, Any],
    pseudo_metrics: Mapping[str, Any],
    train_record: Mapping[str, Any],
    alphas: Sequence[float],
) -> dict[str, Any]:
    """PCK per image and per keypoint at `alphas` (zero-shot and adapter), label precision and
    the settings."""
    out: dict[str, Any] = {}
    for method in ("adapter", "zero_shot"):
        block = eval_metrics.get(method)
        if not block:
            continue
        out[method] = {
            f"{average}_{alpha_key(a)}": block[average].get(pck_key(a))
            for average in ("per_image", "per_keypoint")
            for a in alphas
        }
    trn = pseudo_metrics.get("trn", {})
    precision = precision_key(HEADLINE_ALPHA)
    out["labels"] = {
        "pairs": trn.get("pairs"),
        "points": trn.get("points"),
        precision: trn.get("emitted", {}).get(precision),
    }
    labels = train_record.get("labels") or {}
    out["settings"] = {
        # a toggle the labels do not record did not exist yet: they ran with it off
        **{t.param: t.value(labels) if labels else None for t in TOGGLES},
        "channels": train_record.get("adapter", {}).get("channels"),
        "steps": train_record.get("steps"),
        "seed": train_record.get("seed"),
    }
    return out


def precision_by_step(pseudo_metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows `step, order, <split>_precision_alpha10, <split>_points` in filtering order (a DVC
    plot)."""
    precision = precision_key(HEADLINE_ALPHA)
    rows = []
    for order, step in enumerate(STEPS):
        row: dict[str, Any] = {"step": step.name, "order": order}
        for split in SPLITS:
            record = pseudo_metrics.get(split, {}).get(step.name)
            if record is not None:
                row[f"{split}_{precision}"] = record.get(precision)
                row[f"{split}_points"] = record.get("points")
        if len(row) > 2:
            rows.append(row)
    return rows
