"""Feature extraction into shards (tiny backbones), the FeatureStore reader and the features stage."""

from __future__ import annotations

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

from diysc.backbones.dino import BackboneError
from diysc.config.schema import FeaturesParams
from diysc.data.spair import DatasetError, SPairDataset
from diysc.feature_extraction import extract_features
from diysc.features import FeatureStore, FeatureStoreError
from diysc.partial_shards import PartialShards, fingerprint
from tests.conftest import ROOT

TINY = FeaturesParams(dino_model="tiny", dino_size=224, sd=True, sd_model="tiny", sd_size=256)

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
        "size": 224,
        "grid": 16,
        "dino_dim": 64,
        "sd_dims": [32, 64, 64],
        "sd": True,
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
    assert (store.grid, store.size, store.has_sd) == (16, 224, True)
    assert store.feature_dims == [32, 64, 64, 64] and store.categories == ("bird", "cat")
    assert store.stems("bird") == ["a1", "a2"]
    x = store.adapter_input("cat", "b1")
    assert x.shape == (224, 16, 16) and x.dtype == torch.float32
    sd, dino = store.sd("cat", "b1"), store.dino("cat", "b1")
    up = lambda t: F.interpolate(t[None], size=(16, 16), mode="bilinear", align_corners=False)[0]  # noqa: E731
    torch.testing.assert_close(x, torch.cat([sd["s3"], up(sd["s4"]), up(sd["s5"]), dino]))
    # Bilinear with align_corners=False: a 2x upsampled s4 at output (0, 0) is its input (0, 0).
    torch.testing.assert_close(x[32:96, 0, 0], sd["s4"][:, 0, 0])
    torch.testing.assert_close(store.adapter_input_many("cat", ["b1", "b2"])[0], x)


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
    params = FeaturesParams(dino_model="tiny", dino_size=224, sd=False, dtype="float32")
    info = extract_features(dataset, params, tmp_path / "features", progress=False)
    assert info["sd"] is False and info["sd_dims"] == [] and info["dtype"] == "float32"
    assert not (tmp_path / "features" / "sd").exists()
    store = FeatureStore(tmp_path / "features")
    assert store.feature_dims == [64] and not store.has_sd
    dino = store.dino("bird", "a1")
    assert dino.dtype == torch.float32
    torch.testing.assert_close(store.adapter_input("bird", "a1"), dino)
    rows = store.similarity("bird", "a1")
    torch.testing.assert_close(rows, F.normalize(dino.flatten(1).T, dim=-1))
    with pytest.raises(FeatureStoreError, match="without SD"):
        store.sd("bird", "a1")


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
    assert FeatureStore(out).dino("cat", "b2").shape == (64, 16, 16)


def test_changed_images_or_params_invalidate_partial_shards(tmp_path):
    root = make_spair_tree(tmp_path / "dataset", IMAGES[:1])
    dataset = SPairDataset(root)
    partial = PartialShards(tmp_path / "features")
    params = FeaturesParams(dino_model="tiny", dino_size=224, sd=False)
    extract_features(dataset, params, tmp_path / "features", progress=False)
    first = FeatureStore(tmp_path / "features").dino("bird", "a1")
    # A leftover work shard from other params is not reused.

    stale = {"a1": torch.zeros(64, 16, 16)}
    partial.save("dino/bird.safetensors", stale, fingerprint({"other": 1}, []))
    extract_features(dataset, params, tmp_path / "features", progress=False)
    torch.testing.assert_close(FeatureStore(tmp_path / "features").dino("bird", "a1"), first)
    Image.new("RGB", (120, 90), (0, 0, 255)).save(root / "JPEGImages" / "bird" / "a1.jpg")
    extract_features(dataset, params, tmp_path / "features", progress=False)
    assert not torch.equal(FeatureStore(tmp_path / "features").dino("bird", "a1"), first)


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
    params = FeaturesParams(dino_model="no-such/model", dino_size=224, sd=False)
    with pytest.raises(DatasetError, match=r"a1\.jpg: image file not found"):
        extract_features(SPairDataset(root), params, tmp_path / "features", progress=False)


def test_mismatched_sd_and_dino_grids_are_refused(tmp_path):
    root = make_spair_tree(tmp_path / "dataset", IMAGES[:1])
    params = FeaturesParams(dino_model="tiny", dino_size=224, sd=True, sd_model="tiny", sd_size=512)
    with pytest.raises(BackboneError, match=r"features\.sd_size 512 .* 32x32 .* 16x16"):
        extract_features(SPairDataset(root), params, tmp_path / "features", progress=False)


def test_store_errors_name_the_file(tmp_path, extracted):
    with pytest.raises(FeatureStoreError, match=r"no info\.json"):
        FeatureStore(tmp_path)
    root, _ = extracted
    store = FeatureStore(root / "out" / "features")
    with pytest.raises(FeatureStoreError, match=r"dog\.safetensors: no dino features"):
        store.dino("dog", "x")
    with pytest.raises(KeyError, match=r"bird\.safetensors: no tensor 'zz'"):
        store.dino("bird", "zz")


def _stage(name: str):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_features_stage_runs_the_tiny_preset(tmp_path):
    from click.testing import CliRunner

    root = make_spair_tree(tmp_path / "dataset", IMAGES[:2])
    result = CliRunner().invoke(_stage("features"), [
        "--params", str(ROOT / "params.yaml"), "--set", "features.sd=false",
        "--set", "features.dino_model=tiny",  # the preset's stand-in trains for minutes: slow tests
        "--dataset", str(root), "--out", str(tmp_path / "features"), "--batch-size", "2",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 categories, grid 16, DINO 64, float16" in result.output
    assert FeatureStore(tmp_path / "features").stems("bird") == ["a1", "a2"]
