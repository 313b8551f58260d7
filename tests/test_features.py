"""Feature extraction into shards (tiny backbones), the FeatureStore reader and the features stage."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

from diysc.backbones.base import BackboneError
from diysc.config.schema import BackboneParams, FeaturesParams
from diysc.data.spair import DatasetError, SPairDataset
from diysc.feature_extraction import extract_features
from diysc.features import FeatureStore, FeatureStoreError
from diysc.partial_shards import PartialShards, fingerprint
from tests.conftest import ROOT

TINY = FeaturesParams(
    backbones={"sd": BackboneParams("tiny", 256), "dino": BackboneParams("tiny", 224)}
)
DINO_ONLY = FeaturesParams(backbones={"dino": BackboneParams("tiny", 224)})


def dino_group(dim: int) -> dict:
    """info.json's entry of a DINO group of `dim` channels."""
    return {"name": "dino", "maps": [{"level": "", "dim": dim, "downscale": 1}]}


def sd_group(s3: int, s4: int, s5: int) -> dict:
    """info.json's entry of an SD group: s3 on the grid, s4 on half of it, s5 on a quarter."""
    levels = zip(("s3", "s4", "s5"), (s3, s4, s5), (1, 2, 4), strict=True)
    return {"name": "sd", "maps": [{"level": lv, "dim": d, "downscale": f} for lv, d, f in levels]}


SD_GROUP, DINO_GROUP = sd_group(32, 64, 64), dino_group(64)

# (category, stem, size (w, h), colour or mode)
IMAGES = [
    ("bird", "a1", (120, 90), (200, 40, 40)),
    ("bird", "a2", (80, 100), (20, 160, 60)),
    ("cat", "b1", (96, 96), "L"),  # greyscale JPEG
    ("cat", "b2", (100, 70), "CMYK"),  # CMYK JPEG
]


