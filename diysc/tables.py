"""The paper's tables from versioned metric files, with the paper's figures side by side.

- `main`: per-category PCK (per image) of the zero-shot baseline and the adapter, the aggregate
  per-image and per-keypoint rows, and the paper's aggregates (Tab. 4, Tab. 5, Tab. 8).
- `ablation`: the seven rows of Tab. 5 (PCK@0.1 per keypoint).
- `channels`: Tab. 8 (adapter width 128 / 384 / 768 / 1536, per keypoint).
- `viewpoint`: Tab. 1 (zero-shot PCK@0.1 per image by circular azimuth-bin difference).

Input: the JSON written by `stages/evaluate.py` (`{"zero_shot": {...}, "adapter": {...}}`, PCK in
percent, keys `pck_<α>`). Every table renders to Markdown and CSV.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diysc.evaluation.pck import alpha_key
from diysc.evaluation.viewpoint import TAB1_LABELS, TAB1_ZERO_SHOT
from diysc.io import write_text

ALPHAS = (0.1, 0.05, 0.01)

# Paper figures (PCK in percent on the SPair-71k test split).
PAPER_ADAPTER_PER_IMAGE = {0.1: 71.6, 0.05: 53.8, 0.01: 10.1}  # Tab. 4, "Ours (SPair)"
PAPER_ZERO_SHOT_PER_KEYPOINT = {0.1: 65.0}  # Tab. 5, first row
PAPER_CHANNELS = {  # Tab. 8, per keypoint
    128: {0.1: 74.08, 0.05: 56.28, 0.01: 11.26},
    384: {0.1: 74.39, 0.05: 56.87, 0.01: 11.53},
    768: {0.1: 74.43, 0.05: 56.76, 0.01: 11.22},
    1536: {0.1: 74.63, 0.05: 57.13, 0.01: 11.60},
}
PAPER_ADAPTER_PER_KEYPOINT = PAPER_CHANNELS[768]  # the paper's model is 768 wide


@dataclass(frozen=True)
class AblationRow:
    """One row of Tab. 5: which pseudo-label components are on, and the paper's PCK@0.1."""

    name: str  # variant name: metrics/variants/<name>/eval.json (zero_shot / full: main metrics)
    label: str
    pseudo: bool
    cycle: bool  # strict cycle consistency
    relaxed: bool
    chaining: bool
    sphere: bool
    paper: float


