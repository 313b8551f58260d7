"""A new backbone is one file, one registry line and one preset line: the tiny CLIP ViT, configured
as a preset would configure it, runs through `dvc repro` (features → … → train_adapter → evaluate)."""

from __future__ import annotations

import json

import pytest

# What a preset's line says (`features.backbones: {clip: {model: tiny, size: 224}}`), here as
# `dvc exp run -S` overrides of the tiny preset: CLIP alone, so the sphere mapper reads its group.
CLIP_ONLY = [
    "features.backbones.sd=null",
    "features.backbones.dino=null",
    "+features.backbones.clip={model: tiny, size: 224}",
    "sphere.backbone=clip",
]


@pytest.mark.slow
def test_a_clip_backbone_runs_through_the_pipeline(pipeline):
    from diysc.adapter.model import load_adapter
    from diysc.backbones.clip import TINY_CONFIG

    repo, params = pipeline, pipeline.params()
    train, evaluated = params["train_dataset"], params["eval_datasets"][0]
    overrides = " ".join(f"-S '{item}'" for item in CLIP_ONLY)
    try:
        repo.run(f"dvc exp run {overrides} evaluate@{evaluated}", timeout=2400)
        record = repo.json("models/backbones.json")
        assert [b["name"] for b in record["backbones"]] == ["clip"]
        features = repo.path / "data" / train / "features"
        info = json.loads((features / "info.json").read_text())
        width = TINY_CONFIG["hidden_size"]
        assert info["groups"] == [
            {"name": "clip", "maps": [{"level": "", "dim": width, "downscale": 1}]}
        ]
        assert (info["size"], info["grid"]) == (224, 224 // TINY_CONFIG["patch_size"])  # 14 × 14
        assert sorted(p.name for p in features.iterdir()) == ["clip", "info.json"]
        adapter = load_adapter(repo.path / "models" / "adapter.pth")
        assert list(adapter.feature_dims) == [width]  # the adapter reads the CLIP group alone
        metrics = repo.json(f"metrics/{evaluated}/eval.json")
        for method in ("zero_shot", "adapter"):
            pck = metrics[method]["per_image"]
            assert pck and all(0.0 <= v <= 100.0 for v in pck.values()), (method, pck)
        assert metrics["pairs"] > 0
    finally:  # back to the shared run that the other pipeline modules read
        repo.run("git checkout -- . && dvc checkout -q dvc.yaml")
