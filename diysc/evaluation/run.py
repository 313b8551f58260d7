"""Evaluate descriptor functions over the pairs of a split.

A *describer* maps an image (category, stem) to its (grid², C) L2-normalised descriptors. Each
image is described once per method, however many pairs it takes part in: pairs are visited one
category at a time and an image's descriptors are kept until its last pair, then dropped, so memory
holds only the images still needed (not the whole split).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import groupby
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from diysc import viz
from diysc.adapter.model import load_adapter
from diysc.config.schema import EvalParams
from diysc.data.spair import DatasetError, PairRecord, SPairDataset
from diysc.errors import UserError
from diysc.evaluation.pck import PairOutcome, outcome, pair_keypoints, summarise
from diysc.evaluation.predict import transfer
from diysc.features import FeatureStore
from diysc.geometry import ResizePad
from diysc.io import atomic_dir, atomic_path, json_text, write_text
from diysc.metric_keys import headline_alpha, pck_key
from diysc.paper import TAB1_LABELS

Describer = Callable[[str, str], torch.Tensor]


class EvaluationError(UserError, ValueError):
    """Inputs that cannot be evaluated together (e.g. adapter and features disagree)."""


def select_pairs(dataset: SPairDataset, split: str, max_pairs: int = 0) -> list[PairRecord]:
    """The split's pairs, category by category in file order; the first `max_pairs` of each if > 0."""
    pairs: list[PairRecord] = []
    for category in dataset.categories:
        found = dataset.pairs(split, category)
        pairs += found[:max_pairs] if max_pairs > 0 else found
    if not pairs:
        raise DatasetError(f"{dataset.root}: no '{split}' pairs under PairAnnotation/{split}/")
    return pairs


def evaluate(
    dataset: SPairDataset,
    pairs: Sequence[PairRecord],
    describers: Mapping[str, Describer],
    size: int,
    grid: int,
    alphas: Sequence[float],
    soft: bool = True,
    window: int = 15,
    beta: float = 0.02,
    progress: bool = True,
) -> dict[str, list[PairOutcome]]:
    """Transfer every pair's source keypoints with each method; outcomes in `pairs` order."""
    results: dict[str, list[PairOutcome]] = {name: [] for name in describers}
    bar = tqdm(total=len(pairs), desc="evaluate", unit="pair", disable=not progress)
    for category, group in groupby(pairs, key=lambda p: p.category):
        group = list(group)
        last_use = {}
        for i, pair in enumerate(group):
            last_use[pair.src] = last_use[pair.trg] = i
        cache: dict[str, dict[str, torch.Tensor]] = {name: {} for name in describers}
        for i, pair in enumerate(group):
            truth = pair_keypoints(dataset, pair, size)
            src_xy = torch.as_tensor(truth.src_xy, dtype=torch.float32)
            for name, describe in describers.items():
                descs = cache[name]
                for stem in (pair.src, pair.trg):
                    if stem not in descs:
                        descs[stem] = describe(category, stem)
                pred = transfer(
                    descs[pair.src],
                    descs[pair.trg],
                    src_xy.to(descs[pair.src].device),
                    size,
                    grid,
                    soft=soft,
                    window=window,
                    beta=beta,
                )
                results[name].append(outcome(truth, pred.cpu().numpy(), alphas))
            for stem in {pair.src, pair.trg}:
                if last_use[stem] == i:
                    for descs in cache.values():
                        descs.pop(stem, None)
            bar.update(1)
    bar.close()
    return results


# --- describers over a FeatureStore ---------------------------------------------------------------


def zero_shot_describer(store, device: torch.device | str = "cpu") -> Describer:
    """The zero-shot baseline: SD and DINO parts each L2-normalised (½cos_SD + ½cos_DINO)."""

    def describe(category: str, stem: str) -> torch.Tensor:
        return store.similarity(category, stem).to(device, torch.float32)

    return describe


def adapter_describer(
    store, model: torch.nn.Module, device: torch.device | str = "cpu"
) -> Describer:
    """The refined features of an adapter, L2-normalised per patch."""
    model = model.to(device).eval()
    wanted = expected_input_channels(model)

    def describe(category: str, stem: str) -> torch.Tensor:
        raw = adapter_input(store.adapter_input(category, stem), wanted, store)
        with torch.no_grad():
            refined = model(raw[None].to(device, torch.float32))[0]  # (C, grid, grid)
        return F.normalize(refined.flatten(1).T.float(), dim=-1)

    return describe