def make_spair_tree(root: Path, images=IMAGES) -> Path:
    """A minimal SPair-71k tree: JPEGs, per-image annotations, one segmentation PNG per image."""
    for cat, stem, (w, h), colour in images:
        for folder in ("JPEGImages", "ImageAnnotation", "Segmentation"):
            (root / folder / cat).mkdir(parents=True, exist_ok=True)
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[:, : w // 2] = (
            (90, 150, 210) if isinstance(colour, str) else colour
        )  # left half: object
        img = Image.fromarray(rgb)
        if colour == "L":
            img = img.convert("L")
        elif colour == "CMYK":
            img = img.convert("CMYK")
        img.save(root / "JPEGImages" / cat / f"{stem}.jpg", quality=95)
        seg = np.zeros((h, w), np.uint8)
        seg[:, : w // 2] = 255
        Image.fromarray(seg).save(root / "Segmentation" / cat / f"{stem}.png")
        box = [0, 0, w // 2 - 1, h - 1]
        ann = {
            "image_width": w,
            "image_height": h,
            "bndbox": box,
            "kps": {"0": [1.0, 1.0]},
            "azimuth_id": 0,
        }
        (root / "ImageAnnotation" / cat / f"{stem}.json").write_text(json.dumps(ann))
    (root / "PairAnnotation" / "test").mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(autouse=True)
def _cache(tiny_cache):
    return tiny_cache


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, tiny_cache):
    root = tmp_path_factory.mktemp("features")
    dataset = SPairDataset(make_spair_tree(root / "dataset"))
    info = extract_features(dataset, TINY, root / "out" / "features", batch_size=3, progress=False)
    return root, info


def test_info_shards_shapes_and_dtypes(extracted):
    root, info = extracted
    out = root / "out" / "features"
    assert json.loads((out / "info.json").read_text()) == info
    assert info == {
        "size": 224,  # the smaller input side: DINO's
        "grid": 16,
        "groups": [SD_GROUP, DINO_GROUP],
        "dtype": "float16",
        "categories": ["bird", "cat"],
    }
    assert not (root / "out" / ".features.partial").exists()  # the work dir is gone once published
    with safe_open(out / "dino" / "bird.safetensors", "pt") as f:
        assert sorted(f.keys()) == ["a1", "a2"]
        assert (
            f.get_tensor("a1").shape == (64, 16, 16) and f.get_tensor("a1").dtype == torch.float16
        )
    with safe_open(out / "sd" / "cat.safetensors", "pt") as f:
        assert sorted(f.keys()) == ["b1.s3", "b1.s4", "b1.s5", "b2.s3", "b2.s4", "b2.s5"]
        assert f.get_tensor("b2.s3").shape == (32, 16, 16)
        assert f.get_tensor("b2.s4").shape == (64, 8, 8)
        assert f.get_tensor("b2.s5").shape == (64, 4, 4)
        assert f.get_tensor("b2.s5").dtype == torch.float16


def test_store_adapter_input_is_the_raw_upsampled_concatenation(extracted):
    root, _ = extracted
    store = FeatureStore(root / "out" / "features")
    assert (store.grid, store.size, store.group_names) == (16, 224, ("sd", "dino"))
    assert store.feature_dims == [32, 64, 64, 64] and store.categories == ("bird", "cat")
    assert store.group_dims == {"sd": [32, 64, 64], "dino": [64]}
    assert store.stems("bird") == ["a1", "a2"]
    x = store.adapter_input("cat", "b1")
    assert x.shape == (224, 16, 16) and x.dtype == torch.float32
    (s3, s4, s5), (dino,) = store.maps("sd", "cat", "b1"), store.maps("dino", "cat", "b1")
    assert (s3.shape, s4.shape, s5.shape) == ((32, 16, 16), (64, 8, 8), (64, 4, 4))
    up = lambda t: F.interpolate(t[None], size=(16, 16), mode="bilinear", align_corners=False)[0]  # noqa: E731
    torch.testing.assert_close(x, torch.cat([s3, up(s4), up(s5), dino]))
    # Bilinear with align_corners=False: a 2x upsampled s4 at output (0, 0) is its input (0, 0).
    torch.testing.assert_close(x[32:96, 0, 0], s4[:, 0, 0])
    torch.testing.assert_close(store.adapter_input_many("cat", ["b1", "b2"])[0], x)
    # A consumer may read one group alone (a DINO-only adapter on this SD+DINO cache).
    torch.testing.assert_close(store.adapter_input("cat", "b1", groups=("dino",)), dino)
    assert store.dims(("dino",)) == [64]
    with pytest.raises(FeatureStoreError, match=r"info\.json: no feature group 'clip'"):
        store.adapter_input("cat", "b1", groups=("clip",))


def test_similarity_is_half_sd_cosine_plus_half_dino_cosine(extracted):
    root, _ = extracted
    store = FeatureStore(root / "out" / "features")
    rows = store.similarity_many("bird", ["a1", "a2"])
    assert rows.shape == (2, 256, 224) and rows.dtype == torch.float32
    torch.testing.assert_close(rows[0], store.similarity("bird", "a1"))
    a, b = store.adapter_input("bird", "a1"), store.adapter_input("bird", "a2")
    i, j = 3 * 16 + 5, 10 * 16 + 2  # (row 3, col 5) and (row 10, col 2): flat index row*grid+col
    cos = lambda u, v: float(u @ v / (u.norm() * v.norm()))  # noqa: E731
    expected = 0.5 * cos(a[:160, 3, 5], b[:160, 10, 2]) + 0.5 * cos(a[160:, 3, 5], b[160:, 10, 2])
    assert math.isclose(float(rows[0, i] @ rows[1, j]), expected, abs_tol=1e-5)
    assert torch.allclose(rows.norm(dim=-1), torch.ones(2, 256))


def test_same_params_give_byte_identical_shards(extracted, tmp_path):
    root, _ = extracted
    dataset = SPairDataset(root / "dataset")
    extract_features(dataset, TINY, tmp_path / "again", batch_size=3, progress=False)
    for rel in ("dino/bird.safetensors", "sd/cat.safetensors", "info.json"):
        assert (tmp_path / "again" / rel).read_bytes() == (
            root / "out" / "features" / rel
        ).read_bytes()


def test_dino_only_variant(tmp_path):
    dataset = SPairDataset(make_spair_tree(tmp_path / "dataset", IMAGES[:1]))
    params = dataclasses.replace(DINO_ONLY, dtype="float32")
    info = extract_features(dataset, params, tmp_path / "features", progress=False)
    assert info["groups"] == [DINO_GROUP] and info["dtype"] == "float32"
    assert not (tmp_path / "features" / "sd").exists()
    store = FeatureStore(tmp_path / "features")
    assert store.feature_dims == [64] and store.group_names == ("dino",)
    (dino,) = store.maps("dino", "bird", "a1")
    assert dino.dtype == torch.float32
    torch.testing.assert_close(store.adapter_input("bird", "a1"), dino)
    rows = store.similarity("bird", "a1")  # one group: plain cosine, no 1/√n scaling
    torch.testing.assert_close(rows, F.normalize(dino.flatten(1).T, dim=-1))
    with pytest.raises(FeatureStoreError, match="no feature group 'sd'"):
        store.maps("sd", "bird", "a1")


def test_three_groups_each_weigh_a_third(tmp_path):
    """CLIP at 256 px (16 × 16 patches) beside SD and DINO: each group normalised, scaled 1/√3."""
    dataset = SPairDataset(make_spair_tree(tmp_path / "dataset", IMAGES[:2]))
    params = FeaturesParams(backbones={**TINY.backbones, "clip": BackboneParams("tiny", 256)})
    info = extract_features(dataset, params, tmp_path / "features", progress=False)
    assert [g["name"] for g in info["groups"]] == ["sd", "dino", "clip"] and info["size"] == 224
    store = FeatureStore(tmp_path / "features")
    assert store.feature_dims == [32, 64, 64, 64, 32]
    rows = store.similarity_many("bird", ["a1", "a2"])
    a, b = store.adapter_input("bird", "a1"), store.adapter_input("bird", "a2")
    cos = lambda u, v: float(u @ v / (u.norm() * v.norm()))  # noqa: E731
    parts = [(0, 160), (160, 224), (224, 256)]  # sd, dino, clip channels
    expected = sum(cos(a[i:j, 3, 5], b[i:j, 10, 2]) for i, j in parts) / 3
    assert math.isclose(float(rows[0, 3 * 16 + 5] @ rows[1, 10 * 16 + 2]), expected, abs_tol=1e-5)


def test_interrupted_extraction_resumes_from_finished_categories(tmp_path):
    root = make_spair_tree(tmp_path / "dataset")
    bad = root / "JPEGImages" / "cat" / "b2.jpg"
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[:200])  # a truncated JPEG in the second category
    dataset = SPairDataset(root)
    out = tmp_path / "data" / "features"
    with pytest.raises(DatasetError, match=r"b2\.jpg: cannot decode image"):
        extract_features(dataset, TINY, out, progress=False)
    assert not out.exists()  # nothing half-published
    partial = PartialShards(out)
    assert partial.work == tmp_path / "data" / ".features.partial"
    finished = (partial.work / "dino" / "bird.safetensors").stat().st_ino
    assert not (partial.work / "dino" / "cat.safetensors").exists()
    bad.write_bytes(good_bytes)
    extract_features(dataset, TINY, out, progress=False)
    # The finished category was not recomputed: its file is the one the first run wrote.
    assert (out / "dino" / "bird.safetensors").stat().st_ino == finished
    assert FeatureStore(out).maps("dino", "cat", "b2")[0].shape == (64, 16, 16)


