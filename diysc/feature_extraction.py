"""Feature extraction: DINOv2 (and SD) features of every image into per-category shards.

Extraction is resumable: each finished category shard is kept in a work directory beside the
output (`.<out name>.partial/`, outside the DVC out, which DVC deletes before a run) together with a
fingerprint of the params, the category's image bytes and this code, and reused on restart only
when the fingerprint matches. When every category is done the output directory appears at once.
Several workers (`diysc.launch.Workers`) each extract their share of the categories into the same
work directory; rank 0 publishes once all are done. The layout is the one `diysc.features.FeatureStore` reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from diysc.backbones.dino import BackboneError, DinoExtractor
from diysc.backbones.sd import SDExtractor
from diysc.config.schema import FeaturesParams
from diysc.data.spair import DatasetError, SPairDataset
from diysc.features import SD_LEVELS
from diysc.launch import Workers
from diysc.partial_shards import PartialShards, fingerprint
from diysc.provenance import code_digest


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
    """Extract DINO (and SD) features of every image of every category; returns info.json's dict.
    Among several `workers`, this one extracts its share and only rank 0 publishes."""
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
        dino = DinoExtractor(params.dino_model, params.dino_size, device)
        sd = None
        if params.sd:
            sd = SDExtractor(
                params.sd_model, params.sd_size, params.sd_timestep, params.sd_seed, device
            )
    extractors: list = [dino]
    if sd:
        if sd.grids["s3"] != dino.grid:
            raise BackboneError(
                f"features.sd_size {params.sd_size} gives s3 on a {sd.grids['s3']}x"
                f"{sd.grids['s3']} grid but features.dino_size {params.dino_size} gives "
                f"{dino.grid}x{dino.grid}; they must match (960 / 840 in the paper)"
            )
        extractors.append(sd)
    dtype = getattr(torch, params.dtype)

    partial = PartialShards(out_dir)
    param_dict = dataclasses.asdict(params)
    code = code_digest(__name__)
    subdirs = ["dino"] + (["sd"] if sd else [])
    keys = {cat: fingerprint(param_dict, paths[cat], code) for cat in categories}
    rels = {cat: [f"{sub}/{cat}.safetensors" for sub in subdirs] for cat in categories}
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
            _Images(dataset, cat, stems[cat], [e.preprocess for e in extractors]),
            batch_size=batch_size,
            num_workers=num_workers,
        )
        dino_out: dict[str, torch.Tensor] = {}
        sd_out: dict[str, torch.Tensor] = {}
        names = iter(stems[cat])
        for batch in loader:
            dino_feats = dino(batch[0]).to("cpu", dtype)
            sd_feats = {k: v.to("cpu", dtype) for k, v in sd(batch[1]).items()} if sd else {}
            for i in range(dino_feats.shape[0]):
                stem = next(names)
                dino_out[stem] = dino_feats[i].clone()
                for level, feats in sd_feats.items():
                    sd_out[f"{stem}.{level}"] = feats[i].clone()
            bar.update(dino_feats.shape[0])
        partial.save(rels[cat][0], dino_out, key)
        if sd:
            partial.save(rels[cat][1], sd_out, key)
    bar.close()
    workers.wait_all()

    info = {
        "size": params.dino_size,
        "grid": dino.grid,
        "dino_dim": dino.dim,
        "sd_dims": [sd.dims[level] for level in SD_LEVELS] if sd else [],
        "sd": bool(sd),
        "dtype": params.dtype,
        "categories": categories,
    }
    if workers.leader:
        partial.publish(
            [f"{sub}/{cat}.safetensors" for sub in subdirs for cat in categories],
            {"info.json": info},
            {rel: keys[cat] for cat in categories for rel in rels[cat]},
        )
    return info
