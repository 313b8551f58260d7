"""Time the synthetic dataset generation for a preset's `datasets.synthetic` params.

    python bench/synthetic.py [--params params.yaml]

Prints wall and CPU seconds for `diysc.datasets.synthetic.generator.generate` into a temporary
directory.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click

from diysc.config.load import load_params
from diysc.datasets.synthetic.generator import generate


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
def main(params_path: str) -> None:
    synthetic = load_params(params_path).datasets["synthetic"]
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.perf_counter(), time.process_time()
        generate(Path(tmp) / "dataset", synthetic)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    images = len(synthetic.categories) * synthetic.images_per_category
    click.echo(
        f"synthetic dataset: {images} images of {synthetic.image_size} px, "
        f"{wall:.1f} s wall, {cpu:.1f} s CPU ({wall / images * 1000:.0f} ms/image)"
    )


if __name__ == "__main__":
    main()