def test_changed_images_or_params_invalidate_partial_shards(tmp_path):
    root = make_spair_tree(tmp_path / "dataset", IMAGES[:1])
    dataset = SPairDataset(root)
    partial = PartialShards(tmp_path / "features")
    params = DINO_ONLY
    extract_features(dataset, params, tmp_path / "features", progress=False)
    first = FeatureStore(tmp_path / "features").adapter_input("bird", "a1")
    # A leftover work shard from other params is not reused.

    stale = {"a1": torch.zeros(64, 16, 16)}
    partial.save("dino/bird.safetensors", stale, fingerprint({"other": 1}, []))
    extract_features(dataset, params, tmp_path / "features", progress=False)
    torch.testing.assert_close(
        FeatureStore(tmp_path / "features").adapter_input("bird", "a1"), first
    )
    Image.new("RGB", (120, 90), (0, 0, 255)).save(root / "JPEGImages" / "bird" / "a1.jpg")
    extract_features(dataset, params, tmp_path / "features", progress=False)
    assert not torch.equal(FeatureStore(tmp_path / "features").adapter_input("bird", "a1"), first)


def test_greyscale_and_cmyk_jpegs_are_converted_to_rgb(extracted):
    from diysc.data.spair import load_rgb

    root, _ = extracted
    grey = load_rgb(root / "dataset" / "JPEGImages" / "cat" / "b1.jpg")
    cmyk = load_rgb(root / "dataset" / "JPEGImages" / "cat" / "b2.jpg")
    assert grey.mode == cmyk.mode == "RGB"
    g = np.asarray(grey, dtype=int)
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    assert abs(g[48, 10, 0] - round(0.299 * 90 + 0.587 * 150 + 0.114 * 210)) <= 3  # ITU-R 601 luma
    assert np.abs(np.asarray(cmyk, dtype=int)[35, 10] - (90, 150, 210)).max() <= 4