def expected_input_channels(model: torch.nn.Module) -> int | None:
    """Input channels an adapter expects, from its `feature_dims` (official name) if it has one."""
    dims = getattr(model, "feature_dims", None)
    return int(np.sum(dims)) if dims is not None else None


def adapter_input(raw: torch.Tensor, wanted: int | None, store) -> torch.Tensor:
    """The raw [SD…, DINO] map cut to what the adapter takes: a DINO-only adapter (such as the
    authors' `dino_spair_768.pth`) on an SD+DINO store gets the trailing DINO channels."""
    if wanted is None or raw.shape[0] == wanted:
        return raw
    dino = int(store.feature_dims[-1])
    if wanted == dino:
        return raw[-dino:]
    raise EvaluationError(
        f"the adapter expects {wanted} input channels, the features have "
        f"{raw.shape[0]} ({list(store.feature_dims)}): adapter and features do not match"
    )


# --- one call for the stage and the CLI ------------------------------------------------------------


def evaluate_checkpoint(
    dataset_root: str | Path,
    features_root: str | Path,
    adapter_path: str | Path | None,
    settings: EvalParams,
    device: torch.device | str = "cpu",
    zero_shot: bool = True,
    progress: bool = True,
) -> tuple[dict, dict[str, list[PairOutcome]], int]:
    """PCK of the zero-shot baseline and/or an adapter checkpoint (method `adapter`)."""
    adapters = {"adapter": adapter_path} if adapter_path is not None else {}
    return evaluate_adapters(
        dataset_root, features_root, adapters, settings, device, zero_shot, progress
    )


def evaluate_adapters(
    dataset_root: str | Path,
    features_root: str | Path,
    adapters: Mapping[str, str | Path],
    settings: EvalParams,
    device: torch.device | str = "cpu",
    zero_shot: bool = True,
    progress: bool = True,
) -> tuple[dict, dict[str, list[PairOutcome]], int]:
    """PCK on `settings.split` of the zero-shot baseline (method `zero_shot`) and/or each adapter
    checkpoint of `adapters` (method: its key), in one pass over the pairs.

    Returns (metrics: {"pairs": n, method: summary, ...}, outcomes per method, annotation-frame
    size).
    """
    dataset = SPairDataset(dataset_root)
    store = FeatureStore(features_root)
    pairs = select_pairs(dataset, settings.split, settings.max_pairs)
    describers: dict[str, Describer] = {}
    if zero_shot:
        describers["zero_shot"] = zero_shot_describer(store, device)
    for name, path in adapters.items():
        describers[name] = adapter_describer(store, load_adapter(path), device)
    if not describers:
        raise EvaluationError(
            "nothing to evaluate: no adapter given and the zero-shot baseline is off"
        )
    results = evaluate(
        dataset,
        pairs,
        describers,
        store.size,
        store.grid,
        settings.alphas,
        soft=settings.soft,
        window=settings.window,
        beta=settings.beta,
        progress=progress,
    )
    metrics: dict = {"pairs": len(pairs)}
    for name, outcomes in results.items():
        metrics[name] = summarise(outcomes, settings.alphas)
    return metrics, results, store.size


@contextlib.contextmanager
def staged_outputs(
    metrics_path: str | Path | None,
    plots_dir: str | Path | None,
    dataset_root: str | Path,
    metrics: dict,
    results: Mapping[str, Sequence[PairOutcome]],
    settings: EvalParams,
    size: int,
    folder_per_method: bool = False,
) -> Iterator[Path | None]:
    """Write the metrics JSON and the plots folder (either may be None) into temporaries beside
    them, run the block (e.g. tracking) with the staged plots folder, and publish both only when
    all of it succeeded: the plots folder first (replacing it is what can still fail), then the
    metrics file. On any error neither output changes. With `folder_per_method`, each method's
    plots go to a subfolder named after it (separately evaluated runs, not compared in one plot)."""
    with contextlib.ExitStack() as stack:  # exits in reverse: plots published before metrics
        if metrics_path is not None:
            stack.enter_context(atomic_path(metrics_path)).write_text(json_text(metrics))
        staged = None
        if plots_dir is not None:
            staged = stack.enter_context(atomic_dir(plots_dir))
            groups = {name: [name] for name in results} if folder_per_method else {"": results}
            for folder, methods in groups.items():
                write_plots(
                    staged / folder,
                    dataset_root,
                    metrics,
                    {m: results[m] for m in methods},
                    settings.alphas,
                    size,
                    settings.match_images,
                )
        yield staged


