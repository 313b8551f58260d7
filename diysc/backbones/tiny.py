"""Tiny, seeded, randomly initialised backbones for the offline preset and the tests.

Each tiny model is built from a small `transformers` / `diffusers` config, written once with
`save_pretrained` under `runtime.cache_dir()/tiny/<name>-<config hash>/`, and from then on loaded with
`from_pretrained(..., local_files_only=True)`: exactly the code path that real weights take. The
directory name carries a hash of the config, so changing a config here builds a fresh model.

Builders are named in `diysc.backbones.registry` (a tiny CLIP lives with its backbone,
`diysc.backbones.clip`). Layouts mirror the real checkpoints: a DINOv2 directory (`config.json` + weights), a Stable
Diffusion directory with `unet/ vae/ text_encoder/ tokenizer/ scheduler/` subfolders, a SAM
directory with the model and its processor.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch

from diysc import runtime
from diysc.io import atomic_dir

TINY = "tiny"
SEED = 0
_COMPLETE = ".complete"  # written last: a directory without it is an interrupted build

DINO_CONFIG = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, patch_size=14,
    image_size=224,
)  # fmt: skip

# Stable Diffusion 1.5's layout scaled down: four UNet levels (three down-samplings) and an
# 8x VAE, so a 256 px input gives s3 / s4 / s5 on 16 / 8 / 4 grids (60 / 30 / 15 at 960 px).
SD_UNET_CONFIG = dict(
    sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(16, 32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)  # fmt: skip
SD_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
    block_out_channels=(8, 16, 16, 16), norm_num_groups=8, sample_size=256,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)  # fmt: skip
SD_TEXT_CONFIG = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=77, projection_dim=32,
)  # fmt: skip
SD_SCHEDULER_CONFIG = dict(  # SD-1.5's noise schedule
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
)  # fmt: skip

SAM_SIZE = 256  # the tiny SAM's own input side (the real one uses 1024)
SAM_CONFIG = dict(
    vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                       global_attn_indexes=[1], window_size=4, image_size=SAM_SIZE, patch_size=16,
                       output_channels=32, num_pos_feats=16),
    prompt_encoder_config=dict(hidden_size=32, image_size=SAM_SIZE, patch_size=16,
                               image_embedding_size=SAM_SIZE // 16),
    mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2,
                             iou_head_hidden_dim=32),
)  # fmt: skip


def resolve(name: str, kind: str) -> str:
    """`masks.sam_model`: "tiny" becomes the local tiny SAM, anything else stays as it is. The masks
    stage imports this module itself, so an edit of the SAM config reruns it; backbones resolve
    through `diysc.backbones.registry`."""
    if kind != "sam":
        raise ValueError(f"resolve {kind!r} models through diysc.backbones.registry")
    return str(tiny_sam()) if name == TINY else name


def tiny_dino() -> Path:
    return materialise("dinov2", DINO_CONFIG, _build_dino)


def tiny_sd() -> Path:
    config = dict(
        unet=SD_UNET_CONFIG, vae=SD_VAE_CONFIG, text=SD_TEXT_CONFIG, scheduler=SD_SCHEDULER_CONFIG
    )
    return materialise("sd", config, _build_sd)


def tiny_sam() -> Path:
    return materialise("sam", SAM_CONFIG, _build_sam)


# --- builders -------------------------------------------------------------------------------


def _build_dino(out: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(**DINO_CONFIG)).save_pretrained(out)


def _build_sd(out: Path) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _tiny_clip_tokenizer()
    UNet2DConditionModel(**SD_UNET_CONFIG).save_pretrained(out / "unet")
    AutoencoderKL(**SD_VAE_CONFIG).save_pretrained(out / "vae")
    text = CLIPTextConfig(
        **SD_TEXT_CONFIG, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    CLIPTextModel(text).save_pretrained(out / "text_encoder")
    tokenizer.save_pretrained(out / "tokenizer")
    DDPMScheduler(**SD_SCHEDULER_CONFIG).save_pretrained(out / "scheduler")


def _tiny_clip_tokenizer():
    """A byte-level CLIP tokenizer whose vocabulary is just the 256 byte symbols (no merges)."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for s in symbols:
            vocab[s + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _build_sam(out: Path) -> None:
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    SamModel(SamConfig(**SAM_CONFIG)).save_pretrained(out)
    processor = SamImageProcessor(
        size={"longest_edge": SAM_SIZE}, pad_size={"height": SAM_SIZE, "width": SAM_SIZE}
    )
    SamProcessor(image_processor=processor).save_pretrained(out)


def materialise(name: str, config: dict, build: Callable[[Path], None]) -> Path:
    """Build a seeded model into the cache once (atomically); return its directory."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    path = runtime.cache_dir() / TINY / f"{name}-{digest}"
    if (path / _COMPLETE).is_file():
        return path
    with torch.random.fork_rng(devices=[]), atomic_dir(path) as tmp:
        torch.manual_seed(SEED)
        build(tmp)
        (tmp / _COMPLETE).write_text(json.dumps(config, sort_keys=True, indent=1) + "\n")
    return path
