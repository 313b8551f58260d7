"""Feature extraction: each configured backbone's feature group of every image, into per-category
shards (`diysc.features` owns the layout and reads it).

The backbones are `features.backbones`, loaded through `diysc.backbones.registry` (only the
configured ones are imported). Their patch grids must agree; the annotation frame is the smallest
input side (`FeaturesParams.size`). `diysc match` extracts a user's images with the same functions.

Extraction is resumable: each finished category shard is kept in a work directory beside the
output (`.<out name>.partial/`, outside the DVC out, which DVC deletes before a run) together with a
fingerprint of the params, the category's image bytes and the code (this module's and the
configured backbones'), and reused on restart only when the fingerprint matches. When every
category is done the output directory appears at once. Several workers (`diysc.launch.Workers`)
each extract their share of the categories into the same work directory; rank 0 publishes once all
are done.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from diysc.backbones import registry
from diysc.backbones.base import Backbone, BackboneError
from diysc.config.schema import FeaturesParams
from diysc.data.spair import DatasetError, SPairDataset
from diysc.launch import Workers
from diysc.partial_shards import PartialShards, fingerprint
from diysc.provenance import code_digest


def load_backbones(params: FeaturesParams, device: torch.device | str = "cpu") -> list[Backbone]:
    """The configured backbones, in order; their grids must agree."""
    backbones = []
    for name, entry in params.backbones.items():
        cls = registry.backbone(name)
        backbones.append(cls.load(entry, params, device, f"features.backbones.{name}"))
    grids = {f"features.backbones.{b.name}": b.grid for b in backbones}
    if len(set(grids.values())) > 1:
        listed = ", ".join(f"{key} on a {g}x{g} grid" for key, g in grids.items())
        raise BackboneError(
            f"the backbones' patch grids must agree (SD at 960 and DINO at 840 px both give 60): "
            f"{listed}; change their sizes"
        )
    return backbones


def code(params: FeaturesParams) -> dict[str, str]:
    """What each configured backbone runs, as code digests (`registry.code`), by backbone name."""
    return {name: registry.code(name, entry.model) for name, entry in params.backbones.items()}


def info(params: FeaturesParams, backbones: Sequence[Backbone], categories: Sequence[str]) -> dict:
    """info.json of a feature cache (`diysc.features.FeatureStore`)."""
    return {
        "size": params.size,
        "grid": backbones[0].grid,
        "groups": [b.group.to_json() for b in backbones],
        "dtype": params.dtype,
        "categories": list(categories),
    }


def extract_batch(
    backbones: Sequence[Backbone], batch: Sequence[torch.Tensor], stems: Sequence[str], dtype
) -> dict[str, dict[str, torch.Tensor]]:
    """{group: {shard key: (dim, side, side) tensor}} of one batch; `batch[i]` holds the images
    as backbone i preprocessed them."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for backbone, images in zip(backbones, batch, strict=True):
        feats = backbone(images)
        shard = out.setdefault(backbone.name, {})
        for m in backbone.group.maps:
            maps = feats[m.level].to("cpu", dtype)
            for i, stem in enumerate(stems):
                shard[m.key(stem)] = maps[i].clone()
    return out


def extract_images(
    backbones: Sequence[Backbone], images: Mapping[str, object], dtype
) -> dict[str, dict[str, torch.Tensor]]:
    """{group: {shard key: tensor}} of a few PIL images keyed by name, in one batch."""
    batch = [torch.stack([b.preprocess(img) for img in images.values()]) for b in backbones]
    return extract_batch(backbones, batch, list(images), dtype)


class _Images(torch.utils.data.Dataset):
    """Decoded, resized-and-padded inputs of each backbone for images of one category; each
    image's pixel size is checked against its annotation (`SPairDataset.load_image`)."""

    def __init__(self, dataset: SPairDataset, category: str, stems: Sequence[str], preprocessors):
        self.dataset, self.category = dataset, category
        self.stems, self.preprocessors = list(stems), list(preprocessors)

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, i: int):
        img = self.dataset.load_image(self.category, self.stems[i])
        return tuple(pre(img) for pre in self.preprocessors)


def extract_features(
    dataset: SPairDataset,
    params: FeaturesParams,
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    batch_size: int = 4,
    num_workers: int = 0,
    progress: bool = True,
    workers: Workers | None = None,
) -> dict:
    """Extract every configured backbone's features of every image of every category; returns
    info.json's dict. Among several `workers`, this one extracts its share and only rank 0
    publishes."""
    workers = workers or Workers()
    categories = list(dataset.categories)
    stems = {cat: dataset.images(cat) for cat in categories}
    paths = {cat: [dataset.image_path(cat, s) for s in stems[cat]] for cat in categories}
    for cat in categories:  # fail before loading any model on a missing image or annotation
        for stem, path in zip(stems[cat], paths[cat], strict=True):
            if not path.is_file():
                raise DatasetError(f"{path}: image file not found")
            dataset.image(cat, stem)

    with workers.leader_first():
        backbones = load_backbones(params, device)
    dtype = getattr(torch, params.dtype)

    partial = PartialShards(out_dir)
    param_dict = dataclasses.asdict(params)
    digest = code_digest(__name__) + "".join(code(params).values())
    groups = [b.name for b in backbones]
    keys = {cat: fingerprint(param_dict, paths[cat], digest) for cat in categories}
    rels = {cat: [f"{group}/{cat}.safetensors" for group in groups] for cat in categories}
    mine = workers.mine(categories, [len(stems[cat]) for cat in categories])
    total = sum(len(stems[cat]) for cat in mine)
    bar = tqdm(total=total, desc="features", unit="img", disable=not progress)
    for cat in mine:
        key = keys[cat]
        if all(partial.done(rel, key) for rel in rels[cat]):
            bar.update(len(stems[cat]))
            continue
        bar.set_postfix_str(cat)
        loader = torch.utils.data.DataLoader(
            _Images(dataset, cat, stems[cat], [b.preprocess for b in backbones]),
            batch_size=batch_size,
            num_workers=num_workers,
        )
        shards: dict[str, dict[str, torch.Tensor]] = {group: {} for group in groups}
        done = 0
        for batch in loader:
            names = stems[cat][done : done + len(batch[0])]
            for group, tensors in extract_batch(backbones, batch, names, dtype).items():
                shards[group].update(tensors)
            done += len(names)
            bar.update(len(names))
        for group, rel in zip(groups, rels[cat], strict=True):
            partial.save(rel, shards[group], key)
    bar.close()
    workers.wait_all()

    record = info(params, backbones, categories)
    if workers.leader:
        partial.publish(
            [f"{group}/{cat}.safetensors" for group in groups for cat in categories],
            {"info.json": record},
            {rel: keys[cat] for cat in categories for rel in rels[cat]},
        )
    return record