def write_plots(
    out_dir: str | Path,
    dataset_root: str | Path,
    metrics: dict,
    results: Mapping[str, Sequence[PairOutcome]],
    alphas: Sequence[float],
    size: int,
    match_images: int,
) -> list[Path]:
    """CSV curves (DVC plots), their PNGs, and match pictures of a few pairs into `out_dir`."""
    out_dir = Path(out_dir)
    methods = list(results)
    written = []

    rows = [
        "alpha," + ",".join(f"{m}_{avg}" for m in methods for avg in ("per_image", "per_keypoint"))
    ]
    for a in sorted(alphas):
        key = pck_key(a)
        rows.append(
            f"{a:g},"
            + ",".join(
                f"{metrics[m][avg][key]}" for m in methods for avg in ("per_image", "per_keypoint")
            )
        )
    written.append(_write_csv(out_dir / "pck_vs_alpha.csv", rows))
    curves = {
        f"{m} ({avg.replace('_', ' ')})": [metrics[m][avg][pck_key(a)] for a in alphas]
        for m in methods
        for avg in ("per_image", "per_keypoint")
    }
    viz.plot_pck_vs_alpha(alphas, curves, out_dir / "pck_vs_alpha.png")
    written.append(out_dir / "pck_vs_alpha.png")

    head = pck_key(headline_alpha(alphas))
    deltas = sorted({int(k[1:]) for m in methods for k in metrics[m].get("per_azimuth", {})})
    if deltas:
        rows = ["delta_azimuth,pairs," + ",".join(methods)]
        values = {m: [] for m in methods}
        for d in deltas:
            for m in methods:
                block = metrics[m]["per_azimuth"].get(f"d{d}")
                values[m].append(block["per_image"][head] if block else None)
            pairs = metrics[methods[0]]["per_azimuth"].get(f"d{d}", {}).get("pairs", 0)
            rows.append(
                f"{d},{pairs},"
                + ",".join("" if values[m][-1] is None else f"{values[m][-1]}" for m in methods)
            )
        written.append(_write_csv(out_dir / "pck_vs_azimuth.csv", rows))
        labels = [TAB1_LABELS.get(d, str(d)) for d in deltas]
        viz.plot_pck_vs_azimuth(
            labels, values, out_dir / "pck_vs_azimuth.png", ylabel=f"PCK@{head[4:]} per image (%)"
        )
        written.append(out_dir / "pck_vs_azimuth.png")

    dataset = SPairDataset(dataset_root)
    headline = list(alphas).index(headline_alpha(alphas))
    for i, index in enumerate(_spread(results[methods[0]], match_images)):
        for m in methods:
            o = results[m][index]
            t = o.truth
            src, trg = (_padded(dataset, t.category, stem, size) for stem in (t.src, t.trg))
            hits = o.correct[headline]
            path = out_dir / "matches" / f"{i:02d}_{t.category}_{t.src}-{t.trg}_{m}.png"
            title = (
                f"{m}: {t.category} {t.src} → {t.trg}, {hits.sum()}/{len(hits)} correct "
                f"at α={headline_alpha(alphas):g}"
            )
            viz.draw_matches(
                src, trg, t.src_xy, o.pred_xy, path, correct=hits, gt_xy=t.trg_xy, title=title
            )
            written.append(path)
    return written


def _spread(outcomes: Sequence[PairOutcome], n: int) -> list[int]:
    """Indices of up to n pairs, taking categories in turn (first pair of each, then the second…)."""
    by_category: dict[str, list[int]] = {}
    for i, o in enumerate(outcomes):
        by_category.setdefault(o.truth.category, []).append(i)
    chosen, depth = [], 0
    while len(chosen) < n and any(depth < len(v) for v in by_category.values()):
        for indices in by_category.values():
            if depth < len(indices) and len(chosen) < n:
                chosen.append(indices[depth])
        depth += 1
    return chosen


def _padded(dataset: SPairDataset, category: str, stem: str, size: int):
    img = dataset.load_image(category, stem)
    return ResizePad(img.width, img.height, size).image(img)


def _write_csv(path: Path, rows: Sequence[str]) -> Path:
    write_text(path, "\n".join(rows) + "\n")
    return path
