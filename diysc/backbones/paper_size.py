"""Randomly initialised backbones at the paper's real sizes, for the smoke preset.

`random-dinov2-base` is DINOv2-B/14 (`facebook/dinov2-base`'s architecture: 768 channels, 12 layers,
12 heads, patch 14) and `random-sd15` is Stable Diffusion 1.5 (the UNet, VAE and CLIP text tower with
SD-1.5's configs: 320/640/1280/1280 UNet channels, cross-attention 768, a 123 M-parameter text tower).
Both are seeded, built once into the cache by `tiny.materialise` and loaded with
`from_pretrained(local_files_only=True)` like downloaded weights, so a run exercises the paper's code,
tensor shapes, memory and time without the weights (or the internet). Weights are stored as float16
(about 2.3 GB in all) and loaded in the dtype the features stage asks for. Their outputs are noise:
nothing computed from them is a result.

The text tower keeps CLIP's 49408-token embedding table; its tokenizer is the offline byte-level one
of the tiny model (`tiny._tiny_clip_tokenizer`): SD features are conditioned on the empty prompt, so
only the start/end tokens are ever looked up.
"""

from __future__ import annotations

from pathlib import Path

from diysc.backbones import tiny

DINO = "random-dinov2-base"
SD = "random-sd15"

# facebook/dinov2-base's config.json (the fields that shape the model).
DINO_CONFIG = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, patch_size=14,
    image_size=518, layerscale_value=1.0, hidden_act="gelu", layer_norm_eps=1e-6,
    use_swiglu_ffn=False, num_channels=3,
)  # fmt: skip

# stable-diffusion-v1-5's unet/, vae/ and text_encoder/ config.json files.
SD_UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5,
    act_fn="silu", center_input_sample=False, downsample_padding=1, flip_sin_to_cos=True,
    freq_shift=0, mid_block_scale_factor=1,
)  # fmt: skip
SD_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512), norm_num_groups=32, sample_size=512,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    act_fn="silu",
)  # fmt: skip
SD_TEXT_CONFIG = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu", vocab_size=49408,
)  # fmt: skip


def random_dino() -> Path:
    return tiny.materialise(DINO, DINO_CONFIG, _build_dino)


def random_sd() -> Path:
    config = dict(
        unet=SD_UNET_CONFIG,
        vae=SD_VAE_CONFIG,
        text=SD_TEXT_CONFIG,
        scheduler=tiny.SD_SCHEDULER_CONFIG,
    )
    return tiny.materialise(SD, config, _build_sd)


def _build_dino(out: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(**DINO_CONFIG)).half().save_pretrained(out)


def _build_sd(out: Path) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    # One part at a time, each freed after saving: the UNet alone is 3.4 GB in float32.
    UNet2DConditionModel(**SD_UNET_CONFIG).half().save_pretrained(out / "unet")
    AutoencoderKL(**SD_VAE_CONFIG).half().save_pretrained(out / "vae")
    tokenizer = tiny._tiny_clip_tokenizer()
    text = CLIPTextConfig(
        **SD_TEXT_CONFIG, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    CLIPTextModel(text).half().save_pretrained(out / "text_encoder")
    tokenizer.save_pretrained(out / "tokenizer")
    DDPMScheduler(**tiny.SD_SCHEDULER_CONFIG).save_pretrained(out / "scheduler")
