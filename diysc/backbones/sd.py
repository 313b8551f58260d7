"""Stable Diffusion decoder features s3 / s4 / s5 through `diffusers`.

The image is resized and centre-padded to `size` (960 px in the paper), scaled to [-1, 1] (the
backbone's normalisation: mean 0.5, std 0.5), VAE-encoded (posterior
mean, times `vae.config.scaling_factor`), noised to timestep t with one fixed-seed noise tensor
shared by every image, and passed through the UNet with the empty-prompt text embedding.

The reference names its features after LDM output blocks: s5, s4, s3 are the *inputs* of output
blocks 2, 5, 8, i.e. the decoder's hidden state at the end of the first, second and third up level,
before the last layer of that level concatenates its skip connection. In `diffusers` terms this is
the hidden-state part of the input of `up_blocks[i].resnets[-1]` for i = 0, 1, 2 (the first
`resnets[-2].out_channels` channels of the concatenation). For SD-1.5 at 960 px:
s3 = 640 ch @ 60, s4 = 1280 @ 30, s5 = 1280 @ 15: the group `sd` of three maps, on the grid, half
and a quarter of it. The forward stops once s3 is captured: the last
(highest-resolution) up level is never needed.

The authors' ODISE path differs (implicit captioner, 512 px sliding window, FreeU): see
docs/deviations.md.
"""

from __future__ import annotations

import torch

from diysc.backbones import hub, registry
from diysc.backbones.base import Backbone, BackboneError
from diysc.backbones.hub import is_local
from diysc.features import FeatureGroup, FeatureMap

LEVELS = ("s5", "s4", "s3")  # up_blocks[0], [1], [2]
GROUP_LEVELS = ("s3", "s4", "s5")  # the group's maps, in the adapter's order
DOWNSCALE = {"s3": 1, "s4": 2, "s5": 4}  # each map's side is the grid divided by this


class _Captured(Exception):
    """Raised by the last hook to end the UNet forward early."""


def load_pipeline_parts(reference: str, param: str, dtype: torch.dtype = torch.float32):
    """(unet, vae, text_encoder, tokenizer, scheduler) from an SD-1.5-layout directory, a hub id or
    a registered name; errors name `param`."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    def load(source: str, local: bool):
        # diffusers defaults to low_cpu_mem_usage=True, which needs `accelerate` (not a
        # dependency): without it, it loads the plain way after a six-line notice per model.
        plain = {"torch_dtype": dtype, "local_files_only": local, "low_cpu_mem_usage": False}
        return (
            UNet2DConditionModel.from_pretrained(source, subfolder="unet", **plain),
            AutoencoderKL.from_pretrained(source, subfolder="vae", **plain),
            CLIPTextModel.from_pretrained(
                source, subfolder="text_encoder", dtype=dtype, local_files_only=local
            ),
            CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=local),
            DDPMScheduler.from_pretrained(source, subfolder="scheduler", local_files_only=local),
        )

    unet, vae, text_encoder, tokenizer, scheduler = hub.load_pretrained(
        param,
        reference,
        registry.resolve(reference, StableDiffusion.name),
        "a Stable Diffusion model with unet/ vae/ text_encoder/ tokenizer/ scheduler/",
        load,
        BackboneError,
    )
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return unet, vae, text_encoder, tokenizer, scheduler


def empty_prompt_embedding(text_encoder, tokenizer) -> torch.Tensor:
    """(1, L, D) CLIP text embedding of "" padded to the tokenizer's length, as SD conditions on."""
    ids = tokenizer(
        "",
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        return text_encoder(ids.to(text_encoder.device))[0]


def decoder_features(
    unet, latents: torch.Tensor, timestep: int, context: torch.Tensor
) -> dict[str, torch.Tensor]:
    """UNet decoder features {s3, s4, s5} (see the module docstring) of noised latents."""
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(level: str, width: int):
        def hook(module, args):
            captured[level] = args[0][:, :width]
            if len(captured) == len(LEVELS):
                raise _Captured

        return hook

    for index, level in enumerate(LEVELS):
        resnets = unet.up_blocks[index].resnets
        if len(resnets) < 2:
            raise BackboneError(
                "the UNet needs at least two layers per up block (layers_per_block >= 1)"
            )
        handles.append(
            resnets[-1].register_forward_pre_hook(hook_for(level, resnets[-2].out_channels))
        )
    try:
        t = torch.full((latents.shape[0],), timestep, device=latents.device, dtype=torch.long)
        unet(latents, t, encoder_hidden_states=context.expand(latents.shape[0], -1, -1))
    except _Captured:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return {level: captured[level] for level in ("s3", "s4", "s5")}


class StableDiffusion(Backbone):
    """One group, `sd`: the decoder features s3 / s4 / s5 of the image noised to `timestep`."""

    name = "sd"
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # [0, 1] → [-1, 1], the VAE's input range

    def __init__(self, parts: tuple, size: int, timestep: int, seed: int, device, param: str):
        """`parts`: what `load_pipeline_parts` gives."""
        super().__init__(device)
        unet, vae, text_encoder, tokenizer, scheduler = parts
        self.unet, self.vae = unet.to(self.device), vae.to(self.device)
        self.size, self.timestep = size, timestep
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if size % (factor * 8):
            raise BackboneError(f"{param}.size {size} must be a multiple of {factor * 8}")
        self.context = empty_prompt_embedding(text_encoder.to(self.device), tokenizer)
        latent = size // factor
        # One noise tensor for every image (the reference's fixed "shared noise", seed 42).
        generator = torch.Generator().manual_seed(seed)
        self.noise = torch.randn((1, unet.config.in_channels, latent, latent), generator=generator)
        self.noise = self.noise.to(self.device)
        alphas = scheduler.alphas_cumprod[timestep].item()
        self._signal, self._sigma = alphas**0.5, (1 - alphas) ** 0.5
        self.grid = latent // 2
        dims = dict(zip(LEVELS, level_widths(unet.config.block_out_channels), strict=True))
        maps = (FeatureMap(level, dims[level], DOWNSCALE[level]) for level in GROUP_LEVELS)
        self.group = FeatureGroup(self.name, tuple(maps))

    @classmethod
    def load(cls, entry, features, device, param: str) -> StableDiffusion:
        parts = load_pipeline_parts(entry.model, f"{param}.model")
        return cls(parts, entry.size, features.sd_timestep, features.sd_seed, device, param)

    @staticmethod
    def config_dims(source: str) -> tuple[int, ...]:
        """(s3, s4, s5) widths from the UNet's config (no weights loaded); () without one."""
        from diffusers import UNet2DConditionModel

        try:
            config = UNet2DConditionModel.load_config(
                source, subfolder="unet", local_files_only=is_local(source)
            )
        except (OSError, ValueError):
            return ()
        dims = dict(zip(LEVELS, level_widths(config["block_out_channels"]), strict=True))
        return tuple(int(dims[level]) for level in GROUP_LEVELS)

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        latents = self.vae.encode(pixels).latent_dist.mean * self.vae.config.scaling_factor
        # DDPM forward process q(x_t | x_0), as scheduler.add_noise / LDM's q_sample.
        noisy = self._signal * latents + self._sigma * self.noise
        return decoder_features(self.unet, noisy, self.timestep, self.context)


def level_widths(block_out_channels) -> list[int]:
    """Widths of s5, s4, s3: the outputs of the UNet's first three up levels (down widths reversed)."""
    return [int(c) for c in list(reversed(block_out_channels))[:3]]
