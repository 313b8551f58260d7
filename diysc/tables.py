"""The paper's tables from versioned metric files, with the paper's figures side by side.

- `main`: per-category PCK (per image) of the zero-shot baseline and the adapter at each evaluated
  α (`eval.alphas`), the aggregate per-image and per-keypoint rows, and the paper's aggregates
  (Tab. 4, Tab. 5, Tab. 8) where the main run has the paper's settings, at its adapter width.
- `ablation`: Tab. 5 (PCK@0.1 per keypoint), one row per pseudo-label setting among the runs of
  the main run's adapter width: mean and standard deviation over the runs' seeds.
- `channels`: Tab. 8 (per keypoint), one row per width among the runs with the main run's labels,
  likewise over seeds.
- `viewpoint`: Tab. 1 (zero-shot PCK@0.1 per image by circular azimuth-bin difference).

Input: the JSON written by `stages/evaluate.py` (`{"zero_shot": {...}, "adapter": {...}}`, PCK in
percent, keys `diysc.metric_keys.pck_key`) and each run's `train.json` from
`stages/train_adapter.py`, which records the pseudo-label settings and adapter width it trained
with. A row's label, ✓ marks and paper figure are derived from those recorded settings (each
toggle of `diysc.filter_steps`; figures from `diysc.paper`), never from
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

from diysc import paper
from diysc.data.spair import SPAIR_PAIR_COUNTS
from diysc.filter_steps import TOGGLES
from diysc.io import write_text
from diysc.metric_keys import HEADLINE_ALPHA, headline_alpha, pck_key

MAIN_RUN = "main"


@dataclass(frozen=True)
class Run:
    """One trained-and-evaluated adapter: what it was trained with, as recorded, and its PCK."""

    name: str  # "main" (the main pipeline) or the variant's name
    labels: Mapping[str, Any]  # pseudo-label settings: the toggles, chain length, …
    channels: int
    metrics: Mapping[str, Any]  # its eval.json
    seed: int = 0


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
    """A row label from recorded pseudo-label settings, e.g. 'relaxed cycle consistency +
    chaining (no mask)': the words of each toggle's value, in step order, qualifiers last."""
    words = [w for t in TOGGLES if (w := t.words.get(t.value(labels)))]
    steps = " + ".join(w for w in words if not w.startswith("("))
    return " ".join([steps, *(w for w in words if w.startswith("("))])


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


def main_table(run: Run, alphas: Sequence[float]) -> Table:
    """Per-category and aggregate PCK of the main run at each α, with the paper's aggregates for
    its settings and width."""
    metrics = run.metrics
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
                _get(b, "per_category", cat, "per_image", pck_key(a))
                for _, b in methods
                for a in alphas
            ]
        )
    for avg in ("per_image", "per_keypoint"):
        table.rows.append(
            [f"**all, {avg.replace('_', ' ')}**", metrics.get("pairs")]
            + [_get(b, avg, pck_key(a)) for _, b in methods for a in alphas]
        )
    figures = {
        "per_image": {
            "zero-shot": {},
            "adapter": paper.adapter_pck(paper.ADAPTER_PER_IMAGE, run.labels, run.channels),
        },
        "per_keypoint": {
            "zero-shot": paper.ZERO_SHOT_PER_KEYPOINT,
            "adapter": paper.adapter_pck(paper.ADAPTER_PER_KEYPOINT, run.labels, run.channels),
        },
    }
    for avg, source in (("per_image", "Tab. 4"), ("per_keypoint", "Tab. 5 / Tab. 8")):
        table.rows.append(
            [f"paper, {avg.replace('_', ' ')} ({source})", SPAIR_PAIR_COUNTS["test"]]
            + [figures[avg][name].get(a) for name, _ in methods for a in alphas]
        )
    table.notes = [
        "Category rows are per-image averages. Per image: mean over pairs of each pair's fraction "
        "of correct keypoints; per keypoint: correct / all keypoints (micro-averages).",
        "The paper's per-category results (Tab. 2) are not in the available paper text; its "
        f"aggregate rows are the SPair-71k test split ({SPAIR_PAIR_COUNTS['test']:,} pairs) with "
        "SD+DINO features.",
        "Paper rows: Tab. 4 'Ours (SPair)' (per image, 768 channels); Tab. 5 first row "
        f"(zero-shot) and Tab. 8 at this adapter's width, {run.channels} channels (adapter), per "
        "keypoint. The adapter's figures are those of the paper's method: '—' where the main run's "
        f"pseudo-label settings ({describe_labels(run.labels)}) or width are not the paper's.",
    ]
    return table


def viewpoint_table(metrics: Mapping, alphas: Sequence[float]) -> Table:
    """Tab. 1: PCK per image by viewpoint change, at the headline α (0.1 where evaluated)."""
    alpha = headline_alpha(alphas)
    key = pck_key(alpha)
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
        row: list[Any] = [d, paper.TAB1_LABELS.get(d, ""), pairs]
        for name, b in methods:
            row.append(_get(b, "per_azimuth", f"d{d}", "per_image", key))
            if name == "zero-shot":
                row.append(paper.TAB1_ZERO_SHOT.get(d) if alpha == HEADLINE_ALPHA else None)
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


def ablation_table(runs: Sequence[Run], alphas: Sequence[float]) -> Table:
    """Tab. 5: the zero-shot baseline, then every setting of the main run's width, in the paper's
    order, as mean ± std over its seeds, at the headline α (0.1 where evaluated).

    Labels, ✓ marks and the paper column come from each run's recorded settings.
    """
    alpha = headline_alpha(alphas)
    key, at = pck_key(alpha), f"PCK@{alpha:g}"
    main = _main(runs)
    marks = [(t, value, header) for t in TOGGLES for value, header in t.columns]
    columns = ["row", "runs", "pseudo", *(header for _, _, header in marks)]
    columns += [f"{at} per kpt", "std", "seeds", "paper", f"{at} per img"]
    table = Table(f"Ablations (Tab. 5): {at} (%), adapter width {main.channels}", columns)
    zero_shot = main.metrics.get("zero_shot")
    table.rows.append(
        ["zero-shot", MAIN_RUN, "", *("" for _ in marks), _get(zero_shot, "per_keypoint", key)]
        + [None, "", paper.ZERO_SHOT_PER_KEYPOINT.get(alpha), _get(zero_shot, "per_image", key)]
    )
    rows = [g for g in repeats(runs) if g.first.channels == main.channels]
    last = len(paper.TAB5)
    rows.sort(key=lambda g: (_or(paper.tab5_index(g.first.labels), last), g.first.name))
    for group in rows:
        labels = group.first.labels
        figure = paper.tab5_pck(labels) if alpha == HEADLINE_ALPHA else None
        mean, std = group.stats("adapter", "per_keypoint", key)
        table.rows.append(
            [describe_labels(labels), group.names, "✓"]
            + ["✓" if t.value(labels) == value else "" for t, value, _ in marks]
            + [mean, std, group.seeds, figure]
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


def channels_table(runs: Sequence[Run], alphas: Sequence[float]) -> Table:
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
    for c in sorted(set(paper.ADAPTER_PER_KEYPOINT) | set(by_width)):
        group = by_width.get(c)
        row: list[Any] = [c, group.names if group else None, group.seeds if group else None]
        for a in alphas:
            mean, std = group.stats("adapter", "per_keypoint", pck_key(a)) if group else (None,) * 2
            row += [mean, std, paper.adapter_pck(paper.ADAPTER_PER_KEYPOINT, main.labels, c).get(a)]
        table.rows.append(row)
    table.notes = [
        f"All widths train on pseudo-labels generated with the main run's settings "
        f"({describe_labels(main.labels)}); mean and sample std over the runs' seeds.",
        "The paper's column is its method's (Tab. 8); '—' where the main run's settings are not "
        "the paper's.",
    ]
    return table


def _main(runs: Sequence[Run]) -> Run:
    main = next((r for r in runs if r.name == MAIN_RUN), None)
    if main is None:
        raise ValueError(
            "no main run among the runs (metrics/train.json, metrics/<dataset>/eval.json)"
        )
    return main


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


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
