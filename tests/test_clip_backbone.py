"""A new backbone is one file, one registry line and one preset line: the tiny CLIP ViT, configured
as a preset would configure it, runs through `dvc repro` (features → … → train_adapter → evaluate)."""

from __future__ import annotations

import json

import pytest

from tests.test_reruns import copy_repository

# What a preset's line says (`features.backbones: {clip: {model: tiny, size: 224}}`), here as
# `dvc exp run -S` overrides of the tiny preset: CLIP alone, so the sphere mapper reads its group.
CLIP_ONLY = [
    "features.backbones.sd=null",
    "features.backbones.dino=null",
    "+features.backbones.clip={model: tiny, size: 224}",
    "sphere.backbone=clip",
]


@pytest.mark.slow
def test_a_clip_backbone_runs_through_the_pipeline(tmp_path_factory):
    from diysc.adapter.model import load_adapter
    from diysc.backbones.clip import TINY_CONFIG

    repo = copy_repository(tmp_path_factory.mktemp("clip") / "repo", tmp_path_factory.mktemp("c"))
    repo.dvc("exp", "run", *(arg for item in CLIP_ONLY for arg in ("-S", item)), "evaluate")
    record = json.loads((repo.path / "models" / "backbones.json").read_text())
    assert [b["name"] for b in record["backbones"]] == ["clip"]
    info = json.loads((repo.path / "data" / "features" / "info.json").read_text())
    width = TINY_CONFIG["hidden_size"]
    assert info["groups"] == [
        {"name": "clip", "maps": [{"level": "", "dim": width, "downscale": 1}]}
    ]
    assert (info["size"], info["grid"]) == (224, 224 // TINY_CONFIG["patch_size"])  # 14 × 14
    assert sorted(p.name for p in (repo.path / "data" / "features").iterdir()) == [
        "clip", "info.json"
    ]  # fmt: skip
    adapter = load_adapter(repo.path / "models" / "adapter.pth")
    assert list(adapter.feature_dims) == [width]  # the adapter reads the CLIP group alone
    metrics = json.loads((repo.path / "metrics" / "eval.json").read_text())
    for method in ("zero_shot", "adapter"):
        pck = metrics[method]["per_image"]
        assert pck and all(0.0 <= v <= 100.0 for v in pck.values()), (method, pck)
    assert metrics["pairs"] > 0
