"""`diysc match` / `diysc evaluate` check backbones and adapter before extracting anything."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from diysc.compatibility import CompatibilityError, backbones, check_adapter, feature_dims
from diysc.config.load import load_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_features(tiny_cache):
    """The tiny preset's `features` group (stand-in backbones)."""
    return load_params(
        ROOT / "params.yaml",
        ["features.dino_model=tiny", "features.sd=true", "features.sd_model=tiny"],
    )


def test_an_adapter_fits_all_groups_or_the_dino_group_only():
    check_adapter([32, 64, 64, 64], [32, 64, 64, 64], "a.pth", "f")
    check_adapter([64], [32, 64, 64, 64], "a.pth", "f")  # DINO-only adapter on SD+DINO features
    with pytest.raises(
        CompatibilityError, match=r"a\.pth: .* groups \[768\], but f provide \[64\]"
    ):
        check_adapter([768], [64], "a.pth", "f")
    with pytest.raises(CompatibilityError, match="features.sd_model likewise"):
        check_adapter([640, 1280, 1280, 768], [32, 64, 64, 64], "a.pth", "f")


def test_backbone_widths_come_from_the_configs_as_the_extractors_give_them(tiny_features):
    from diffusers import UNet2DConditionModel

    used = backbones(tiny_features.features)
    assert [b.param for b in used] == ["features.sd_model", "features.dino_model"]
    assert all(b.stand_in and Path(b.source).is_dir() for b in used)
    unet = UNet2DConditionModel.from_pretrained(used[0].source, subfolder="unet")
    s5, s4, s3 = (unet.up_blocks[i].resnets[-2].out_channels for i in range(3))
    assert feature_dims(used) == [s3, s4, s5, 64]  # tiny DINO: hidden_size 64


def test_an_unknown_hub_model_offline_names_the_param_and_the_fix(tiny_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = load_params(
        ROOT / "params.yaml", ["features.sd=false", "features.dino_model=nobody/no-such-dino"]
    )
    with pytest.raises(CompatibilityError, match=r"features.dino_model 'nobody/no-such-dino'.*"):
        backbones(params.features)


def _match(*args):
    from diysc.cli import main

    images = sorted((ROOT / "tests" / "fixtures" / "spair_sample" / "JPEGImages" / "cow").glob("*"))
    # the random tiny models: the preset's trained stand-in would take minutes to build here
    tiny = ["--set", "features.dino_model=tiny", "--set", "features.sd=true"]
    return CliRunner().invoke(main, ["match", *map(str, images[:2]), *tiny, *args])


def test_match_refuses_the_authors_adapter_on_stand_in_backbones_at_once(
    tiny_cache, official_dino_adapter, tmp_path
):
    out = tmp_path / "m.png"
    start = time.perf_counter()
    result = _match("--adapter", str(official_dino_adapter), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert "backbone: DINO 64 ch from features.dino_model='tiny' (stand-in at" in result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith(
        f"Error: {official_dino_adapter}: the adapter takes feature groups [768]"
    )
    assert "facebook/dinov2-base" in error and "--set features.dino_model=" in error
    assert not out.exists()
    assert time.perf_counter() - start < 30  # the 40 s extraction never ran


def test_match_refuses_stand_ins_unless_asked(tiny_cache, tmp_path):
    out = tmp_path / "m.png"
    refused = _match("--out", str(out))
    assert refused.exit_code == 1
    error = refused.output.strip().splitlines()[-1]
    assert error.startswith("Error: features.sd_model='tiny', features.dino_model='tiny': a small")
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
    info = {"size": 224, "grid": 16, "dino_dim": 64, "sd_dims": [32, 64, 64], "sd": True,
            "dtype": "float16", "categories": ["cow"]}  # fmt: skip
    (features / "info.json").write_text(json.dumps(info))
    args = ["evaluate", "--dataset", str(spair_sample), "--features", str(features)]
    args += ["--params", str(ROOT / "params.yaml"), "--set", "features.dino_model=tiny"]
    result = CliRunner().invoke(main, [*args, "--adapter", str(official_dino_adapter)])
    assert result.exit_code == 1, result.output
    assert f"features: {features} ([32, 64, 64, 64] channels)" in result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith(
        f"Error: {official_dino_adapter}: the adapter takes feature groups [768], but {features} "
        "provide [32, 64, 64, 64]"
    )
    zero_shot = CliRunner().invoke(main, args)  # no adapter: the stand-in check still applies
    assert zero_shot.exit_code == 1
    assert "--allow-stand-in" in zero_shot.output.strip().splitlines()[-1]
