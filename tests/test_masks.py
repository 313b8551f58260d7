"""Object masks: dataset segmentation, filled bbox, box-prompted SAM (tiny), the store and the stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from diysc.backbones import tiny
from diysc.config.schema import MasksParams
from diysc.data.spair import SPairDataset
from diysc.formats.masks import MaskError, MaskStore
from diysc.geometry import ResizePad, mask_on_grid
from diysc.masks import SamMasker, bbox_mask, compute_masks, dataset_mask
from tests.conftest import ROOT
from tests.test_features import IMAGES, _stage, make_spair_tree


@pytest.fixture(autouse=True)
def _cache(tiny_cache):
    return tiny_cache


def test_bbox_mask_fills_the_inclusive_pixel_range():
    mask = bbox_mask([2, 1, 4, 3], width=10, height=8)
    expected = np.zeros((8, 10), bool)
    expected[1:4, 2:5] = True
    assert (mask == expected).all()
    # Fractional corners: pixels 2..3 (x) and 1..2 (y); a box past the border is clipped.
    assert np.argwhere(bbox_mask([1.5, 0.2, 3.7, 2.0], 10, 8)).tolist() == [
        [1, 2], [1, 3], [2, 2], [2, 3]]  # fmt: skip
    assert bbox_mask([-5, -5, 50, 50], 10, 8).all()


def test_dataset_mask_reads_any_nonzero_value(tmp_path):
    values = np.array([[0, 1, 0], [0, 255, 7]], np.uint8)
    Image.fromarray(values).save(tmp_path / "grey.png")
    assert (dataset_mask(tmp_path / "grey.png", 3, 2) == (values > 0)).all()
    palette = Image.fromarray(values).convert("P")
    palette.save(tmp_path / "palette.png")
    assert dataset_mask(tmp_path / "palette.png", 3, 2).sum() == 3
    with pytest.raises(
        MaskError, match=r"grey\.png: segmentation is \(3, 2\) \(w, h\), image is \(4, 2\)"
    ):
        dataset_mask(tmp_path / "grey.png", 4, 2)
    with pytest.raises(MaskError, match=r"none\.png: segmentation file not found"):
        dataset_mask(tmp_path / "none.png", 3, 2)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(MaskError, match=r"broken\.png: cannot decode"):
        dataset_mask(tmp_path / "broken.png", 3, 2)


@pytest.mark.parametrize("source", ["dataset", "bbox"])
def test_compute_masks_writes_uint8_masks_in_the_image_frame(tmp_path, source):
    dataset = SPairDataset(make_spair_tree(tmp_path / "dataset"))
    counts = compute_masks(dataset, MasksParams(source=source), tmp_path / "masks", progress=False)
    assert counts == {"bird": 2, "cat": 2}
    assert not (tmp_path / ".masks.partial").exists()
    with safe_open(tmp_path / "masks" / "bird.safetensors", "pt") as f:
        assert sorted(f.keys()) == ["a1", "a2"]
        raw = f.get_tensor("a1")
    assert raw.dtype == torch.uint8 and raw.shape == (90, 120)
    store = MaskStore(tmp_path / "masks")
    assert store.categories == ("bird", "cat")
    for cat, stem, (w, h), _ in IMAGES:
        mask = store.mask(cat, stem)
        expected = np.zeros((h, w), bool)
        expected[:, : w // 2] = True  # the tree's object is the left half, so is its bbox
        assert mask.dtype == bool and (mask == expected).all(), (cat, stem)
    grid = store.on_grid("bird", "a1", 224, 16)
    assert (grid == mask_on_grid(store.mask("bird", "a1"), 224, 16)).all()
    # 120x90 → 224x168, padded 28 px above and below: object columns 0..7, rows 2..13.
    expected_grid = np.zeros((16, 16), bool)
    expected_grid[2:14, :8] = True
    assert (grid == expected_grid).all()


def test_empty_mask_is_an_error_naming_the_image(tmp_path):
    root = make_spair_tree(tmp_path / "dataset", IMAGES[:1])
    Image.fromarray(np.zeros((90, 120), np.uint8)).save(root / "Segmentation" / "bird" / "a1.png")
    with pytest.raises(MaskError, match=r"bird/a1\.jpg: the dataset mask is empty"):
        compute_masks(
            SPairDataset(root), MasksParams(source="dataset"), tmp_path / "m", progress=False
        )
    assert not (tmp_path / "m").exists()


def test_sam_is_prompted_with_the_bbox_in_the_padded_frame():
    masker = SamMasker("tiny", size=960)
    seen = {}
    handle = masker.model.prompt_encoder.register_forward_pre_hook(
        lambda m, args, kwargs: seen.update(boxes=kwargs["input_boxes"].clone()), with_kwargs=True
    )
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), np.uint8))
    box = np.array([20.0, 30.0, 120.0, 140.0])
    masks = masker([image], [box])
    handle.remove()
    # 200x150 → 960x720 padded by 120 px above; SAM's processor then rescales 960 → its own side.
    frame = ResizePad(200, 150, 960)
    assert np.allclose(frame.bbox(box), [96, 264, 576, 792])
    expected = torch.tensor(frame.bbox(box) * tiny.SAM_SIZE / 960, dtype=torch.float32)
    torch.testing.assert_close(seen["boxes"].reshape(4), expected)
    assert len(masks) == 1 and masks[0].shape == (150, 200) and masks[0].dtype == bool


def test_sam_masks_run_through_the_stage(tmp_path):
    from click.testing import CliRunner

    root = make_spair_tree(tmp_path / "dataset")
    args = [
        "--params",
        str(ROOT / "params.yaml"),
        "--set",
        "masks.source=sam",
        "--set",
        "masks.sam_model=tiny",
        "--set",
        "masks.sam_size=256",
        "--dataset",
        str(root),
    ]
    result = CliRunner().invoke(_stage("masks"), [*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "masks (sam, " in result.output and "4 images in 2 categories" in result.output
    store = MaskStore(tmp_path / "a")
    assert store.mask("cat", "b2").shape == (70, 100)
    result = CliRunner().invoke(_stage("masks"), [*args, "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    for name in ("bird", "cat"):  # deterministic
        a = (tmp_path / "a" / f"{name}.safetensors").read_bytes()
        assert a == (tmp_path / "b" / f"{name}.safetensors").read_bytes()


def test_store_errors_name_the_file(tmp_path):
    with pytest.raises(MaskError, match="masks directory not found"):
        MaskStore(tmp_path / "none")
    with pytest.raises(MaskError, match=r"dog\.safetensors: no masks"):
        MaskStore(tmp_path).mask("dog", "x")
