"""Stable Diffusion decoder features s3 / s4 / s5 through `diffusers`.

The image is resized and centre-padded to `size` (960 px in the paper), VAE-encoded (posterior
mean, times `vae.config.scaling_factor`), noised to timestep t with one fixed-seed noise tensor
shared by every image, and passed through the UNet with the empty-prompt text embedding.

The reference names its features after LDM output blocks: s5, s4, s3 are the *inputs* of output
blocks 2, 5, 8, i.e. the decoder's hidden state at the end of the first, second and third up level,
before the last layer of that level concatenates its skip connection. In `diffusers` terms this is
the hidden-state part of the input of `up_blocks[i].resnets[-1]` for i = 0, 1, 2 (the first
`resnets[-2].out_channels` channels of the concatenation). For SD-1.5 at 960 px:
s3 = 640 ch @ 60, s4 = 1280 @ 30, s5 = 1280 @ 15. The forward stops once s3 is captured: the last
(highest-resolution) up level is never needed.

The authors' ODISE path differs (implicit captioner, 512 px sliding window, FreeU): see
docs/deviations.md.
"""

from __future__ import annotations

import torch
from PIL import Image

from diysc.backbones import hub, registry
from diysc.backbones.dino import BackboneError, padded_tensor

LEVELS = ("s5", "s4", "s3")  # up_blocks[0], [1], [2]


class _Captured(Exception):
    """Raised by the last hook to end the UNet forward early."""


def load_pipeline_parts(reference: str, dtype: torch.dtype = torch.float32):
    """(unet, vae, text_encoder, tokenizer, scheduler) from an SD-1.5-layout directory/hub id/"tiny"."""
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
        "features.sd_model",
        reference,
        registry.resolve(reference, "sd"),
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


class SDExtractor:
    """Callable: (B, 3, size, size) images in [0, 1] → {s3, s4, s5} float32 feature maps."""

    def __init__(
        self,
        reference: str | tuple,
        size: int,
        timestep: int,
        seed: int,
        device: torch.device | str = "cpu",
    ):
        """`reference`: a hub id, a local directory, "tiny", or the tuple `load_pipeline_parts` gives."""
        self.device = torch.device(device)
        parts = load_pipeline_parts(reference) if isinstance(reference, str) else reference
        unet, vae, text_encoder, tokenizer, scheduler = parts
        self.unet, self.vae = unet.to(self.device), vae.to(self.device)
        self.size, self.timestep = size, timestep
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if size % (factor * 8):
            raise BackboneError(f"features.sd_size {size} must be a multiple of {factor * 8}")
        self.context = empty_prompt_embedding(text_encoder.to(self.device), tokenizer)
        latent = size // factor
        # One noise tensor for every image (the reference's fixed "shared noise", seed 42).
        generator = torch.Generator().manual_seed(seed)
        self.noise = torch.randn((1, unet.config.in_channels, latent, latent), generator=generator)
        self.noise = self.noise.to(self.device)
        alphas = scheduler.alphas_cumprod[timestep].item()
        self._signal, self._sigma = alphas**0.5, (1 - alphas) ** 0.5
        self.grids = {"s3": latent // 2, "s4": latent // 4, "s5": latent // 8}
        chans = [unet.up_blocks[i].resnets[-2].out_channels for i in range(3)]
        self.dims = {"s5": chans[0], "s4": chans[1], "s3": chans[2]}

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        return padded_tensor(img, self.size)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pixels = images.to(self.device) * 2 - 1
        latents = self.vae.encode(pixels).latent_dist.mean * self.vae.config.scaling_factor
        # DDPM forward process q(x_t | x_0), as scheduler.add_noise / LDM's q_sample.
        noisy = self._signal * latents + self._sigma * self.noise
        feats = decoder_features(self.unet, noisy, self.timestep, self.context)
        return {k: v.float() for k, v in feats.items()}
