"""Adapter training throughput and peak memory, with the projected time of the paper's 200k steps.

The real training loop (`diysc.adapter.train.train_adapter`: feature bank, dropout, adapter forward
and backward, both losses, AdamW + OneCycle) on random features of a given size:

- `tiny`:  the tiny preset's shapes: SD+DINO groups [32, 64, 64, 64] (tiny backbones) on a 16×16 grid,
  128 channels;
- `paper`: SD+DINO at 840 px: groups [640, 1280, 1280, 768] (3968 channels) on 60×60, 768 channels;
- `paper-dino`: DINO-only at 840 px: 768 channels in, 768 out, 60×60.

Batch 1 pair, 50 points per pair, as the paper. Each case runs in its own process, so the peak
resident memory (CPU) is that case's; on CUDA the figure is torch's peak allocated memory.

    python bench/train.py [--cases tiny,paper,paper-dino] [--device cpu|cuda] [--steps 5] [--threads N]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time

import click
import torch

PAPER_STEPS = 200_001
CASES = {  # feature dims, grid, channels
    "tiny": ([32, 64, 64, 64], 16, 128),
    "paper": ([640, 1280, 1280, 768], 60, 768),
    "paper-dino": ([768], 60, 768),
}


def measure(case: str, device: str, steps: int, bf16: bool) -> dict:
    from diysc.adapter.data import random_training_data
    from diysc.adapter.train import train_adapter
    from diysc.config.schema import AdapterParams

    dims, grid, channels = CASES[case]
    data = random_training_data(dims, grid, images=4, train_pairs=8, val_pairs=1, max_kps=50)
    warmup = 2
    params = AdapterParams(
        channels=channels,
        steps=warmup + steps,
        val_every=10**6,
        checkpoint_every=10**6,
        val_pairs=1,
    )
    stamps = []

    def on_step(row: dict) -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        train_adapter(data, params, 0, tmp, device=device, bf16=bf16, on_step=on_step)
    seconds = (stamps[-1] - stamps[warmup - 1]) / steps  # steps after the warm-up ones
    peak = (
        torch.cuda.max_memory_allocated()
        if device.startswith("cuda")
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "case": case,
        "device": device,
        "bf16": bf16,
        "threads": torch.get_num_threads(),
        "input_channels": sum(dims),
        "grid": grid,
        "channels": channels,
        "seconds_per_step": seconds,
        "steps_per_s": 1 / seconds,
        "peak_bytes": peak,
        "projected_200k_hours": PAPER_STEPS * seconds / 3600,
    }


@click.command()
@click.option("--cases", default="tiny,paper,paper-dino", show_default=True)
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
@click.option(
    "--steps", default=5, show_default=True, help="Timed steps per case (after 2 warm-up)."
)
@click.option("--bf16", is_flag=True, help="bf16 autocast (CUDA).")
@click.option(
    "--threads", default=0, help="CPU threads (torch.set_num_threads); 0: torch's default."
)
@click.option("--one", hidden=True, default="")
def main(cases: str, device: str, steps: int, bf16: bool, threads: int, one: str) -> None:
    if threads:
        torch.set_num_threads(threads)
    if one:  # child process: one case, JSON on stdout
        print(json.dumps(measure(one, device, steps, bf16)))
        return
    name = (
        torch.cuda.get_device_name(0)
        if device.startswith("cuda")
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    click.echo(f"adapter training on {name}, torch {torch.__version__}, batch 1 pair, 50 points")
    click.echo(
        f"{'case':<11} {'in ch':>6} {'grid':>4} {'out':>4} {'s/step':>8} {'steps/s':>8} "
        f"{'peak MiB':>9} {'200k steps':>11}"
    )
    for case in cases.split(","):
        args = [sys.executable, __file__, "--one", case, "--device", device, "--steps", str(steps)]
        args += ["--threads", str(threads)]
        out = subprocess.run(args + (["--bf16"] if bf16 else []), capture_output=True, text=True)
        if out.returncode != 0:
            raise click.ClickException(f"{case}: {out.stderr.strip()[-2000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        hours = r["projected_200k_hours"]
        span = f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"
        click.echo(
            f"{case:<11} {r['input_channels']:>6} {r['grid']:>4} {r['channels']:>4} "
            f"{r['seconds_per_step']:>8.3f} {r['steps_per_s']:>8.2f} "
            f"{r['peak_bytes'] / 2**20:>9.0f} {span:>11}"
        )


if __name__ == "__main__":
    main()
