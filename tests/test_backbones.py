"""The backbones (DINOv2, Stable Diffusion, CLIP) behind the protocol, their registry, and the tiny
offline models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diysc.backbones import registry, tiny
from diysc.backbones.base import BackboneError
from diysc.backbones.dino import DINOv2, prenorm_patch_tokens
from diysc.backbones.sd import decoder_features
from diysc.config.schema import BackboneParams, FeaturesParams


def _backbone(name: str, model: str, size: int, seed: int = 42):
    """A backbone as the features stage builds it from a `features.backbones` entry."""
    features = FeaturesParams(sd_timestep=50, sd_seed=seed)
    entry = BackboneParams(model, size)
    return registry.backbone(name).load(entry, features, "cpu", f"features.backbones.{name}")


@pytest.fixture(autouse=True)
def _cache(tiny_cache):
    return tiny_cache


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_tiny_models_are_built_once_seeded_and_reloaded_offline(tmp_path, monkeypatch):
    first = tiny.tiny_dino()
    assert (first / ".complete").is_file() and (first / "config.json").is_file()
    assert tiny.tiny_dino() == first  # built once, then reused
    assert registry.resolve("tiny", "dino") == str(first)
    assert registry.resolve("facebook/dinov2-base", "dino") == "facebook/dinov2-base"
    weights = _state(DINOv2.load_model("tiny", "p"))
    # Another cache directory rebuilds from the seed: the same weights.
    monkeypatch.setenv("DIYSC_CACHE", str(tmp_path / "other"))
    second = tiny.tiny_dino()
    assert second != first
    rebuilt = _state(DINOv2.load_model(str(second), "p"))
    assert weights.keys() == rebuilt.keys()
    assert all(torch.equal(weights[k], rebuilt[k]) for k in weights)


def test_tiny_sd_has_the_sd15_layout():
    root = tiny.tiny_sd()
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (root / sub).is_dir(), sub


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(
        BackboneError, match=r"features\.backbones\.dino\.model 'no-such-org/no-such-model'"
    ):
        _backbone("dino", "no-such-org/no-such-model", 224)


def test_dino_features_are_the_last_block_before_layernorm_without_cls():
    model = DINOv2.load_model("tiny", "p")
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
    with pytest.raises(BackboneError, match=r"features\.backbones\.dino\.size 230"):
        _backbone("dino", "tiny", 230)


def test_vit_b14_at_840px_gives_a_60x60x768_map(tmp_path):
    """The paper's geometry without weights: a ViT-B/14-sized random DINOv2 at 840 px."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=14, image_size=518
    )
    Dinov2Model(config).save_pretrained(tmp_path / "vitb14")
    extractor = _backbone("dino", str(tmp_path / "vitb14"), 840)
    assert (extractor.grid, extractor.group.dims) == (60, [768])
    image = Image.new("RGB", (500, 333), (120, 60, 30))  # landscape: padded above and below
    pixels = extractor.preprocess(image)
    assert pixels.shape == (3, 840, 840)
    assert pixels[:, 0].abs().sum() == 0 and pixels[:, 420].sum() > 0  # black pad, then picture
    feats = extractor(pixels[None])[""]
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


def test_tiny_sd_backbone_grids_noise_and_determinism():
    a = _backbone("sd", "tiny", 256)
    # s3 / s4 / s5 on the tiny DINO grid, half and a quarter of it, as 60/30/15 at 960 px
    assert a.grid == 16 and [(m.level, m.downscale) for m in a.group.maps] == [
        ("s3", 1), ("s4", 2), ("s5", 4)
    ]  # fmt: skip
    assert a.group.dims == [32, 64, 64]
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
    again = _backbone("sd", "tiny", 256)(batch)
    other = _backbone("sd", "tiny", 256, seed=7)(batch)
    for level, shape in (("s3", (1, 32, 16, 16)), ("s4", (1, 64, 8, 8)), ("s5", (1, 64, 4, 4))):
        assert first[level].shape == shape
        assert torch.equal(first[level], again[level])
    assert not torch.equal(first["s3"], other["s3"])  # the seed picks the noise


