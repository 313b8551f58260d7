"""DINOv2 and Stable Diffusion feature extractors, and the tiny offline backbones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diysc.backbones import tiny
from diysc.backbones.dino import BackboneError, DinoExtractor, load_model, prenorm_patch_tokens
from diysc.backbones.sd import SDExtractor, decoder_features


@pytest.fixture(autouse=True)
def _cache(tiny_cache):
    return tiny_cache


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_tiny_models_are_built_once_seeded_and_reloaded_offline(tmp_path, monkeypatch):
    first = tiny.tiny_dino()
    assert (first / ".complete").is_file() and (first / "config.json").is_file()
    assert tiny.tiny_dino() == first  # built once, then reused
    assert tiny.resolve("tiny", "dino") == str(first)
    assert tiny.resolve("facebook/dinov2-base", "dino") == "facebook/dinov2-base"
    weights = _state(load_model("tiny"))
    # Another cache directory rebuilds from the seed: the same weights.
    monkeypatch.setenv("DIYSC_CACHE", str(tmp_path / "other"))
    second = tiny.tiny_dino()
    assert second != first
    rebuilt = _state(load_model(str(second)))
    assert weights.keys() == rebuilt.keys()
    assert all(torch.equal(weights[k], rebuilt[k]) for k in weights)


def test_tiny_sd_has_the_sd15_layout():
    root = tiny.tiny_sd()
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (root / sub).is_dir(), sub


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match=r"features\.dino_model 'no-such-org/no-such-model'"):
        load_model("no-such-org/no-such-model")


def test_dino_features_are_the_last_block_before_layernorm_without_cls():
    model = load_model("tiny")
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    feats = prenorm_patch_tokens(model, pixels)
    assert feats.shape == (2, 64, 16, 16)
    captured = {}
    handle = model.encoder.layer[-1].register_forward_hook(
        lambda m, a, out: captured.update(out=out[0] if isinstance(out, tuple) else out)
    )
    with torch.no_grad():
        final = model(pixel_values=pixels).last_hidden_state
    handle.remove()
    tokens = feats.flatten(2).transpose(1, 2)  # row-major patch order
    torch.testing.assert_close(tokens, captured["out"][:, 1:])  # the last block's output, no CLS
    torch.testing.assert_close(model.layernorm(tokens), final[:, 1:])  # the LayerNorm comes after
    assert not torch.allclose(tokens, final[:, 1:])


def test_dino_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(BackboneError, match=r"features\.dino_size 230"):
        DinoExtractor("tiny", 230)


def test_vit_b14_at_840px_gives_a_60x60x768_map(tmp_path):
    """The paper's geometry without weights: a ViT-B/14-sized random DINOv2 at 840 px."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=14, image_size=518
    )
    Dinov2Model(config).save_pretrained(tmp_path / "vitb14")
    extractor = DinoExtractor(str(tmp_path / "vitb14"), 840)
    image = Image.new("RGB", (500, 333), (120, 60, 30))  # landscape: padded above and below
    pixels = extractor.preprocess(image)
    assert pixels.shape == (3, 840, 840)
    assert pixels[:, 0].abs().sum() == 0 and pixels[:, 420].sum() > 0  # black pad, then picture
    feats = extractor(pixels[None])
    assert feats.shape == (1, 768, 60, 60) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all()


def _tiny_unet(layers_per_block: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    config = dict(tiny.SD_UNET_CONFIG, layers_per_block=layers_per_block)
    return UNet2DConditionModel(**config).eval()


def test_sd_features_are_the_inputs_of_ldm_output_blocks_2_5_8():
    """With SD's three layers per up level, LDM output block 3i+2's input is layer 1's output."""
    unet = _tiny_unet(layers_per_block=2)
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    context = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(2))
    feats = decoder_features(unet, latents, 50, context)
    expected, handles = {}, []
    # up_blocks[0] has no attention; in up_blocks[1], [2] layer 1 is resnets[1] then attentions[1].
    for level, module in (
        ("s5", unet.up_blocks[0].resnets[1]),
        ("s4", unet.up_blocks[1].attentions[1]),
        ("s3", unet.up_blocks[2].attentions[1]),
    ):
        handles.append(module.register_forward_hook(
            lambda m, a, out, level=level: expected.update({level: out[0] if isinstance(out, tuple) else out})
        ))  # fmt: skip
    with torch.no_grad():
        unet(latents, torch.tensor([50]), encoder_hidden_states=context)
    for handle in handles:
        handle.remove()
    for level in ("s3", "s4", "s5"):
        torch.testing.assert_close(feats[level], expected[level])
    assert feats["s3"].shape == (1, 32, 16, 16)
    assert feats["s4"].shape == (1, 64, 8, 8)
    assert feats["s5"].shape == (1, 64, 4, 4)


def test_tiny_sd_extractor_grids_noise_and_determinism():
    a = SDExtractor("tiny", 256, timestep=50, seed=42)
    assert a.grids == {"s3": 16, "s4": 8, "s5": 4}  # the tiny DINO grid, as 60/30/15 at 960 px
    assert a.dims == {"s3": 32, "s4": 64, "s5": 64}
    assert a.context.shape == (1, 77, 32)
    # The noising is DDPM's q(x_t | x_0) at t = 50 with one fixed noise tensor.
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_pretrained(tiny.tiny_sd(), subfolder="scheduler")
    x0 = torch.randn_like(a.noise)
    torch.testing.assert_close(
        a._signal * x0 + a._sigma * a.noise, scheduler.add_noise(x0, a.noise, torch.tensor([50]))
    )
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 256, 3), np.uint8))
    batch = a.preprocess(image)[None]
    first = a(batch)
    again = SDExtractor("tiny", 256, timestep=50, seed=42)(batch)
    other = SDExtractor("tiny", 256, timestep=50, seed=7)(batch)
    for level, shape in (("s3", (1, 32, 16, 16)), ("s4", (1, 64, 8, 8)), ("s5", (1, 64, 4, 4))):
        assert first[level].shape == shape
        assert torch.equal(first[level], again[level])
    assert not torch.equal(first["s3"], other["s3"])  # the seed picks the noise


def test_sd_size_must_fit_the_vae_and_unet():
    with pytest.raises(BackboneError, match=r"features\.sd_size 224"):
        SDExtractor("tiny", 224, timestep=50, seed=42)
