"""Typed pipeline parameters: one dataclass per `params.yaml` group, with its range checks.

Every value a stage reads comes from here. Loading (`diysc.config.load`) checks key names, types and
ranges up front so a typo or a bad value fails in a second with the offending key named, never hours
into a stage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from diysc.errors import UserError


class ParamsError(UserError, ValueError):
    """A parameter file or override is invalid; the message names the key."""


# ---------------------------------------------------------------------------------------------
# Parameter groups. Defaults are the paper's values; the presets in conf/ set every group fully.


@dataclass(frozen=True)
class SyntheticParams:
    categories: tuple[str, ...] = ("car", "quadruped", "chair")
    images_per_category: int = 32  # split 50/25/25 % into trn/val/test with disjoint instances
    image_size: int = 256  # long side of the rendered images, px
    pairs_trn: int = 60  # pairs per category and split
    pairs_val: int = 20
    pairs_test: int = 20
    seed: int = 0

    def check(self, key: str) -> None:
        _require(len(self.categories) >= 1, f"{key}.categories", "needs at least one category")
        _require(
            self.images_per_category >= 32,
            f"{key}.images_per_category",
            "must be >= 32, so that val and test (a quarter each) cover the 8 azimuth bins",
        )
        _require(self.image_size >= 64, f"{key}.image_size", "must be >= 64")
        for split in ("trn", "val", "test"):
            _require(getattr(self, f"pairs_{split}") >= 1, f"{key}.pairs_{split}", "must be >= 1")


@dataclass(frozen=True)
class LocalParams:
    """`datasets.spair.source: local`: a small directory in SPair-71k layout, used as it is (no
    download, no full-dataset count check); `diysc.datasets.spair.local` builds the splits it
    lacks."""

    path: str = ""  # the directory (relative to the repository root or absolute)
    masks: str = ""  # per-image foreground masks under `path` (<cat>/<stem>.*); "" = Segmentation/
    mirror: bool = True  # add a horizontally mirrored copy of every image to the built splits

    def check(self, key: str) -> None:
        _require(
            not Path(self.masks).is_absolute() and ".." not in Path(self.masks).parts,
            f"{key}.masks",
            f"must be a folder inside {key}.path",
        )


@dataclass(frozen=True)
class SPairParams:
    """The SPair-71k entry: `source: official` is the official archive (downloaded, or a local
    archive or extracted directory, checked against the full dataset's counts); `local` is a small
    directory in SPair-71k layout used as it is (`local.path`, the smoke preset's real sample)."""

    source: Literal["official", "local"] = "official"
    url: str = "http://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz"
    sha256: str = ""  # empty: record the first complete download's digest, verify it on reuse
    local: LocalParams = field(default_factory=LocalParams)

    def check(self, key: str) -> None:
        _require(
            self.sha256 == "" or (len(self.sha256) == 64 and _is_hex(self.sha256)),
            f"{key}.sha256",
            "must be empty or 64 hex digits",
        )
        self.local.check(f"{key}.local")
        _require(
            self.source != "local" or bool(self.local.path),
            f"{key}.local.path",
            f"must name a directory in SPair-71k layout when {key}.source is local",
        )


# The datasets the pipeline knows: an entry `datasets.<name>` takes these params, and the package
# `diysc.datasets.<name>` builds and reads it (`diysc/datasets/__init__.py`).
DATASETS: dict[str, type] = {"spair": SPairParams, "synthetic": SyntheticParams}


@dataclass(frozen=True)
class MasksParams:
    source: Literal["dataset", "sam", "bbox"] = "sam"
    sam_model: str = "facebook/sam-vit-huge"
    sam_size: int = 960  # SAM sees the image resized and padded to this square

    def check(self, key: str) -> None:
        _require(self.sam_size >= 64, f"{key}.sam_size", "must be >= 64")


@dataclass(frozen=True)
class BackboneParams:
    """One backbone of `features.backbones`, under its registry name (`dino`, `sd`, `clip`)."""

    model: str = "facebook/dinov2-base"  # hub id, local directory, or a built name ("tiny", ...)
    size: int = 840  # input side: the image is resized and padded to size × size

    def check(self, key: str) -> None:
        _require(self.size >= 1, f"{key}.size", "must be >= 1")


@dataclass(frozen=True)
class FeaturesParams:
    # The backbones by registry name, in the adapter's group order. Their grids must agree; the
    # smallest input side is the annotation frame (DINO's 840 in the paper, next to SD's 960).
    backbones: dict[str, BackboneParams] = field(
        default_factory=lambda: {
            "sd": BackboneParams("stable-diffusion-v1-5/stable-diffusion-v1-5", 960),
            "dino": BackboneParams("facebook/dinov2-base", 840),
        }
    )
    sd_timestep: int = 50
    sd_seed: int = 42  # the fixed noise added at sd_timestep
    dtype: Literal["float16", "float32"] = "float16"

    @property
    def size(self) -> int:
        """The annotation frame's side: the smallest backbone input."""
        return min(b.size for b in self.backbones.values())

    def check(self, key: str) -> None:
        _require(len(self.backbones) > 0, f"{key}.backbones", "must name at least one backbone")
        for name, backbone in self.backbones.items():
            backbone.check(f"{key}.backbones.{name}")
        _require(0 <= self.sd_timestep < 1000, f"{key}.sd_timestep", "must be in [0, 1000)")


@dataclass(frozen=True)
class SphereParams:
    epochs: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    replication: int = 10  # each training image is seen this many times per epoch
    hidden: int = 384
    heads: int = 6
    triplets: int = 32  # triplets per image for the distance and orientation losses
    w_prototype: float = 1.0
    w_viewpoint: float = 0.1
    w_distance: float = 0.3
    w_orientation: float = 0.3
    distance_margin: float = 0.5
    orientation_threshold: float = 1.0
    pretrained: str = ""  # optional SphericalMaps checkpoint: skips training when given
    backbone: str = "dino"  # the feature group the mapper reads (DINOv2's in the paper)

    def check(self, key: str) -> None:
        for name in ("epochs", "batch_size", "replication", "hidden", "heads", "triplets"):
            _require(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        _require(self.hidden % self.heads == 0, f"{key}.heads", "must divide sphere.hidden")
        _require(self.lr > 0, f"{key}.lr", "must be > 0")


@dataclass(frozen=True)
class PseudoParams:
    r_max: int = 2  # relaxed cycle radius in patches, inclusive
    sphere_threshold: float = 0.15  # keep a match iff angle(psi_s, psi_t) <= threshold * pi
    chain_length: int = 4  # K images per azimuth chain
    pairs_trn: int = 30000  # emitted ordered pairs per category
    pairs_val: int = 300

    def check(self, key: str) -> None:
        _require(self.r_max >= 0, f"{key}.r_max", "must be >= 0")
        _require(0 < self.sphere_threshold <= 1, f"{key}.sphere_threshold", "must be in (0, 1]")
        _require(2 <= self.chain_length <= 8, f"{key}.chain_length", "must be in [2, 8]")
        _require(self.pairs_trn >= 1, f"{key}.pairs_trn", "must be >= 1")
        _require(self.pairs_val >= 1, f"{key}.pairs_val", "must be >= 1")


@dataclass(frozen=True)
class AdapterParams:
    channels: int = 768
    num_blocks: int = 1
    dropout: float = 0.2  # element-wise dropout on the raw input features
    lr: float = 5e-3
    weight_decay: float = 1e-3
    steps: int = 200_001
    warmup: float = 0.3  # OneCycle pct_start
    batch_size: int = 1  # pairs per optimiser step
    max_kps: int = 50  # pseudo-labelled points per pair
    temperature: float = 0.07  # initial InfoNCE temperature (learned)
    beta: float = 0.02  # soft-argmax temperature of the dense loss
    noise: float = 0.1  # flow-target noise: sigma = noise * thr_t / 2
    w_sparse: float = 1.0
    w_dense: float = 1.0
    val_every: int = 25_000
    val_pairs: int = 200  # per category, drawn with replacement
    checkpoint_every: int = 5_000

    def check(self, key: str) -> None:
        _require(
            self.channels >= 128 and self.channels % 128 == 0,
            f"{key}.channels",
            "must be a multiple of 128 (GroupNorm with 32 groups on channels/4)",
        )
        for name in (
            "num_blocks",
            "steps",
            "batch_size",
            "max_kps",
            "val_every",
            "val_pairs",
            "checkpoint_every",
        ):
            _require(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        _require(0 <= self.dropout < 1, f"{key}.dropout", "must be in [0, 1)")
        _require(0 < self.warmup < 1, f"{key}.warmup", "must be in (0, 1)")
        for name in ("lr", "temperature", "beta"):
            _require(getattr(self, name) > 0, f"{key}.{name}", "must be > 0")
        for name in ("weight_decay", "noise", "w_sparse", "w_dense"):
            _require(getattr(self, name) >= 0, f"{key}.{name}", "must be >= 0")


@dataclass(frozen=True)
class EvalParams:
    split: Literal["trn", "val", "test"] = "test"
    alphas: tuple[float, ...] = (0.1, 0.05, 0.01)
    soft: bool = True  # window soft-argmax; False: hard argmax
    window: int = 15  # side of the soft-argmax window, in patches (odd)
    beta: float = 0.02
    max_pairs: int = 0  # per category; 0 = all pairs
    match_images: int = 4  # pairs drawn as match PNGs

    def check(self, key: str) -> None:
        _require(len(self.alphas) >= 1, f"{key}.alphas", "needs at least one alpha")
        _require(all(0 < a <= 1 for a in self.alphas), f"{key}.alphas", "must lie in (0, 1]")
        _require(self.window >= 1 and self.window % 2 == 1, f"{key}.window", "must be odd and >= 1")
        _require(self.beta > 0, f"{key}.beta", "must be > 0")
        _require(self.max_pairs >= 0, f"{key}.max_pairs", "must be >= 0")
        _require(self.match_images >= 0, f"{key}.match_images", "must be >= 0")


FULL_RUN = "full"  # the ablation runs of the main pipeline's settings, one per seed


@dataclass(frozen=True)
class AblationParams:
    """The ablation experiments, defined once: each variant is the params it sets.

    Read only by ablations/*/dvc.yaml (each variant stage tracks its own entry), so changing it never
    reruns the main pipeline. `label_variants` are Tab. 5 rows (new pseudo-labels, an adapter, its
    evaluation); `adapter_variants` are Tab. 8 widths trained on the main pseudo-labels. Settings are
    nested like params.yaml (`{adapter: {channels: 384}}`) and checked against it at load time.
    Every variant, and the main settings, run once per seed of `seeds` (the tables report mean ±
    std over them).
    """

    label_variants: dict = field(default_factory=dict)
    adapter_variants: dict = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)

    def runs(self) -> list[str]:
        """Every ablation run, `<variant>-s<seed>` (`full`: the main settings), seed by seed: the
        names of their outputs under models/variants, metrics/variants, …."""
        names = [*self.label_variants, FULL_RUN, *self.adapter_variants]
        return [f"{name}-s{seed}" for seed in self.seeds for name in names]

    def check(self, key: str) -> None:
        _require(
            len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds),
            f"{key}.seeds",
            "must be a non-empty list of distinct seeds",
        )
        taken = {FULL_RUN}  # run names must tell the runs apart
        for group in ("label_variants", "adapter_variants"):
            for name, settings in getattr(self, group).items():
                _require(
                    name not in taken,
                    f"{key}.{group}.{name}",
                    f"is a name already taken ('{FULL_RUN}' names the main settings' runs, and "
                    "a variant's name may appear once across both groups)",
                )
                taken.add(name)
                _require(
                    isinstance(settings, dict) and bool(settings),
                    f"{key}.{group}.{name}",
                    "must map params to the values the variant sets",
                )


@dataclass(frozen=True)
class TrackingParams:
    mlflow: bool = True
    experiment: str = "diysc"

    def check(self, key: str) -> None:
        _require(self.experiment != "", f"{key}.experiment", "must not be empty")


# The top-level switches of pseudo-label generation (Tab. 5's columns), as named in Params.
LABEL_TOGGLES = ("mask", "cycle", "chaining", "sphere_filter")


@dataclass(frozen=True)
class Params:
    preset: str = "paper"  # name of the composed preset, for reports
    seed: int = 0
    mask: bool = True  # restrict pseudo-label candidates to the object mask
    cycle: Literal["none", "strict", "relaxed"] = "relaxed"
    chaining: bool = True
    sphere_filter: bool = True
    # One entry per dataset, named as its package in diysc/datasets/ (DATASETS); the pipeline
    # builds, masks and extracts features of each. The sphere mapper, the pseudo-labels and the
    # adapter train on `train_dataset`; the adapter is evaluated on each of `eval_datasets` (the
    # first is the one the tables and the headline report).
    datasets: dict[str, Any] = field(default_factory=lambda: {"spair": SPairParams()})
    train_dataset: str = "spair"
    eval_datasets: tuple[str, ...] = ("spair",)
    masks: MasksParams = field(default_factory=MasksParams)
    features: FeaturesParams = field(default_factory=FeaturesParams)
    sphere: SphereParams = field(default_factory=SphereParams)
    pseudo: PseudoParams = field(default_factory=PseudoParams)
    adapter: AdapterParams = field(default_factory=AdapterParams)
    eval: EvalParams = field(default_factory=EvalParams)
    ablation: AblationParams = field(default_factory=AblationParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)

    def check(self, key: str = "") -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if hasattr(value, "check"):
                value.check(f.name)
        for name, entry in self.datasets.items():
            entry.check(f"datasets.{name}")
        known = ", ".join(self.datasets) or "none"
        _require(
            self.train_dataset in self.datasets,
            "train_dataset",
            f"must name an entry of datasets (here: {known})",
        )
        _require(
            len(self.eval_datasets) >= 1
            and len(set(self.eval_datasets)) == len(self.eval_datasets)
            and set(self.eval_datasets) <= set(self.datasets),
            "eval_datasets",
            f"must be a non-empty list of distinct entries of datasets (here: {known})",
        )

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ParamsError(f"'{key}' {message}")


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