def test_sd_size_must_fit_the_vae_and_unet():
    with pytest.raises(BackboneError, match=r"features\.backbones\.sd\.size 224"):
        _backbone("sd", "tiny", 224)


def test_sd_input_is_the_image_in_minus_one_to_one():
    """The declared normalisation (mean = std = 0.5) is SD's x * 2 - 1, bit for bit."""
    a = _backbone("sd", "tiny", 256)
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    assert torch.equal((x - a._mean) / a._std, x * 2 - 1)


def test_clip_features_are_the_last_layer_patch_tokens_without_cls_on_the_grid():
    from diysc.backbones.clip import CLIP_MEAN, CLIP_STD

    clip = _backbone("clip", "tiny", 224)
    assert (clip.grid, clip.group.name, clip.group.dims) == (14, "clip", [32])  # 224 / 16
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    feats = clip(images)[""]
    assert feats.shape == (2, 32, 14, 14) and feats.dtype == torch.float32
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = clip.model(pixel_values=(images - mean) / std).last_hidden_state
    # the patch in row 3, column 5 is token 1 + 3·14 + 5 (token 0 is CLS)
    torch.testing.assert_close(feats[:, :, 3, 5], tokens[:, 1 + 3 * 14 + 5])
    torch.testing.assert_close(feats.flatten(2).transpose(1, 2), tokens[:, 1:])


def test_clip_at_another_size_interpolates_its_position_embeddings():
    clip = _backbone("clip", "tiny", 256)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 256, 3), np.uint8))
    feats = clip(clip.preprocess(image)[None])[""]
    assert feats.shape == (1, 32, 16, 16) and torch.isfinite(feats).all()
    with pytest.raises(BackboneError, match=r"features\.backbones\.clip\.size 230"):
        _backbone("clip", "tiny", 230)


def test_config_dims_are_what_the_loaded_backbones_give():
    for name, size in (("dino", 224), ("sd", 256), ("clip", 224)):
        loaded = _backbone(name, "tiny", size)
        source = registry.resolve("tiny", name)
        assert list(registry.backbone(name).config_dims(source)) == loaded.group.dims, name
    assert registry.backbone("clip").config_dims("nobody/no-such-clip") == ()


def test_the_renderer_is_code_of_the_stand_in_alone():
    """Editing the synthetic renderer changes the recorded code (models/backbones.json) of the
    stand-in only: on any other backbone the features stage is not rerun."""
    from diysc.provenance import import_closure
    from tests.conftest import ROOT

    def closure(*modules: str) -> set[str]:
        return {p.as_posix() for m in modules for p in import_closure(m)}

    render = "diysc/datasets/synthetic/render.py"
    assert render in closure(*registry.modules("dino", "standin"))
    for name, model in [("dino", "facebook/dinov2-base"), ("dino", "tiny"), ("sd", "tiny"),
                        ("sd", "random-sd15"), ("clip", "openai/clip-vit-base-patch16")]:  # fmt: skip
        assert render not in closure(*registry.modules(name, model)), (name, model)
    features = {p.as_posix() for p in import_closure(ROOT / "stages" / "features.py", ROOT)}
    assert render not in features and "diysc/backbones/dino.py" not in features


def test_the_registry_imports_nothing_until_asked_and_names_the_code_a_backbone_runs():
    import subprocess
    import sys

    probe = (
        "import sys; from diysc.backbones import registry; "
        "print(sorted(m for m in sys.modules if m.startswith(('diysc.backbones.', 'diysc.data'))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['diysc.backbones.registry']"
    assert registry.modules("dino", "standin") == [
        "diysc.backbones.dino", "diysc.standin"
    ]  # fmt: skip
    assert registry.modules("dino", "facebook/dinov2-base") == ["diysc.backbones.dino"]
    assert registry.modules("clip", "tiny") == ["diysc.backbones.clip"]  # its builder is its own
    assert registry.code("dino", "tiny") != registry.code("dino", "standin")
    assert "diysc.standin" in registry.all_modules()
    with pytest.raises(registry.UnknownBackbone, match=r"backbone 'vgg' is not registered.*clip"):
        registry.backbone("vgg")
