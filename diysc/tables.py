"""The paper's tables from versioned metric files, with the paper's figures side by side.

- `main`: per-category PCK (per image) of the zero-shot baseline and the adapter, the aggregate
  per-image and per-keypoint rows, and the paper's aggregates (Tab. 4, Tab. 5, Tab. 8).
- `ablation`: Tab. 5 (PCK@0.1 per keypoint), one row per pseudo-label setting among the runs of
  the main run's adapter width: mean and standard deviation over the runs' seeds.
- `channels`: Tab. 8 (per keypoint), one row per width among the runs with the main run's labels,
  likewise over seeds.
- `viewpoint`: Tab. 1 (zero-shot PCK@0.1 per image by circular azimuth-bin difference).

Input: the JSON written by `stages/evaluate.py` (`{"zero_shot": {...}, "adapter": {...}}`, PCK in
percent, keys `pck_<α>`) and, for Tab. 5 and Tab. 8, each run's `train.json` from
`stages/train_adapter.py`, which records the pseudo-label settings and adapter width it trained
with. A row's label, ✓ marks and paper figure are derived from those recorded settings, never from
the run's name, so they cannot disagree with what ran. Runs whose recorded settings are
identical form one row; their recorded seeds tell the repetitions apart (two runs with the same
settings and seed are the same experiment and count once, the first listed). Every table renders
to Markdown and CSV.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diysc.data.spair import SPAIR_PAIR_COUNTS
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
# Tab. 5, PCK@0.1 per keypoint, by the pseudo-label settings of each row (cycle, chaining, sphere
# filter; candidates restricted to the object mask), in the paper's row order.
PAPER_TAB5 = {
    ("none", False, False): 67.2,
    ("strict", False, False): 66.9,
    ("relaxed", False, False): 68.4,
    ("relaxed", True, False): 70.0,
    ("none", False, True): 72.9,
    ("relaxed", True, True): 74.4,
}
CHANNELS = (128, 384, 768, 1536)
MAIN_RUN = "main"


@dataclass(frozen=True)
class Run:
    """One trained-and-evaluated adapter: what it was trained with, as recorded, and its PCK."""

    name: str  # "main" (the main pipeline) or the variant's name
    labels: Mapping[str, Any]  # pseudo-label settings: mask, cycle, chaining, sphere_filter, …
    channels: int
    metrics: Mapping[str, Any]  # its eval.json
    seed: int = 0

    @property
    def toggles(self) -> tuple:
        return (
            self.labels.get("cycle"),
            self.labels.get("chaining"),
            self.labels.get("sphere_filter"),
        )

    @property
    def paper_pck(self) -> float | None:
        """The paper's Tab. 5 figure for these settings (None where the paper has no such row)."""
        return PAPER_TAB5.get(self.toggles) if self.labels.get("mask") else None


def load_run(
    name: str,
    directory: str | Path,
    evaluation: Mapping[str, Any] | None = None,
    eval_path: str | Path | None = None,
) -> Run:
    """A run from `<directory>/train.json` (recorded settings) and its PCK: `eval_path` (default
    `<directory>/eval.json`), or the run's entry in `evaluation` (the ablation runs'
    evaluation.json, keyed by run name)."""
    directory = Path(directory)
    train = load_metrics(directory / "train.json")
    try:
        labels, channels = train["labels"], int(train["adapter"]["channels"])
        seed = int(train.get("seed", 0))
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"{directory / 'train.json'}: no recorded 'labels' settings or 'adapter.channels' "
            "(written by stages/train_adapter.py from the pseudo-labels' info.json)"
        ) from None
    if not isinstance(labels, Mapping):
        raise ValueError(f"{directory / 'train.json'}: 'labels' must be a mapping of settings")
    if evaluation is None:
        metrics = load_metrics(eval_path or directory / "eval.json")
    else:
        metrics = {"pairs": evaluation.get("pairs"), "adapter": evaluation[name]}
    return Run(name, labels, channels, metrics, seed)


@dataclass(frozen=True)
class Repeats:
    """The runs of one setting (labels and width), one per seed: a table row."""

    runs: tuple[Run, ...]

    @property
    def first(self) -> Run:
        return self.runs[0]

    @property
    def names(self) -> str:
        return " ".join(r.name for r in self.runs)

    @property
    def seeds(self) -> str:
        return " ".join(str(r.seed) for r in self.runs)

    def stats(self, *keys: str) -> tuple[float | None, float | None]:
        """Mean and sample standard deviation over the runs (std None for a single run)."""
        values = [v for r in self.runs if (v := _get(r.metrics, *keys)) is not None]
        if not values:
            return None, None
        std = round(statistics.stdev(values), 4) if len(values) > 1 else None
        return round(statistics.fmean(values), 4), std


