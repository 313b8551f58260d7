"""Pseudo-label generation speed: diysc's chain propagation side by side with a literal restatement
of the released code's (`bench/reference_chain.py`), timed in the same run on the same features;
then the whole generation of one category (`diysc.pseudo.labels.generate`, features read from fp16
shards through a real `FeatureStore`) per chain, and the projected paper run.

Features are a smooth random field over object coordinates (so nearest neighbours mostly land
near the true match and the relaxed cycle check keeps a realistic share), on an elliptic object of
`--min-candidates`…`--max-candidates` patches per image, slightly rotated from image to image.

    python bench/pseudo_labels.py [--channels 3968,768 --chains 4 --repeats 2 --device cpu]
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch

from diysc import runtime
from diysc.data.spair import SPAIR_CATEGORIES, SPAIR_IMAGES
from diysc.features import FeatureStore
from diysc.io import save_shard
from diysc.paper import FULL_METHOD
from diysc.pseudo.chain import aligned_lists, propagate
from diysc.pseudo.labels import DIAGNOSTIC_PAIRS, CategoryImages, Settings, generate
from diysc.pseudo.sampling import tuples_to_sample

try:
    from reference_chain import reference_chain
except ImportError:  # imported as a module (bench.pseudo_labels)
    from bench.reference_chain import reference_chain

# The trn and val splits each read a part of SPair-71k's images once.
PAPER = {
    "categories": len(SPAIR_CATEGORIES),
    "pairs": 30_000,
    "val_pairs": 300,
    "k": 4,
    "images": SPAIR_IMAGES,
}
GRID, SIZE, R_MAX = 60, 840, 2
SD_LEVELS = {"s3": (640, 60), "s4": (1280, 30), "s5": (1280, 15)}


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    synchronise(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronise(device)
    return (time.perf_counter() - start) / repeats


def interleaved(fns: list, device: torch.device, repeats: int) -> list[float]:
    """Median seconds of each function, run in turns so that load from other jobs on a shared
    machine hits them alike."""
    times = [[] for _ in fns]
    for fn in fns:
        fn()  # warm-up
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            synchronise(device)
            start = time.perf_counter()
            fn()
            synchronise(device)
            out.append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


class Scene:
    """Images of one object: an ellipse on the grid, object coordinates rotated per image, and a
    random Fourier field over those coordinates as features (plus independent noise)."""

    def __init__(self, gen: torch.Generator, grid: int, counts: list[int], noise: float = 0.8):
        self.grid, self.noise, self.gen = grid, noise, gen
        self.images = []
        for i, count in enumerate(counts):
            aspect = 0.75 + 0.5 * torch.rand((), generator=gen).item()
            a, b = math.sqrt(count / math.pi * aspect), math.sqrt(count / math.pi / aspect)
            margin_x, margin_y = min(a, grid / 2), min(b, grid / 2)
            cx = margin_x + (grid - 2 * margin_x) * torch.rand((), generator=gen).item()
            cy = margin_y + (grid - 2 * margin_y) * torch.rand((), generator=gen).item()
            self.images.append((cx, cy, a, b, 0.2 * i))

    def object_coords(self, i: int, colrow: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """(P, 2) grid (col, row) at `scale` × the full grid's resolution → object coordinates."""
        cx, cy, a, b, angle = self.images[i]
        x = ((colrow[:, 0] + 0.5) / scale - 0.5 - cx) / a
        y = ((colrow[:, 1] + 0.5) / scale - 0.5 - cy) / b
        c, s = math.cos(angle), math.sin(angle)
        return torch.stack([c * x - s * y, s * x + c * y], dim=-1)

    def candidates(self, i: int) -> torch.Tensor:
        u = self.object_coords(i, grid_colrow(self.grid))
        cx, cy, a, b, _ = self.images[i]
        return (u * u).sum(-1) <= 1.0

    def field(self, i: int, channels: int, side: int, seed: int) -> torch.Tensor:
        """(side², channels) raw features of image i on a side×side grid."""
        gen = torch.Generator().manual_seed(seed)
        freq = torch.randn(channels, 2, generator=gen) * 3.0
        phase = torch.rand(channels, generator=gen) * 2 * math.pi
        u = self.object_coords(i, grid_colrow(side), side / self.grid)
        clean = torch.cos(u @ freq.T + phase)
        # Noise grows with √C so that a chain keeps a similar share (~40–60 %) at every width.
        noise = self.noise * math.sqrt(channels / 768)
        return clean + noise * torch.randn(clean.shape, generator=self.gen)


