"""Pseudo-label generation per category and split: chains, filters, the quality report, and the
stage that writes every category's label file (layout and reader: `diysc.formats.labels`)."""

from __future__ import annotations

import sys
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from diysc.data.spair import SPairDataset, load_rgb
from diysc.features import FeatureStore
from diysc.filter_steps import REJECTIONS, STEPS, TOGGLES
from diysc.formats.labels import (
    COLUMNS,
    CONVENTION,
    SPLITS,
    labels_frame,
    labels_path,
    write_labels,
)
from diysc.formats.masks import MaskStore
from diysc.formats.sphere_points import SpherePoints
from diysc.geometry import picture_on_grid
from diysc.launch import Workers
from diysc.metric_keys import precision_key
from diysc.partial_shards import PartialShards
from diysc.pseudo.chain import match_link, ordered_pairs, propagate
from diysc.pseudo.filters import Matches
from diysc.pseudo.quality import ALPHAS, Counts, ImageTruth, image_truth, score_matches
from diysc.pseudo.sampling import sample_chains, sample_pairs, tuples_to_sample

# Emitted pairs per category and split whose every filter step (`diysc.filter_steps`) is scored;
# the extra direct matching this needs is capped so it stays small next to generation.
DIAGNOSTIC_PAIRS = 1000


class Settings:
    """Pseudo-labelling settings: each toggle of `diysc.filter_steps` (top-level params, read as
    `settings.<param>`; one not given is off) and the constants of `pseudo`."""

    def __init__(
        self, *, chain_length: int = 4, r_max: int = 2, sphere_threshold: float = 0.15, **toggles
    ):
        unknown = sorted(set(toggles) - {t.param for t in TOGGLES})
        if unknown:
            raise TypeError(
                f"Settings: {unknown} are not pseudo-label toggles (diysc.filter_steps)"
            )
        self.toggles = {t.param: toggles.get(t.param, t.off) for t in TOGGLES}
        self.chain_length, self.r_max = chain_length, r_max
        self.sphere_threshold = sphere_threshold

    def __getattr__(self, name: str):
        toggles = self.__dict__.get("toggles", {})
        if name in toggles:
            return toggles[name]
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"Settings({self.record()})"

    @classmethod
    def from_params(cls, params) -> Settings:
        return cls(
            **{t.param: getattr(params, t.param) for t in TOGGLES},
            chain_length=params.pseudo.chain_length,
            r_max=params.pseudo.r_max,
            sphere_threshold=params.pseudo.sphere_threshold,
        )

    def record(self) -> dict:
        """The settings as the labels record them (info.json, and so each run's train.json)."""
        return self.toggles | {
            "chain_length": self.chain_length,
            "r_max": self.r_max,
            "sphere_threshold": self.sphere_threshold,
        }

    @property
    def tuple_length(self) -> int:
        return self.chain_length if self.chaining else 2

    @property
    def emitted_pairs(self) -> list[tuple[int, int]]:
        """Ordered pairs emitted per tuple: all of a chain's; only the matched direction otherwise."""
        return ordered_pairs(self.tuple_length) if self.chaining else [(0, 1)]


@dataclass
class CategoryImages:
    """One category's images in one split, as generation sees them (callables keyed by stem)."""

    category: str
    stems: list[str]
    azimuths: list[int | None]
    features: Callable[[str], torch.Tensor]  # (grid², C) similarity descriptors
    candidates: Callable[[str], torch.Tensor]  # (grid²,) bool
    sphere: Callable[[str], torch.Tensor] | None = None  # (grid², 3); needed iff sphere_filter
    truth: Callable[[str], ImageTruth] | None = None  # ground truth for the quality report


@dataclass
class Report:
    tuples: int = 0
    pairs: int = 0
    points: int = 0
    diagnostic_pairs: int = 0
    steps: dict[str, Counts] = field(default_factory=lambda: {s.name: Counts() for s in STEPS})

    @property
    def emitted(self) -> Counts:
        return self.steps["emitted"]

    def add(self, other: Report) -> None:
        self.tuples += other.tuples
        self.pairs += other.pairs
        self.points += other.points
        self.diagnostic_pairs += other.diagnostic_pairs
        for name, counts in self.steps.items():
            counts.add(other.steps[name])

    def to_dict(self) -> dict:
        out = {
            "pairs": self.pairs,
            "points": self.points,
            "tuples": self.tuples,
            "points_per_pair": round(self.points / self.pairs, 3) if self.pairs else 0.0,
            "diagnostic_pairs": self.diagnostic_pairs,
        }
        out.update({name: counts.to_dict() for name, counts in self.steps.items()})
        return out


# ---------------------------------------------------------------------------------------------
# Generation