def test_missing_image_fails_before_any_model_loads(tmp_path):
    root = make_spair_tree(tmp_path / "dataset", IMAGES[:1])
    os.remove(root / "JPEGImages" / "bird" / "a1.jpg")
    params = FeaturesParams(backbones={"dino": BackboneParams("no-such/model", 224)})
    with pytest.raises(DatasetError, match=r"a1\.jpg: image file not found"):
        extract_features(SPairDataset(root), params, tmp_path / "features", progress=False)


def test_mismatched_sd_and_dino_grids_are_refused(tmp_path):
    root = make_spair_tree(tmp_path / "dataset", IMAGES[:1])
    params = FeaturesParams(backbones={**TINY.backbones, "sd": BackboneParams("tiny", 512)})
    with pytest.raises(
        BackboneError,
        match=r"grids must agree .*backbones\.sd on a 32x32 .*backbones\.dino on a 16x16",
    ):
        extract_features(SPairDataset(root), params, tmp_path / "features", progress=False)


def test_store_errors_name_the_file(tmp_path, extracted):
    with pytest.raises(FeatureStoreError, match=r"no info\.json"):
        FeatureStore(tmp_path)
    root, _ = extracted
    store = FeatureStore(root / "out" / "features")
    with pytest.raises(FeatureStoreError, match=r"dog\.safetensors: no dino features"):
        store.maps("dino", "dog", "x")
    with pytest.raises(KeyError, match=r"bird\.safetensors: no tensor 'zz\.s3'"):
        store.maps("sd", "bird", "zz")


def _stage(name: str):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_features_stage_runs_the_tiny_preset_and_checks_the_backbones_record(tmp_path):
    from click.testing import CliRunner

    root = make_spair_tree(tmp_path / "dataset", IMAGES[:2])
    # the preset's stand-in trains for minutes: slow tests
    dino_only = [
        "--set",
        "features.backbones.sd=null",
        "--set",
        "features.backbones.dino.model=tiny",
    ]
    params = ["--params", str(ROOT / "params.yaml"), *dino_only]
    record = tmp_path / "backbones.json"
    made = CliRunner().invoke(_stage("backbones"), [*params, "--out", str(record)])
    assert made.exit_code == 0, made.output
    assert [b["name"] for b in json.loads(record.read_text())["backbones"]] == ["dino"]
    args = ["--dataset", str(root), "--backbones", str(record), "--batch-size", "2"]
    result = CliRunner().invoke(
        _stage("features"), [*params, *args, "--out", str(tmp_path / "features")]
    )
    assert result.exit_code == 0, result.output
    assert "1 categories, grid 16, dino [64], float16" in result.output
    assert FeatureStore(tmp_path / "features").stems("bird") == ["a1", "a2"]
    # A record of other code (a backbone edited since it was written) stops the stage.
    stale = json.loads(record.read_text())
    stale["backbones"][0]["code"] = "0" * 64
    record.write_text(json.dumps(stale))
    refused = CliRunner().invoke(
        _stage("features"), [*params, *args, "--out", str(tmp_path / "f2")]
    )
    assert refused.exit_code == 1 and not (tmp_path / "f2").exists()
    assert f"{record}: does not record the code of the configured backbones" in refused.output