def grid_colrow(side: int) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=-1).float()


def scenes(chains: int, k: int, channels: int, lo: int, hi: int, seed: int = 0):
    """(chains, K, N, C) unit-norm features and (chains, K, N) candidate masks."""
    gen = torch.Generator().manual_seed(seed)
    feats, cands = [], []
    for c in range(chains):
        counts = torch.randint(lo, hi + 1, (k,), generator=gen).tolist()
        scene = Scene(gen, GRID, counts)
        feats.append(torch.stack([scene.field(i, channels, GRID, seed=1000 + c) for i in range(k)]))
        cands.append(torch.stack([scene.candidates(i) for i in range(k)]))
    feats = torch.nn.functional.normalize(torch.stack(feats), dim=-1)
    return feats, torch.stack(cands)


def side_by_side(channels: int, chains: int, k: int, lo: int, hi: int, repeats: int, device):
    feats, cands = scenes(chains, k, channels, lo, hi)
    feats, cands = feats.to(device), cands.to(device)
    candidate_lists = [[cands[c, i].nonzero().squeeze(1) for i in range(k)] for c in range(chains)]
    stride = SIZE / GRID

    def ours():
        return propagate(feats, cands, "relaxed", GRID, R_MAX)

    def reference():
        return [
            reference_chain(feats[c], candidate_lists[c], GRID, stride, R_MAX)
            for c in range(chains)
        ]

    ours_s, ref_s = (t / chains for t in interleaved([ours, reference], device, repeats))
    positions, alive = ours()
    ref_lists = reference()
    same = all(
        torch.equal(aligned_lists(positions[c], alive[c]), torch.stack(ref_lists[c]))
        for c in range(chains)
    )
    candidates = cands.sum(-1).float().mean().item()
    kept = (alive.sum(-1) / cands[:, 0].sum(-1)).mean().item()
    return ours_s, ref_s, same, candidates, kept


def write_store(root: Path, images: int, lo: int, hi: int) -> tuple[FeatureStore, list]:
    """An SD+DINO `FeatureStore` (fp16 shards, paper shapes) of one scene, and its candidates."""
    gen = torch.Generator().manual_seed(1)
    counts = torch.randint(lo, hi + 1, (images,), generator=gen).tolist()
    scene = Scene(gen, GRID, counts)
    names = [f"img{i}" for i in range(images)]
    dino = {n: scene.field(i, 768, GRID, seed=7) for i, n in enumerate(names)}
    save_shard(
        root / "dino" / "bench.safetensors",
        {n: f.T.reshape(768, GRID, GRID).half() for n, f in dino.items()},
    )
    sd = {}
    for i, n in enumerate(names):
        for j, (level, (c, side)) in enumerate(SD_LEVELS.items()):
            sd[f"{n}.{level}"] = scene.field(i, c, side, seed=8 + j).T.reshape(c, side, side)
    save_shard(root / "sd" / "bench.safetensors", {key: v.half() for key, v in sd.items()})
    info = {
        "size": SIZE,
        "grid": GRID,
        "dino_dim": 768,
        "sd_dims": [c for c, _ in SD_LEVELS.values()],
        "sd": True,
        "dtype": "float16",
        "categories": ["bench"],
    }
    (root / "info.json").write_text(json.dumps(info))
    return FeatureStore(root), [scene.candidates(i) for i in range(images)]


