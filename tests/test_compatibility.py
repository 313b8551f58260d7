"""`diysc match` / `diysc evaluate` check backbones and adapter before extracting anything."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from diysc.compatibility import CompatibilityError, backbones, check_adapter, group_dims
from diysc.config.load import load_params

ROOT = Path(__file__).resolve().parents[1]
TINY = "features.backbones={sd: {model: tiny, size: 256}, dino: {model: tiny, size: 224}}"


@pytest.fixture
def tiny_features(tiny_cache):
    """The tiny preset's `features` group (stand-in backbones)."""
    return load_params(ROOT / "params.yaml", [TINY])


def test_an_adapter_fits_all_groups_or_one_group_alone():
    tiny = {"sd": [32, 64, 64], "dino": [64]}
    check_adapter([32, 64, 64, 64], tiny, "a.pth", "f")
    check_adapter([64], tiny, "a.pth", "f")  # DINO-only adapter on SD+DINO features
    check_adapter([32, 64, 64], tiny, "a.pth", "f")  # an SD-only one
    with pytest.raises(
        CompatibilityError,
        match=r"a\.pth: .* maps of \[768\] channels, but f provide \[64\] \(dino\); .*"
        r"facebook/dinov2-base",
    ):
        check_adapter([768], {"dino": [64]}, "a.pth", "f")
    with pytest.raises(CompatibilityError) as caught:  # the fix is a DINO, not SD: no SD hint
        check_adapter([768], tiny, "a.pth", "f")
    assert "features.backbones.dino.model" in str(caught.value)
    assert "features.backbones.sd.model" not in str(caught.value)
    with pytest.raises(CompatibilityError, match="stable-diffusion-v1-5/stable-diffusion-v1-5"):
        check_adapter([640, 1280, 1280, 768], tiny, "a.pth", "f")
    with pytest.raises(CompatibilityError, match="provide \\[64, 32\\]"):
        check_adapter([32, 64], {"dino": [64], "clip": [32]}, "a.pth", "f")  # the order counts


def test_backbone_widths_come_from_the_configs_as_the_extractors_give_them(tiny_features):
    from diffusers import UNet2DConditionModel

    used = backbones(tiny_features.features)
    assert [b.param for b in used] == [
        "features.backbones.sd.model",
        "features.backbones.dino.model",
    ]
    assert all(b.stand_in and Path(b.source).is_dir() for b in used)
    unet = UNet2DConditionModel.from_pretrained(used[0].source, subfolder="unet")
    s5, s4, s3 = (unet.up_blocks[i].resnets[-2].out_channels for i in range(3))
    assert group_dims(used) == {"sd": [s3, s4, s5], "dino": [64]}  # tiny DINO: hidden_size 64


def test_an_unknown_hub_model_offline_names_the_param_and_the_fix(tiny_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = load_params(
        ROOT / "params.yaml",
        ["features.backbones={dino: {model: nobody/no-such-dino, size: 224}}"],
    )
    with pytest.raises(
        CompatibilityError,
        match=r"features.backbones.dino.model 'nobody/no-such-dino'.*facebook/dinov2-base",
    ):
        backbones(params.features)


def _match(*args):
    from diysc.cli import main

    images = sorted((ROOT / "tests" / "fixtures" / "spair_sample" / "JPEGImages" / "cow").glob("*"))
    # the random tiny models: the preset's trained stand-in would take minutes to build here
    tiny = ["--set", TINY]
    return CliRunner().invoke(main, ["match", *map(str, images[:2]), *tiny, *args])


def test_match_refuses_the_authors_adapter_on_stand_in_backbones_at_once(
    tiny_cache, official_dino_adapter, tmp_path
):
    out = tmp_path / "m.png"
    start = time.perf_counter()
    result = _match("--adapter", str(official_dino_adapter), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert (
        "backbone: dino 64 ch from features.backbones.dino.model='tiny' (stand-in at"
        in result.output
    )
    error = result.output.strip().splitlines()[-1]
    assert error.startswith(
        f"Error: {official_dino_adapter}: the adapter takes input maps of [768] channels"
    )
    assert "facebook/dinov2-base" in error and "--set features.backbones.dino.model=" in error
    assert not out.exists()
    assert time.perf_counter() - start < 30  # the 40 s extraction never ran


def test_match_refuses_stand_ins_unless_asked(tiny_cache, tmp_path):
    out = tmp_path / "m.png"
    refused = _match("--out", str(out))
    assert refused.exit_code == 1
    error = refused.output.strip().splitlines()[-1]
    assert error.startswith(
        "Error: features.backbones.sd.model='tiny', features.backbones.dino.model='tiny': a small"
    )
    assert "--allow-stand-in" in error and not out.exists()
    allowed = _match("--out", str(out), "--grid", "2", "--allow-stand-in")
    assert allowed.exit_code == 0, allowed.output
    assert "4 matches (zero_shot)" in allowed.output and out.is_file()


def test_evaluate_refuses_an_adapter_that_does_not_fit_the_features(
    tiny_cache, official_dino_adapter, spair_sample, tmp_path
):
    from diysc.cli import main

    features = tmp_path / "features"
    features.mkdir()
    from tests.test_features import DINO_GROUP, SD_GROUP

    info = {"size": 224, "grid": 16, "groups": [SD_GROUP, DINO_GROUP], "dtype": "float16",
            "categories": ["cow"]}  # fmt: skip
    (features / "info.json").write_text(json.dumps(info))
    args = ["evaluate", "--dataset", str(spair_sample), "--features", str(features)]
    args += ["--params", str(ROOT / "params.yaml"), "--set", TINY]
    result = CliRunner().invoke(main, [*args, "--adapter", str(official_dino_adapter)])
    assert result.exit_code == 1, result.output
    assert f"features: {features} ([32, 64, 64, 64] channels)" in result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith(
        f"Error: {official_dino_adapter}: the adapter takes input maps of [768] channels, but "
        f"{features} provide [32, 64, 64, 64] (sd, dino)"
    )
    zero_shot = CliRunner().invoke(main, args)  # no adapter: the stand-in check still applies
    assert zero_shot.exit_code == 1
    assert "--allow-stand-in" in zero_shot.output.strip().splitlines()[-1]
