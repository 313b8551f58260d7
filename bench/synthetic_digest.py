"""Digest of the synthetic dataset, per file and overall, for checking that it is platform-independent.

    python bench/synthetic_digest.py [--images-per-category 32] [--image-size 256] [--out DIR]

Prints one `sha256  size  path` line per file and a final `dataset <sha256> <bytes>` line. Run it
under different CPU dispatch settings (e.g. `NPY_DISABLE_CPU_FEATURES`, `OPENBLAS_CORETYPE`,
`JSIMD_FORCENONE`) or on different machines and compare the output (docs/reproducibility.md).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from diysc.config.schema import SyntheticParams
from diysc.datasets.synthetic.generator import dataset_digest, generate


@click.command()
@click.option("--images-per-category", default=32, show_default=True)
@click.option("--image-size", default=256, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Keep the tree here.")
def main(images_per_category: int, image_size: int, out: Path | None) -> None:
    params = SyntheticParams(images_per_category=images_per_category, image_size=image_size)
    with tempfile.TemporaryDirectory() as tmp:
        root = out or Path(tmp) / "dataset"
        generate(root, params)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        total = 0
        for path in files:
            total += path.stat().st_size
            click.echo(f"{dataset_digest(path)}  {path.stat().st_size}  {path.relative_to(root)}")
        click.echo(f"dataset {dataset_digest(root)} {total}")


if __name__ == "__main__":
    main()
