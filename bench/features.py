"""Feature-extraction throughput, with the projected time for all 1,800 SPair-71k images.

Cases (randomly initialised weights: the geometry and the cost are the paper's, the values are not):

- `tiny`:  the tiny preset end to end (`extract_features`: JPEG decoding, resize-pad, tiny DINOv2 at
  224 px + tiny SD at 256 px, fp16 shards) on a generated tree of 24 images;
- `vitb14`: a ViT-B/14-sized DINOv2 (768 wide, 12 layers, 12 heads) at 840 px → 768×60×60;
- `sd15`:  Stable Diffusion 1.5-sized VAE + UNet + CLIP-L text encoder at 960 px → s3/s4/s5;
  also checks the paper's shapes (640 @ 60, 1280 @ 30, 1280 @ 15).

    python bench/features.py [--cases tiny,vitb14,sd15] [--device cpu|cuda] [--images 3]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import click
import torch


def _time(fn, images: int, batch: int, device: torch.device) -> float:
    """Seconds per image for `images` images after one warm-up batch."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(max(1, images // batch)):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (max(1, images // batch) * batch)


def bench_tiny(device: torch.device, images: int) -> dict:
    from diysc.config.schema import FeaturesParams
    from diysc.data.spair import SPairDataset
    from diysc.feature_extraction import extract_features
    from tests.test_features import make_spair_tree

    params = FeaturesParams(dino_model="tiny", dino_size=224, sd=True, sd_model="tiny", sd_size=256)
    with tempfile.TemporaryDirectory() as tmp:
        colours = [(40 * i % 255, 90, 200 - 7 * i) for i in range(24)]
        tree = [
            ("car" if i < 12 else "chair", f"im{i:02d}", (256, 192), c)
            for i, c in enumerate(colours)
        ]
        dataset = SPairDataset(make_spair_tree(Path(tmp) / "dataset", tree))
        extract_features(dataset, params, Path(tmp) / "warm", device, 4, progress=False)  # builds
        start = time.perf_counter()
        extract_features(dataset, params, Path(tmp) / "features", device, 4, progress=False)
        per_image = (time.perf_counter() - start) / len(tree)
    return {"case": "tiny (DINO 224 + SD 256, end to end)", "s_per_image": per_image}


def bench_vitb14(device: torch.device, images: int) -> dict:
    from transformers import Dinov2Config, Dinov2Model

    from diysc.backbones.dino import DinoExtractor

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=14, image_size=518
    )
    with tempfile.TemporaryDirectory() as tmp:
        Dinov2Model(config).save_pretrained(tmp)
        extractor = DinoExtractor(tmp, 840, device)
    batch = torch.rand(1, 3, 840, 840)
    out = extractor(batch)
    assert out.shape == (1, 768, 60, 60), out.shape
    per_image = _time(lambda: extractor(batch), images, 1, device)
    return {"case": "DINOv2 ViT-B/14 at 840 px (768x60x60)", "s_per_image": per_image}


def bench_sd15(device: torch.device, images: int) -> dict:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from diysc.backbones import tiny
    from diysc.backbones.sd import SDExtractor

    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768)  # the defaults are SD-1.x's UNet
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )  # fmt: skip
    tokenizer = CLIPTokenizer.from_pretrained(tiny.tiny_sd(), subfolder="tokenizer")
    text = CLIPTextModel(CLIPTextConfig(  # CLIP ViT-L/14's text tower
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))  # fmt: skip
    scheduler = DDPMScheduler(**tiny.SD_SCHEDULER_CONFIG)
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    extractor = SDExtractor(
        (unet.eval(), vae.eval(), text.eval(), tokenizer, scheduler), 960, 50, 42, device
    )
    batch = torch.rand(1, 3, 960, 960)
    out = extractor(batch)
    shapes = {k: tuple(v.shape[1:]) for k, v in out.items()}
    assert shapes == {"s3": (640, 60, 60), "s4": (1280, 30, 30), "s5": (1280, 15, 15)}, shapes
    per_image = _time(lambda: extractor(batch), images, 1, device)
    return {
        "case": f"SD-1.5 ({params:.0f}M UNet) at 960 px (s3/s4/s5 {shapes})",
        "s_per_image": per_image,
    }


CASES = {"tiny": bench_tiny, "vitb14": bench_vitb14, "sd15": bench_sd15}


@click.command()
@click.option(
    "--cases",
    default="tiny,vitb14",
    show_default=True,
    help=f"Comma-separated subset of {','.join(CASES)}.",
)
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--images", default=3, show_default=True, help="Timed images per case (after warm-up)."
)
def main(cases: str, device: str, images: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.test_features
    from diysc.data.spair import SPAIR_IMAGES

    dev = torch.device(device)
    name = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads"
    )
    click.echo(f"device: {name}")
    for case in cases.split(","):
        result = CASES[case](dev, images)
        s = result["s_per_image"]
        projected = s * SPAIR_IMAGES / 60
        click.echo(
            f"{result['case']}: {1 / s:.3g} images/s ({s:.3g} s/image); "
            f"{SPAIR_IMAGES} SPair-71k images: {projected:.1f} min"
        )
        click.echo(json.dumps({**result, "device": name, "spair_minutes": projected}))


if __name__ == "__main__":
    main()