def whole_generation(images: int, batch: int, lo: int, hi: int, device) -> tuple[float, float, int]:
    """`generate` on one category read from fp16 shards (3968 ch, sphere filter on): seconds per
    chain net of the first read of each image, and seconds per image read (fp16 → normalised
    float32 similarity descriptors)."""
    with tempfile.TemporaryDirectory(prefix="diysc-bench-") as tmp:
        store, cands = write_store(Path(tmp), images, lo, hi)
        names = [f"img{i}" for i in range(images)]
        load_s = timed(lambda: [store.similarity("bench", n) for n in names], device, 1) / images
        gen = torch.Generator().manual_seed(2)
        spheres = {
            n: torch.nn.functional.normalize(torch.randn(GRID * GRID, 3, generator=gen), dim=1)
            for n in names
        }
        category = CategoryImages(
            category="bench",
            stems=names,
            azimuths=[i % 8 for i in range(images)],
            features=lambda stem: store.similarity("bench", stem),
            candidates=lambda stem: cands[names.index(stem)],
            sphere=spheres.__getitem__,
        )
        cap = batch * 12 // 2  # `generate` draws twice the tuples needed: one batch of them
        start = time.perf_counter()
        _, report = generate(
            category,
            Settings(**FULL_METHOD),
            cap,
            GRID,
            SIZE,
            np.random.default_rng(0),
            device,
            batch,
        )
        synchronise(torch.device(device))
        elapsed = time.perf_counter() - start
    return (elapsed - images * load_s) / report.tuples, load_s, report.tuples


def paper_links() -> tuple[int, int]:
    """Chains of the paper run (enough tuples for every category's trn and val caps) and the
    quality report's extra direct matches."""
    pairs_per_tuple = PAPER["k"] * (PAPER["k"] - 1)
    tuples = PAPER["categories"] * sum(
        tuples_to_sample(cap, pairs_per_tuple) // 2 for cap in (PAPER["pairs"], PAPER["val_pairs"])
    )
    direct = PAPER["categories"] * sum(
        min(DIAGNOSTIC_PAIRS, c) for c in (PAPER["pairs"], PAPER["val_pairs"])
    )
    return tuples, direct


@click.command()
@click.option("--channels", default="3968,768", show_default=True, help="Widths, comma-separated.")
@click.option("--chains", default=4, show_default=True, help="Chains per batch.")
@click.option("--k", "k", default=4, show_default=True, help="Chain length.")
@click.option("--min-candidates", "lo", default=300, show_default=True)
@click.option("--max-candidates", "hi", default=2000, show_default=True)
@click.option("--repeats", default=5, show_default=True)
@click.option("--stage/--no-stage", default=True, help="Also time `generate` on fp16 shards.")
@click.option("--device", default=None, help="Default: DIYSC_DEVICE, else CUDA when present.")
@click.option("--threads", type=int, default=None, help="CPU threads (default: torch's).")
def main(channels, chains, k, lo, hi, repeats, stage, device, threads):
    device = torch.device(device) if device else runtime.device()
    if threads:
        torch.set_num_threads(threads)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    click.echo(
        f"device {name}, torch {torch.__version__}; grid {GRID}, K={k}, {chains} chains, "
        f"{lo}-{hi} candidates per image, relaxed cycle (r_max {R_MAX})"
    )
    tuples, direct = paper_links()
    for width in (int(c) for c in channels.split(",")):
        ours_s, ref_s, same, cand, alive = side_by_side(width, chains, k, lo, hi, repeats, device)
        click.echo(
            f"{width:5d} ch: diysc {ours_s * 1e3:7.1f} ms/chain | reference {ref_s * 1e3:7.1f} "
            f"ms/chain | ratio {ref_s / ours_s:4.2f}x | identical lists: {same} "
            f"({cand:.0f} candidates per image, chains keep {alive:.0%} of I0's)"
        )
    if stage:
        per_chain, load_s, n = whole_generation(8, chains, lo, hi, device)
        # A direct match of the quality report costs about one link, a third of a chain; every
        # image is read at least once (more often where a split has more images than the cache).
        total = (tuples + direct / 3) * per_chain + PAPER["images"] * load_s
        click.echo(
            f"generate (3968 ch, sphere filter, {n} chains): {per_chain:.2f} s/chain besides "
            f"reading features; one image's features from the fp16 shards: {load_s:.2f} s"
        )
        click.echo(
            f"projected paper run: {tuples} chains + {direct} direct matches + "
            f"{PAPER['images']} image reads = {total / 3600:.1f} h on this device"
        )


if __name__ == "__main__":
    main()