def label_settings(labels: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded pseudo-label settings without the seed they were drawn with."""
    return {k: v for k, v in labels.items() if k != "seed"}


def repeats(runs: Sequence[Run]) -> list[Repeats]:
    """Runs grouped by recorded settings (labels without their seed, width), in first-seen order,
    seeds ascending; a second run with the same settings and seed is dropped."""
    groups: dict[str, dict[int, Run]] = {}
    for run in runs:
        key = json.dumps([label_settings(run.labels), run.channels], sort_keys=True)
        groups.setdefault(key, {}).setdefault(run.seed, run)
    return [Repeats(tuple(by_seed[s] for s in sorted(by_seed))) for by_seed in groups.values()]


def describe_labels(labels: Mapping[str, Any]) -> str:
    """A row label from recorded pseudo-label settings, e.g. 'relaxed c.c. + chaining'."""
    parts = []
    if labels.get("cycle") in ("strict", "relaxed"):
        parts.append(f"{labels['cycle']} cycle consistency")
    if labels.get("chaining"):
        parts.append("chaining")
    if labels.get("sphere_filter"):
        parts.append("sphere rejection")
    if labels.get("cycle") not in ("strict", "relaxed"):
        parts.insert(0, "naive pseudo-labels" if len(parts) == 0 else "naive")
    label = " + ".join(parts)
    return label if labels.get("mask", True) else f"{label} (no mask)"


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
            [f"paper, {avg.replace('_', ' ')} ({source})", SPAIR_PAIR_COUNTS["test"]]
            + [paper[avg][name].get(a) for name, _ in methods for a in alphas]
        )
    table.notes = [
        "Category rows are per-image averages. Per image: mean over pairs of each pair's fraction "
        "of correct keypoints; per keypoint: correct / all keypoints (micro-averages).",
        "The paper's per-category results (Tab. 2) are not in the available paper text; its "
        f"aggregate rows are the SPair-71k test split ({SPAIR_PAIR_COUNTS['test']:,} pairs) with "
        "SD+DINO features.",
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


def ablation_table(runs: Sequence[Run]) -> Table:
    """Tab. 5: the zero-shot baseline, then every setting of the main run's width, in the paper's
    order, as mean ± std over its seeds.

    Labels, ✓ marks and the paper column come from each run's recorded settings.
    """
    key = alpha_key(0.1)
    main = _main(runs)
    columns = [
        "row",
        "runs",
        "pseudo",
        "cyc. cons.",
        "relaxed c.c.",
        "chaining",
        "sph. rej.",
        "mask",
        "PCK@0.1 per kpt",
        "std",
        "seeds",
        "paper",
        "PCK@0.1 per img",
    ]
    table = Table(f"Ablations (Tab. 5): PCK@0.1 (%), adapter width {main.channels}", columns)
    zero_shot = main.metrics.get("zero_shot")
    table.rows.append(
        ["zero-shot", MAIN_RUN, "", "", "", "", "", "", _get(zero_shot, "per_keypoint", key)]
        + [None, "", PAPER_ZERO_SHOT_PER_KEYPOINT[0.1], _get(zero_shot, "per_image", key)]
    )
    order = list(PAPER_TAB5)
    rows = [g for g in repeats(runs) if g.first.channels == main.channels]
    rows.sort(
        key=lambda g: (
            order.index(g.first.toggles) if g.first.toggles in order else len(order),
            g.first.name,
        )
    )
    for group in rows:
        labels = group.first.labels
        marks = (
            True,
            labels.get("cycle") == "strict",
            labels.get("cycle") == "relaxed",
            bool(labels.get("chaining")),
            bool(labels.get("sphere_filter")),
            bool(labels.get("mask")),
        )
        mean, std = group.stats("adapter", "per_keypoint", key)
        table.rows.append(
            [describe_labels(labels), group.names, *("✓" if m else "" for m in marks)]
            + [mean, std, group.seeds, group.first.paper_pck]
            + [group.stats("adapter", "per_image", key)[0]]
        )
    table.notes = [
        "Per-keypoint PCK as in the paper's Tab. 5: the mean over the row's runs (one per seed, "
        "`seeds`), `std` their sample standard deviation. Each row's label, marks and paper "
        "figure come from the settings its pseudo-labels were generated with (recorded in its "
        "train.json); naive = direct nearest neighbours of image pairs (no cycle check, no "
        "chains, no sphere). The zero-shot row does not depend on a seed.",
        "The paper's column is the SPair-71k test split with SD+DINO features and 768-channel "
        "adapters; '—' where the paper has no row with these settings.",
    ]
    return table


def channels_table(runs: Sequence[Run], alphas: Sequence[float] = ALPHAS) -> Table:
    """Tab. 8: per-keypoint PCK by adapter width, among the runs trained on the main run's labels,
    as mean ± std over seeds."""
    main = _main(runs)
    main_labels = label_settings(main.labels)
    by_width = {
        g.first.channels: g for g in repeats(runs) if label_settings(g.first.labels) == main_labels
    }
    columns = ["channels", "runs", "seeds"]
    for a in alphas:
        columns += [f"PCK@{a:g}", f"std@{a:g}", f"paper PCK@{a:g}"]
    table = Table("Adapter width (Tab. 8): PCK per keypoint (%)", columns)
    for c in sorted(set(CHANNELS) | set(by_width)):
        group = by_width.get(c)
        row: list[Any] = [c, group.names if group else None, group.seeds if group else None]
        for a in alphas:
            mean, std = (
                group.stats("adapter", "per_keypoint", alpha_key(a)) if group else (None,) * 2
            )
            row += [mean, std, PAPER_CHANNELS.get(c, {}).get(a)]
        table.rows.append(row)
    table.notes = [
        f"All widths train on pseudo-labels generated with the main run's settings "
        f"({describe_labels(main.labels)}); mean and sample std over the runs' seeds."
    ]
    return table


def _main(runs: Sequence[Run]) -> Run:
    main = next((r for r in runs if r.name == MAIN_RUN), None)
    if main is None:
        raise ValueError(
            "no main run among the runs (metrics/train.json, metrics/<dataset>/eval.json)"
        )
    return main


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