ABLATION_ROWS = (
    AblationRow("zero_shot", "zero-shot SD+DINO", False, False, False, False, False, 65.0),
    AblationRow("naive", "naive pseudo-labels", True, False, False, False, False, 67.2),
    AblationRow("strict", "+ strict cycle consistency", True, True, False, False, False, 66.9),
    AblationRow("relaxed", "+ relaxed cycle consistency", True, False, True, False, False, 68.4),
    AblationRow("chaining", "+ chaining", True, False, True, True, False, 70.0),
    AblationRow("naive_sphere", "naive + sphere rejection", True, False, False, False, True, 72.9),
    AblationRow("full", "full (chaining + sphere rejection)", True, False, True, True, True, 74.4),
)
CHANNELS = (128, 384, 768, 1536)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        cells = [[_cell(v) for v in row] for row in self.rows]
        lines = [
            f"### {self.title}",
            "",
            "| " + " | ".join(self.columns) + " |",
            "|" + "|".join("---" for _ in self.columns) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows([["" if v is None else v for v in row] for row in self.rows])
        return buffer.getvalue()

    def write(self, out_dir: str | Path, name: str) -> list[Path]:
        out_dir = Path(out_dir)
        paths = [out_dir / f"{name}.md", out_dir / f"{name}.csv"]
        write_text(paths[0], self.markdown())
        write_text(paths[1], self.csv())
        return paths


def load_metrics(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: metrics file not found (run the evaluate stage)"
        ) from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


# --- tables -----------------------------------------------------------------------------------


def main_table(metrics: Mapping, alphas: Sequence[float] = ALPHAS) -> Table:
    zs, ad = metrics.get("zero_shot"), metrics.get("adapter")
    methods = [(name, block) for name, block in (("zero-shot", zs), ("adapter", ad)) if block]
    if not methods:
        raise ValueError("metrics hold neither 'zero_shot' nor 'adapter' results")
    columns = ["category", "pairs"] + [f"{name} PCK@{a:g}" for name, _ in methods for a in alphas]
    table = Table("Main results: PCK on the test split (%)", columns)
    categories = sorted(set().union(*(b.get("per_category", {}) for _, b in methods)))
    for cat in categories:
        pairs = next(
            b["per_category"][cat]["pairs"] for _, b in methods if cat in b["per_category"]
        )
        table.rows.append(
            [cat, pairs]
            + [
                _get(b, "per_category", cat, "per_image", alpha_key(a))
                for _, b in methods
                for a in alphas
            ]
        )
    for avg in ("per_image", "per_keypoint"):
        table.rows.append(
            [f"**all, {avg.replace('_', ' ')}**", metrics.get("pairs")]
            + [_get(b, avg, alpha_key(a)) for _, b in methods for a in alphas]
        )
    paper = {
        "per_image": {"zero-shot": {}, "adapter": PAPER_ADAPTER_PER_IMAGE},
        "per_keypoint": {
            "zero-shot": PAPER_ZERO_SHOT_PER_KEYPOINT,
            "adapter": PAPER_ADAPTER_PER_KEYPOINT,
        },
    }
    for avg, source in (("per_image", "Tab. 4"), ("per_keypoint", "Tab. 5 / Tab. 8")):
        table.rows.append(
            [f"paper, {avg.replace('_', ' ')} ({source})", 12234]
            + [paper[avg][name].get(a) for name, _ in methods for a in alphas]
        )
    table.notes = [
        "Category rows are per-image averages. Per image: mean over pairs of each pair's fraction "
        "of correct keypoints; per keypoint: correct / all keypoints (micro-averages).",
        "The paper's per-category results (Tab. 2) are not in the available paper text; its "
        "aggregate rows are the SPair-71k test split (12,234 pairs) with SD+DINO features.",
        "Paper rows: Tab. 4 'Ours (SPair)' (per image); Tab. 5 first row (zero-shot) and Tab. 8 "
        "768 channels (adapter), per keypoint.",
    ]
    return table


def viewpoint_table(metrics: Mapping, alpha: float = 0.1) -> Table:
    key = alpha_key(alpha)
    methods = [
        (n, metrics[m])
        for n, m in (("zero-shot", "zero_shot"), ("adapter", "adapter"))
        if metrics.get(m)
    ]
    columns = ["Δ azimuth bins", "Δv", "pairs"]
    for name, _ in methods:
        columns.append(f"{name} PCK@{alpha:g}")
        if name == "zero-shot":
            columns.append("zero-shot (paper, Tab. 1)")
    table = Table(f"PCK@{alpha:g} per image by viewpoint change (Tab. 1) (%)", columns)
    deltas = sorted({int(k[1:]) for _, b in methods for k in b.get("per_azimuth", {})})
    for d in deltas:
        pairs = next(
            (
                b["per_azimuth"][f"d{d}"]["pairs"]
                for _, b in methods
                if f"d{d}" in b.get("per_azimuth", {})
            ),
            0,
        )
        row: list[Any] = [d, TAB1_LABELS.get(d, ""), pairs]
        for name, b in methods:
            row.append(_get(b, "per_azimuth", f"d{d}", "per_image", key))
            if name == "zero-shot":
                row.append(TAB1_ZERO_SHOT.get(d) if alpha == 0.1 else None)
        table.rows.append(row)
    geo = [(name, b["geo_aware"]) for name, b in methods if b.get("geo_aware")]
    if geo:
        table.notes.append(
            "Geo-aware subset (keypoints with a visible symmetric counterpart): "
            + "; ".join(
                f"{name} {g['per_image'][key]:.1f} per image, "
                f"{g['per_keypoint'][key]:.1f} per keypoint "
                f"({g['keypoints']} keypoints)"
                for name, g in geo
            )
            + "."
        )
    table.notes.append(
        "Δ = min(|Δbin|, 8 − |Δbin|) of the annotated 45° azimuth bins; the paper's "
        "column is the zero-shot SD+DINO baseline on SPair-71k."
    )
    if not deltas:
        table.notes.append("No pair has azimuth annotations in both images.")
    return table


def ablation_table(main: Mapping, variants: Mapping[str, Mapping]) -> Table:
    """Tab. 5; `main` gives the zero-shot and full rows, `variants` the others by name."""
    key = alpha_key(0.1)
    columns = [
        "row",
        "pseudo",
        "cyc. cons.",
        "relaxed c.c.",
        "chaining",
        "sph. rej.",
        "PCK@0.1 per kpt",
        "paper",
        "PCK@0.1 per img",
    ]
    table = Table("Ablations (Tab. 5): PCK@0.1 (%)", columns)
    for row in ABLATION_ROWS:
        if row.name == "zero_shot":
            block = main.get("zero_shot")
        elif row.name == "full":
            block = main.get("adapter")
        else:
            block = (variants.get(row.name) or {}).get("adapter")
        flags = [
            "✓" if f else "" for f in (row.pseudo, row.cycle, row.relaxed, row.chaining, row.sphere)
        ]
        table.rows.append(
            [
                row.label,
                *flags,
                _get(block, "per_keypoint", key),
                row.paper,
                _get(block, "per_image", key),
            ]
        )
    table.notes = [
        "Per-keypoint PCK as in the paper's Tab. 5; naive = direct nearest neighbours "
        "of image pairs inside the masks (no cycle check, no chains, no sphere).",
        "Rows without a measured value have not been run.",
    ]
    return table


def channels_table(by_channels: Mapping[int, Mapping], alphas: Sequence[float] = ALPHAS) -> Table:
    """Tab. 8: per-keypoint PCK of adapters of different widths, all on the full pseudo-labels."""
    columns = ["channels"]
    for a in alphas:
        columns += [f"PCK@{a:g}", f"paper PCK@{a:g}"]
    table = Table("Adapter width (Tab. 8): PCK per keypoint (%)", columns)
    for c in sorted(set(CHANNELS) | set(by_channels)):
        block = (by_channels.get(c) or {}).get("adapter")
        row: list[Any] = [c]
        for a in alphas:
            row += [_get(block, "per_keypoint", alpha_key(a)), PAPER_CHANNELS.get(c, {}).get(a)]
        table.rows.append(row)
    table.notes = ["All widths train on the same (full) pseudo-labels."]
    return table


def _get(block: Any, *keys: str) -> float | None:
    for k in keys:
        if not isinstance(block, Mapping) or k not in block:
            return None
        block = block[k]
    return block


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
