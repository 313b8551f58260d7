"""Training the spherical mapper on cached DINO features (SphericalMaps' recipe).

One epoch visits every training image `replication` times in a seeded random order. Each batch:
sphere points on the foreground (background zeroed by the mask), then the weighted sum of the
prototype reconstruction, relative-viewpoint, triplet-distance and triplet-orientation losses;
Adam on the mapper and the prototype decoder. After every epoch but the last, the full training
state (weights, optimiser, random generator, loss history) is written to `<checkpoint_dir>/last.pt`,
so an interrupted run resumes where it stopped and ends with the same weights as an uninterrupted
one. Only the same unfinished run resumes (`diysc.resume`): the run key covers the params, the
seed, the masks, azimuths and categories trained on, the content of the features and the code.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from diysc.azimuth import AZIMUTH_BINS
from diysc.config.schema import SphereParams
from diysc.data.spair import DatasetError, SPairDataset
from diysc.features import FeatureStore
from diysc.formats.masks import MaskStore
from diysc.io import save_torch, write_text
from diysc.provenance import code_digest, content_digest, run_key
from diysc.resume import finish, load_resumable, save_resumable
from diysc.sphere.losses import (
    patch_coords,
    prototype_loss,
    sample_triplets,
    triplet_distance_loss,
    triplet_orientation_loss,
    viewpoint_loss,
)
from diysc.sphere.model import PrototypeDecoder, SphereMapper, init_mapper

LOSS_NAMES = ("prototype", "viewpoint", "distance", "orientation")


@dataclass
class SphereTrainingSet:
    """The training images: features loaded on demand, masks/azimuths/categories in memory."""

    load: Callable[[int], torch.Tensor]  # image index → (N, D) float32 tokens, N = grid²
    fg: torch.Tensor  # (M, N) bool, foreground patches
    azimuth: torch.Tensor  # (M,) long, 0..7
    category: torch.Tensor  # (M,) long, index into the dataset's categories
    n_categories: int
    grid: int
    feature_dim: int
    names: Sequence[str]  # "<cat>/<stem>"
    features_digest: str  # content of the features the loader reads (part of the run key)

    def __len__(self) -> int:
        return len(self.names)

    def batch(self, index: torch.Tensor):
        """(features (B, N, D), fg (B, N), azimuth (B,), category (B,)) for image indices."""
        features = torch.stack([self.load(int(i)) for i in index])
        return features, self.fg[index], self.azimuth[index], self.category[index]

    @classmethod
    def from_tensors(
        cls,
        features: torch.Tensor,
        fg: torch.Tensor,
        azimuth: torch.Tensor,
        category: torch.Tensor,
        n_categories: int,
    ) -> SphereTrainingSet:
        """From in-memory (M, N, D) features (N must be a square grid)."""
        m, n, d = features.shape
        grid = round(n**0.5)
        if grid * grid != n:
            raise ValueError(f"{n} tokens per image do not form a square grid")
        digest = hashlib.sha256(features.detach().float().cpu().numpy().tobytes()).hexdigest()
        return cls(
            features.__getitem__,
            fg.bool(),
            azimuth.long(),
            category.long(),
            n_categories,
            grid,
            d,
            [f"image/{i}" for i in range(m)],
            digest,
        )


def load_training_set(
    dataset_root: str | Path, features_root: str | Path, masks_root: str | Path, split: str = "trn"
) -> SphereTrainingSet:
    """The `split` images of every category, with their masks on the feature grid."""
    dataset = SPairDataset(dataset_root)
    features, masks = FeatureStore(features_root), MaskStore(masks_root)
    size, grid = features.size, features.grid
    items, fg, azimuth, category = [], [], [], []
    for c, cat in enumerate(dataset.categories):
        for stem in dataset.split_images(split, cat):
            record = dataset.image(cat, stem)
            if record.azimuth_id is None:
                raise DatasetError(
                    f"{dataset.annotation_path(cat, stem)}: no 'azimuth_id', which "
                    "the viewpoint loss of the spherical mapper needs"
                )
            items.append((cat, stem))
            fg.append(torch.as_tensor(masks.on_grid(cat, stem, size, grid)).reshape(-1))
            azimuth.append(record.azimuth_id)
            category.append(c)
    if not items:
        raise ValueError(f"{dataset_root}: no '{split}' images to train the spherical mapper on")

    def load(i: int) -> torch.Tensor:
        tokens = features.dino(*items[i])  # (D, grid, grid)
        return tokens.reshape(tokens.shape[0], -1).T.float()

    return SphereTrainingSet(
        load,
        torch.stack(fg).bool(),
        torch.tensor(azimuth),
        torch.tensor(category),
        len(dataset.categories),
        grid,
        features.dino_dim,
        [f"{c}/{s}" for c, s in items],
        content_digest([Path(features_root) / "info.json", Path(features_root) / "dino"]),
    )


@dataclass
class TrainResult:
    mapper: SphereMapper
    decoder: PrototypeDecoder
    history: list[dict[str, float]]  # one record per epoch: epoch, loss and each weighted term
    resumed_from: int = 0  # the epoch this call started at (0: trained from scratch)


def batch_losses(
    mapper: SphereMapper,
    decoder: PrototypeDecoder,
    features: torch.Tensor,
    fg: torch.Tensor,
    azimuth: torch.Tensor,
    category: torch.Tensor,
    coords: torch.Tensor,
    params: SphereParams,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The four (unweighted) losses of one batch."""
    sphere = mapper(features) * fg.unsqueeze(-1)  # background points are zero vectors
    image, patches = sample_triplets(fg, params.triplets, generator)
    return {
        "prototype": prototype_loss(features, decoder(sphere, category), fg),
        "viewpoint": viewpoint_loss(sphere, azimuth, AZIMUTH_BINS),
        "distance": triplet_distance_loss(sphere, coords, image, patches, params.distance_margin),
        "orientation": triplet_orientation_loss(
            sphere, coords, image, patches, params.orientation_threshold
        ),
    }


