"""Throughput of pseudo-label generation: chain tuples/s and the NN step's GFLOP/s next to a
plain `torch.matmul` of the same shape, timed in the same run; plus the projected time of the
paper's run (18 categories × 30,000 pairs, 3968 channels, 60×60 grid).

    python bench/pseudo_labels.py [--grid 60 --channels 3968 --batch 2 --device cuda]
"""

from __future__ import annotations

import time

import click
import torch

from diysc import runtime
from diysc.pseudo.chain import propagate
from diysc.pseudo.labels import DIAGNOSTIC_PAIRS
from diysc.pseudo.matching import nearest_neighbours

PAPER = {"categories": 18, "pairs": 30_000, "val_pairs": 300, "grid": 60, "channels": 3968, "k": 4}


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


@click.command()
@click.option("--grid", default=60, show_default=True)
@click.option("--channels", default=3968, show_default=True)
@click.option("--batch", default=2, show_default=True, help="Tuples per batch.")
@click.option("--k", "k", default=4, show_default=True, help="Chain length.")
@click.option("--repeats", default=3, show_default=True)
@click.option("--device", default=None, help="Default: DIYSC_DEVICE, else CUDA when present.")
def main(grid, channels, batch, k, repeats, device):
    device = torch.device(device) if device else runtime.device()
    n = grid * grid
    gen = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(batch, k, n, channels, generator=gen), dim=-1)
    cands = torch.rand(batch, k, n, generator=gen) < 0.5
    feats, cands = feats.to(device), cands.to(device)

    chain_s = timed(lambda: propagate(feats, cands, "relaxed", grid, 2), device, repeats)
    tuples_per_s = batch / chain_s

    a, b = feats[:, 0].contiguous(), feats[:, 1].contiguous()
    bt = b.transpose(1, 2)
    flops = 2 * batch * n * n * channels
    nn_s = timed(lambda: nearest_neighbours(a, b, cands[:, 0], cands[:, 1]), device, repeats)
    mm_s = timed(lambda: torch.matmul(a, bt), device, repeats)
    nn_gflops, mm_gflops = flops / nn_s / 1e9, flops / mm_s / 1e9

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    click.echo(
        f"device {name}; grid {grid} ({n} patches), {channels} channels, batch {batch}, K={k}"
    )
    click.echo(
        f"chains: {tuples_per_s:.3f} tuples/s ({chain_s / batch * 1e3:.1f} ms per tuple, "
        f"{k - 1} links)"
    )
    click.echo(
        f"NN step: {nn_gflops:.1f} GFLOP/s; plain torch.matmul of the same shape: "
        f"{mm_gflops:.1f} GFLOP/s; ratio {nn_gflops / mm_gflops:.0%}"
    )

    # Projection for the paper: tuples needed to emit the pairs (12 per tuple), the links they
    # cost, plus the quality report's direct matches; link time scaled by FLOPs to the paper shape.
    pairs_per_tuple = PAPER["k"] * (PAPER["k"] - 1)
    tuples = PAPER["categories"] * -(-(PAPER["pairs"] + PAPER["val_pairs"]) // pairs_per_tuple)
    links = tuples * (PAPER["k"] - 1) + PAPER["categories"] * (
        DIAGNOSTIC_PAIRS + PAPER["val_pairs"]
    )
    link_s = chain_s / (batch * (k - 1))
    scale = (PAPER["grid"] ** 4 * PAPER["channels"]) / (grid**4 * channels)
    total = links * link_s * scale
    click.echo(
        f"projected paper run: {tuples} tuples + quality matches = {links} links, "
        f"{total / 3600:.1f} h on this device (matching only; feature loading excluded)"
    )


if __name__ == "__main__":
    main()
