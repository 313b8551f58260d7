"""Evaluation throughput on paper-sized features, and the projected time for SPair-71k's test split.

The real code path on a real feature cache: a `FeatureStore` of N synthetic images with the paper's
shapes (DINO 768 × 60×60, SD s3/s4/s5 = 640/1280/1280 at 60/30/15, fp16), the zero-shot describer
(3968 channels, parts normalised) and the adapter describer (SD+DINO adapter, 768 channels out),
then keypoint transfer with the 15×15 window soft-argmax. An evaluation describes each image once
and then transfers every pair's keypoints, so the projection is

    images × (describe time per image) + pairs × (transfer time per pair).

    python bench/evaluate.py [--images 6] [--keypoints 9] [--device cpu|cuda]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import torch

from diysc.adapter.model import Adapter
from diysc.data.spair import SPAIR_IMAGES, SPAIR_PAIR_COUNTS
from diysc.evaluation.predict import transfer
from diysc.evaluation.run import adapter_describer, zero_shot_describer
from diysc.features import FeatureStore
from diysc.io import save_shard

TEST_PAIRS = SPAIR_PAIR_COUNTS["test"]
TEST_IMAGES = SPAIR_IMAGES  # upper bound: the test split reads some of them
GRID, SIZE, DINO, SD = 60, 840, 768, {"s3": (640, 60), "s4": (1280, 30), "s5": (1280, 15)}


def write_store(root: Path, images: int) -> FeatureStore:
    g = torch.Generator().manual_seed(0)
    names = [f"img{i}" for i in range(images)]
    save_shard(
        root / "dino" / "bench.safetensors",
        {n: torch.randn(DINO, GRID, GRID, generator=g).half() for n in names},
    )
    save_shard(
        root / "sd" / "bench.safetensors",
        {
            f"{n}.{lvl}": torch.randn(c, s, s, generator=g).half()
            for n in names
            for lvl, (c, s) in SD.items()
        },
    )
    info = {
        "size": SIZE,
        "grid": GRID,
        "dino_dim": DINO,
        "sd_dims": [c for c, _ in SD.values()],
        "sd": True,
        "dtype": "float16",
        "categories": ["bench"],
    }
    (root / "info.json").write_text(json.dumps(info))
    return FeatureStore(root)


def timed(fn, device: torch.device, repeat: int) -> tuple[float, object]:
    out = fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat, out


@click.command()
@click.option("--images", default=6, show_default=True, help="Images in the synthetic cache.")
@click.option("--keypoints", default=9, show_default=True, help="Keypoints per pair.")
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
def main(images: int, keypoints: int, device: str) -> None:
    device = torch.device(device)
    torch.manual_seed(0)
    adapter = Adapter([640, 1280, 1280, 768], channels=768)
    src_xy = torch.rand(keypoints, 2, device=device) * SIZE
    click.echo(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory(prefix="diysc-bench-") as tmp:
        store = write_store(Path(tmp), images)
        for name, describe in (
            ("zero-shot (3968 ch)", zero_shot_describer(store, device)),
            ("adapter (768 ch)", adapter_describer(store, adapter, device)),
        ):
            names = [f"img{i}" for i in range(images)]
            per_image, descs = timed(
                lambda d=describe, n=names: [d("bench", s) for s in n], device, repeat=2
            )
            per_image /= images
            per_pair, _ = timed(
                lambda d=descs: [
                    transfer(
                        d[i],
                        d[(i + 1) % len(d)],
                        src_xy,
                        SIZE,
                        GRID,
                        soft=True,
                        window=15,
                        beta=0.02,
                    )
                    for i in range(len(d))
                ],
                device,
                repeat=5,
            )
            per_pair /= images
            total = TEST_IMAGES * per_image + TEST_PAIRS * per_pair
            click.echo(
                f"{name:<20} describe {1 / per_image:8.1f} images/s | transfer "
                f"{1 / per_pair:8.1f} pairs/s ({keypoints} kps) | overall "
                f"{TEST_PAIRS / total:7.1f} pairs/s | full test split "
                f"({TEST_PAIRS} pairs, ≤ {TEST_IMAGES} images): {total / 60:6.1f} min"
            )


if __name__ == "__main__":
    main()