def generate(
    images: CategoryImages,
    settings: Settings,
    cap: int,
    grid: int,
    size: int,
    rng: np.random.Generator,
    device: torch.device | str = "cpu",
    batch: int = 8,
    cache_images: int = 64,
    diagnostics: int = DIAGNOSTIC_PAIRS,
) -> tuple[pd.DataFrame, Report]:
    """Pseudo-labels of one category and split: at most `cap` ordered pairs with ≥ 1 point.

    Tuples (azimuth chains, or uniform pairs without chaining) are drawn with `rng` and processed
    `batch` at a time until `cap` pairs are emitted; a tuple's pairs are taken in random order.
    """
    if settings.sphere_filter and images.sphere is None:
        raise ValueError(f"{images.category}: sphere_filter is on but no sphere points were given")
    emitted = settings.emitted_pairs
    if settings.chaining:
        tuples = sample_chains(
            images.azimuths,
            settings.tuple_length,
            tuples_to_sample(cap, len(emitted)),
            rng,
            images.category,
        )
    else:
        tuples = sample_pairs(len(images.stems), tuples_to_sample(cap, 1), rng, images.category)
    first = torch.tensor([i for i, _ in emitted], device=device)
    second = torch.tensor([j for _, j in emitted], device=device)
    loader = _Loader(images, grid, settings, device, cache_images)
    recorded = settings.record()
    direct = _DirectMatches(settings, grid, capacity=64 * cache_images)
    report, rows = Report(), []
    for start in range(0, len(tuples), batch):
        if report.pairs >= cap:
            break
        chunk = tuples[start : start + batch]
        feats, cands, spheres = loader.batch(chunk)
        first_link = direct.get(chunk[:, 0], chunk[:, 1], feats, cands, 0, 1)
        positions, alive = propagate(feats, cands, settings.cycle, grid, settings.r_max, first_link)
        src, trg = positions[:, first], positions[:, second]  # (B, P, N)
        passed = {"chaining": alive.unsqueeze(1).expand_as(src)}  # step → (B, P, N) matches left
        kept, matches = passed["chaining"], Matches(src, trg, first, second, spheres)
        for step in REJECTIONS:
            if step.applies(recorded):
                kept = kept & step.load()(matches, settings)
            passed[step.name] = kept
        report.tuples += len(chunk)
        counts = kept.sum(-1).tolist()
        chosen = []  # (b, p) of the pairs emitted from this batch, in emission order
        for b in range(len(chunk)):
            for p in rng.permutation(len(emitted)):
                if report.pairs + len(chosen) >= cap:
                    break
                if counts[b][p] > 0:
                    chosen.append((b, int(p)))
        if not chosen:
            continue
        bs = torch.tensor([c[0] for c in chosen], device=device)
        ps = torch.tensor([c[1] for c in chosen], device=device)
        src_c, trg_c = src[bs, ps].cpu(), trg[bs, ps].cpu()
        passed_c = {name: mask[bs, ps].cpu() for name, mask in passed.items()}
        kept_c = kept[bs, ps].cpu()
        stems = [
            (images.stems[chunk[b][emitted[p][0]]], images.stems[chunk[b][emitted[p][1]]])
            for b, p in chosen
        ]
        n_diag = min(len(chosen), diagnostics - report.diagnostic_pairs) if images.truth else 0
        if n_diag > 0:
            raw, cycled = _scored_direct_matches(
                direct, chunk, feats, cands, bs[:n_diag], first[ps[:n_diag]], second[ps[:n_diag]]
            )
        for m, (s, t) in enumerate(stems):
            pair_src, pair_trg = src_c[m][kept_c[m]], trg_c[m][kept_c[m]]
            rows.append((report.pairs, s, t, pair_src, pair_trg))
            report.pairs += 1
            report.points += int(pair_src.numel())
            if images.truth is None:
                continue
            truth_s, truth_t = images.truth(s), images.truth(t)
            report.emitted.add(score_matches(pair_src, pair_trg, truth_s, truth_t, size, grid))
            if m < n_diag:
                report.diagnostic_pairs += 1
                scored = {"raw_nn": raw[m], "cycle": cycled[m]} | {
                    name: (src_c[m][mask[m]], trg_c[m][mask[m]]) for name, mask in passed_c.items()
                }
                for name, (a, z) in scored.items():
                    report.steps[name].add(score_matches(a, z, truth_s, truth_t, size, grid))
    return labels_frame(rows, grid), report