def weights(params: SphereParams) -> dict[str, float]:
    return {
        "prototype": params.w_prototype,
        "viewpoint": params.w_viewpoint,
        "distance": params.w_distance,
        "orientation": params.w_orientation,
    }


def train_sphere(
    data: SphereTrainingSet,
    params: SphereParams,
    seed: int,
    checkpoint_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train (or resume training) the mapper; `on_epoch` sees each epoch's record when it ends."""
    device = torch.device(device)
    mapper = init_mapper(data.feature_dim, params.hidden, params.heads, seed).to(device)
    decoder = PrototypeDecoder(data.feature_dim, data.n_categories).to(device)
    optimiser = torch.optim.Adam([*mapper.parameters(), *decoder.parameters()], lr=params.lr)
    generator = torch.Generator().manual_seed(seed)  # epoch order and triplets
    coords = patch_coords(data.grid, device)
    loss_weights = weights(params)
    history: list[dict[str, float]] = []

    key = run_identity(data, params, seed)
    state = load_resumable(checkpoint_dir, key) if checkpoint_dir else None
    if state is not None:
        mapper.load_state_dict(state["mapper"])
        decoder.load_state_dict(state["decoder"])
        optimiser.load_state_dict(state["optimiser"])
        generator.set_state(state["generator"])
        history = list(state["history"])
    resumed_from = len(history)

    epochs = tqdm(
        range(len(history), params.epochs),
        desc="sphere epochs",
        disable=not progress,
        initial=len(history),
        total=params.epochs,
    )
    for epoch in epochs:
        mapper.train()
        decoder.train()
        order = torch.randperm(len(data) * params.replication, generator=generator) % len(data)
        totals = dict.fromkeys(("loss", *LOSS_NAMES), 0.0)
        batches = order.split(params.batch_size)
        for index in batches:
            features, fg, azimuth, category = (t.to(device) for t in data.batch(index))
            losses = batch_losses(
                mapper, decoder, features, fg, azimuth, category, coords, params, generator
            )
            loss = sum(loss_weights[k] * v for k, v in losses.items())
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            totals["loss"] += loss.item()
            for k, v in losses.items():
                totals[k] += v.item()
        record = {"epoch": epoch + 1, **{k: v / len(batches) for k, v in totals.items()}}
        history.append(record)
        epochs.set_postfix(loss=f"{record['loss']:.4f}")
        if checkpoint_dir and epoch + 1 < params.epochs:
            state = {
                "mapper": mapper.state_dict(),
                "decoder": decoder.state_dict(),
                "optimiser": optimiser.state_dict(),
                "generator": generator.get_state(),
                "history": history,
            }
            save_resumable(checkpoint_dir, key, state)
        if on_epoch is not None:
            on_epoch(record)
    if checkpoint_dir:
        finish(checkpoint_dir)  # a finished run is never resumed
    return TrainResult(mapper.eval(), decoder.eval(), history, resumed_from)


def save_mapper(mapper: SphereMapper, path: str | Path) -> None:
    """The plain `SphereMapper` state dict (CPU tensors), written atomically."""
    save_torch(path, {k: v.detach().cpu().contiguous() for k, v in mapper.state_dict().items()})


def write_history(path: str | Path, history: Sequence[dict[str, float]]) -> None:
    """The loss history as CSV (a DVC plot): epoch, total loss and each unweighted term."""
    columns = ("epoch", "loss", *LOSS_NAMES)
    rows = [",".join(columns)]
    rows += [
        ",".join(f"{r[c]:g}" if c != "epoch" else str(int(r[c])) for c in columns) for r in history
    ]
    write_text(path, "\n".join(rows) + "\n")


def run_identity(data: SphereTrainingSet, params: SphereParams, seed: int) -> str:
    """The key of a training run: what a checkpoint must have been written by to be resumed."""
    h = hashlib.sha256()
    for tensor in (data.fg, data.azimuth, data.category):
        h.update(tensor.cpu().numpy().tobytes())
    return run_key(
        {
            "stage": "sphere_train",
            "params": dataclasses.asdict(params),
            "seed": seed,
            "images": list(data.names),
            "labels": h.hexdigest(),
            "features": data.features_digest,
            "grid": data.grid,
            "categories": data.n_categories,
            "code": code_digest(__name__),
        }
    )