class _DirectMatches:
    """`match_link` of image i → image j with every candidate of i as a source, kept per ordered
    pair of images (LRU, `capacity` pairs): it is the first link of every chain that starts with
    i, j, and the direct match of the quality report. ~5 bytes per patch per pair."""

    def __init__(self, settings: Settings, grid: int, capacity: int):
        self.settings, self.grid, self.capacity = settings, grid, capacity
        self.pairs: OrderedDict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def get(self, images_s, images_t, feats, cands, k_s, k_t):
        """(target, consistent), each (B, N), for the pairs (images_s[b], images_t[b]) found at
        positions k_s[b], k_t[b] (ints or per-row sequences) of chain b of the loaded batch."""
        b = len(images_s)
        k_s, k_t = ([k] * b if isinstance(k, int) else list(k) for k in (k_s, k_t))
        keys = [(int(i), int(j)) for i, j in zip(images_s, images_t, strict=True)]
        missing = {}  # key → first row of the batch that holds it
        for row, key in enumerate(keys):
            if key not in self.pairs and key not in missing:
                missing[key] = row
        if missing:
            rows = list(missing.values())
            cand_s = torch.stack([cands[r, k_s[r]] for r in rows])
            target, consistent = match_link(
                [feats[r][k_s[r]] for r in rows],
                [feats[r][k_t[r]] for r in rows],
                cand_s,
                torch.stack([cands[r, k_t[r]] for r in rows]),
                self.settings.cycle,
                self.grid,
                self.settings.r_max,
            )
            for key, t, c in zip(missing, target.int(), consistent, strict=True):
                self.pairs[key] = (t.clone(), c.clone())
        for key in keys:
            self.pairs.move_to_end(key)
        found = [self.pairs[key] for key in keys]
        while len(self.pairs) > self.capacity:
            self.pairs.popitem(last=False)
        return torch.stack([t for t, _ in found]).long(), torch.stack([c for _, c in found])


def _scored_direct_matches(direct: _DirectMatches, chunk, feats, cands, bs, first, second):
    """Direct NN of each scored pair, before and after the cycle check: lists of (src, trg)."""
    bs, first, second = bs.tolist(), first.tolist(), second.tolist()
    target, consistent = direct.get(
        [chunk[b][i] for b, i in zip(bs, first, strict=True)],
        [chunk[b][j] for b, j in zip(bs, second, strict=True)],
        [feats[b] for b in bs],
        cands[bs],
        first,
        second,
    )
    cand_s = cands[bs, first]
    target, cand_s, cycled = target.cpu(), cand_s.cpu(), (cand_s & consistent).cpu()
    patches = torch.arange(target.shape[-1])
    raw = [(patches[c], t[c]) for c, t in zip(cand_s, target, strict=True)]
    kept = [(patches[c], t[c]) for c, t in zip(cycled, target, strict=True)]
    return raw, kept


class _Loader:
    """Stacks a batch of tuples' tensors on the device, keeping recently used images cached."""

    def __init__(
        self, images: CategoryImages, grid: int, settings: Settings, device, capacity: int
    ):
        self.images, self.grid, self.device, self.capacity = images, grid, device, capacity
        self.with_sphere = settings.sphere_filter
        self.cache: OrderedDict[int, tuple] = OrderedDict()

    def image(self, index: int) -> tuple:
        if index in self.cache:
            self.cache.move_to_end(index)
            return self.cache[index]
        stem, n = self.images.stems[index], self.grid * self.grid
        where = f"{self.images.category}/{stem}"
        feat = _checked(self.images.features(stem), (n, None), f"{where}: features").float()
        cand = _checked(self.images.candidates(stem), (n,), f"{where}: candidates").bool()
        sph = None
        if self.with_sphere:
            sph = _checked(self.images.sphere(stem), (n, 3), f"{where}: sphere points").float()
        entry = tuple(x.to(self.device) if x is not None else None for x in (feat, cand, sph))
        self.cache[index] = entry
        if len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        return entry

    def batch(self, tuples: np.ndarray):
        """Per chain, the K cached feature tensors (not copied: a batch of paper-sized features is
        ~1 GB); the candidates (B, K, N) and sphere points (B, K, N, 3) stacked."""
        loaded = [[self.image(int(i)) for i in row] for row in tuples]
        feats = [[im[0] for im in row] for row in loaded]
        cands = torch.stack([torch.stack([im[1] for im in row]) for row in loaded])
        spheres = None
        if self.with_sphere:
            spheres = torch.stack([torch.stack([im[2] for im in row]) for row in loaded])
        return feats, cands, spheres


def _checked(value, shape: tuple, what: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    if tensor.dim() != len(shape) or any(
        s is not None and s != d for s, d in zip(shape, tensor.shape, strict=True)
    ):
        raise ValueError(
            f"{what}: expected shape {tuple('C' if s is None else s for s in shape)}, "
            f"got {tuple(tensor.shape)}"
        )
    return tensor


# ---------------------------------------------------------------------------------------------
# The stage's random streams


def category_seed(seed: int, split: str, category: str) -> np.random.Generator:
    """An independent, stable generator per (seed, split, category)."""
    return np.random.default_rng([seed, zlib.crc32(f"{split}/{category}".encode())])


# ---------------------------------------------------------------------------------------------
# The whole stage: every category of both splits, from the stores on disk


def category_images(
    dataset, features, masks, spheres, split: str, category: str, settings: Settings
) -> CategoryImages:
    """Wire the stores (`SPairDataset`, `FeatureStore`, `MaskStore`, `SpherePoints`) to generation.

    Candidates are the object mask on the grid, or with `mask` off every patch that is neither
    padding nor pure black (the image's RGB sum > 0, as the reference); `spheres` is only read
    with `sphere_filter` on."""

    size, grid = features.size, features.grid
    stems = dataset.split_images(split, category)

    def candidates(stem: str) -> torch.Tensor:
        if settings.mask:
            on_grid = masks.on_grid(category, stem, size, grid)
        else:
            on_grid = picture_on_grid(load_rgb(dataset.image_path(category, stem)), size, grid)
        return torch.as_tensor(np.asarray(on_grid)).reshape(-1).bool()

    return CategoryImages(
        category=category,
        stems=stems,
        azimuths=[dataset.image(category, s).azimuth_id for s in stems],
        features=lambda stem: features.similarity(category, stem),
        candidates=candidates,
        sphere=(lambda stem: spheres.points(category, stem)) if settings.sphere_filter else None,
        truth=lambda stem: image_truth(dataset.image(category, stem), size),
    )


def generate_labels(
    dataset_root,
    features_root,
    masks_root,
    sphere_root,
    out: str | Path,
    settings: Settings,
    caps: dict[str, int],
    seed: int,
    device: torch.device | str = "cpu",
    batch: int = 8,
    progress: Callable[[Iterable], Iterable] = iter,
    workers: Workers | None = None,
) -> dict | None:
    """Generate every category's pseudo-labels for trn and val and publish them as the directory
    `out` (whole, atomically); return the quality report (`metrics` JSON).

    Among several `workers` each generates its share of the (split, category) jobs into the work
    directory beside `out`; rank 0 gathers the reports, merges them in job order and publishes
    (the others return None). Each job's result depends on that job alone (its generator is
    `category_seed`), so the output is the one process's, byte for byte."""
    workers = workers or Workers()
    dataset, features = SPairDataset(dataset_root), FeatureStore(features_root)
    masks = MaskStore(masks_root) if settings.mask else None
    spheres = None
    if settings.sphere_filter:
        spheres = SpherePoints(sphere_root)
    partial = PartialShards(out)
    jobs = [(split, cat) for split in SPLITS for cat in dataset.categories]
    reports: dict[tuple[str, str], Report] = {}
    for split, cat in progress(workers.mine(jobs, [caps[split] for split, _ in jobs])):
        images = category_images(dataset, features, masks, spheres, split, cat, settings)
        if len(images.stems) < 2:
            raise ValueError(
                f"{dataset_root}: category {cat!r} has {len(images.stems)} {split} "
                "image(s); pseudo-labelling needs at least two"
            )
        frame, reports[split, cat] = generate(
            images,
            settings,
            caps[split],
            features.grid,
            features.size,
            category_seed(seed, split, cat),
            device,
            batch,
        )
        write_labels(labels_path(partial.work, split, cat), frame)
    gathered = workers.gather(reports)  # also waits until every worker's files are written
    if gathered is None:
        return None
    for part in gathered:
        reports.update(part)
    metrics: dict = {}
    per_category: dict = {}
    counts: dict = {}
    for split, cat in jobs:  # in job order, whichever worker ran the job
        report = reports[split, cat]
        if report.pairs == 0:
            print(
                f"warning: {labels_path(out, split, cat)}: no pseudo-labels ({report.tuples} "
                "tuples drawn, the filters kept no correspondence); training skips this category",
                file=sys.stderr,
            )
        metrics.setdefault(split, Report()).add(report)
        key = precision_key(ALPHAS[0])
        per_category.setdefault(cat, {})[split] = {
            "pairs": report.pairs,
            "points": report.points,
            key: report.emitted.to_dict()[key],
        }
        counts.setdefault(split, {})[cat] = {"pairs": report.pairs, "points": report.points}
    info = {
        "size": features.size,
        "grid": features.grid,
        "coordinates": CONVENTION,
        "columns": list(COLUMNS),
        "settings": settings.record() | {"caps": caps, "seed": seed},
        "counts": counts,
    }
    partial.publish([labels_path("", split, cat) for split, cat in jobs], {"info.json": info})
    result = {split: metrics[split].to_dict() for split in SPLITS if split in metrics}
    result["categories"] = per_category
    return result
