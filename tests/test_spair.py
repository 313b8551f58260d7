"""The SPair-71k reader and the resize-pad convention, on the real sample and on broken copies."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from diysc.data.spair import (
    SPAIR_CATEGORIES,
    SPAIR_COUNTERPARTS,
    SPAIR_SYMMETRY,
    DatasetError,
    SPairDataset,
    load_rgb,
)
from diysc.geometry import ResizePad, bbox_threshold, pixel_to_patch

PAIR = "000167-2008_007604-2009_001056:aeroplane"


def test_lists_categories_and_the_twelve_test_pairs(spair_sample):
    data = SPairDataset(spair_sample)
    assert data.categories == ("aeroplane", "cow", "dog", "horse", "motorbike", "pottedplant")
    pairs = data.pairs("test")
    assert len(pairs) == 12
    assert data.pairs("trn") == []
    by_name = {p.name: p for p in pairs}
    pair = by_name[PAIR]
    assert (pair.src, pair.trg, pair.category) == ("2008_007604", "2009_001056", "aeroplane")
    assert pair.kps_ids == (0, 1, 2, 16, 18, 22, 23)
    np.testing.assert_array_equal(pair.trg_bbox, [14, 71, 483, 220])
    assert data.split_images("test", "aeroplane") == ["2008_007604", "2009_001056"]


def test_pair_keypoints_agree_with_the_image_annotations(spair_sample):
    data = SPairDataset(spair_sample)
    for pair in data.pairs("test"):
        raw = json.loads(
            (spair_sample / "PairAnnotation" / "test" / f"{pair.name}.json").read_text()
        )
        src, trg = data.image(pair.category, pair.src), data.image(pair.category, pair.trg)
        ids = list(pair.kps_ids)
        assert src.visible[ids].all() and trg.visible[ids].all()
        np.testing.assert_array_equal(src.keypoints[ids], raw["src_kps"])
        np.testing.assert_array_equal(trg.keypoints[ids], raw["trg_kps"])
        # kps_ids is exactly the set of slots visible in both images
        assert set(ids) == set(np.flatnonzero(src.visible & trg.visible))


def test_image_record_fields(spair_sample):
    rec = SPairDataset(spair_sample).image("aeroplane", "2008_007604")
    assert (rec.width, rec.height, rec.azimuth_id) == (333, 500, 0)
    assert rec.visible.sum() == 8 and not rec.visible[3]
    assert np.isnan(rec.keypoints[3]).all()
    assert rec.extra["pose"] == "Frontal"
    img = load_rgb(SPairDataset(spair_sample).image_path("aeroplane", "2008_007604"))
    assert img.size == (333, 500) and img.mode == "RGB"


def test_resize_pad_maps_keypoints_and_bbox_to_840(spair_sample):
    data = SPairDataset(spair_sample)
    src = data.image("aeroplane", "2008_007604")  # 333 x 500, portrait
    frame = ResizePad(src.width, src.height, 840)
    # scale 840/500 = 1.68; new width round(333 * 1.68) = 559; x offset (840 - 559) // 2 = 140
    assert frame.new_size == (559, 840) and frame.offset == (140, 0)
    np.testing.assert_allclose(frame.points(src.keypoints[[0]]), [[62 * 1.68 + 140, 462 * 1.68]])
    assert pixel_to_patch(frame.points(src.keypoints[[0]]), 840, 60).tolist() == [[17, 55]]

    trg = data.image("aeroplane", "2009_001056")  # 500 x 334, landscape
    frame = ResizePad(trg.width, trg.height, 840)
    # new height round(334 * 1.68) = 561; y offset (840 - 561) // 2 = 139
    assert frame.offset == (0, 139)
    box = frame.bbox(trg.bbox)
    np.testing.assert_allclose(box, [14 * 1.68, 71 * 1.68 + 139, 483 * 1.68, 220 * 1.68 + 139])
    assert bbox_threshold(box) == pytest.approx(469 * 1.68)  # the long side of the target bbox


def test_keypoints_land_on_the_same_pixels_in_the_resized_image(spair_sample):
    """The resized-padded picture, sampled at a mapped keypoint, shows what the original shows there."""
    data = SPairDataset(spair_sample)
    rec = data.image("cow", "2007_005797")
    img = data.load_image("cow", "2007_005797")
    frame = ResizePad(rec.width, rec.height, 840)
    padded = np.asarray(frame.image(img), dtype=np.float64)
    original = np.asarray(img, dtype=np.float64)
    # mean colours of small neighbourhoods are compared, which is robust to resampling
    for xy in rec.keypoints[rec.visible]:
        x, y = (int(v) for v in xy)
        px, py = (int(v) for v in frame.points(np.array([[x + 0.5, y + 0.5]]))[0])
        a = original[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3].mean(axis=(0, 1))
        b = padded[max(py - 3, 0) : py + 4, max(px - 3, 0) : px + 4].mean(axis=(0, 1))
        assert np.abs(a - b).max() < 40, (xy, a, b)
    ox, oy = frame.offset
    assert ox + oy > 0
    assert padded[:oy].max(initial=0) == 0 and padded[:, :ox].max(initial=0) == 0  # black padding


def _copy(spair_sample, tmp_path):
    root = tmp_path / "SPair-71k"
    shutil.copytree(spair_sample, root)
    return root


def test_missing_image_annotation_names_the_file(spair_sample, tmp_path):
    root = _copy(spair_sample, tmp_path)
    (root / "ImageAnnotation" / "cow" / "2009_003189.json").unlink()
    data = SPairDataset(root)
    with pytest.raises(DatasetError, match=r"2009_003189\.json: annotation file not found"):
        data.image("cow", "2009_003189")
    with pytest.raises(DatasetError, match=r"missing file .*2009_003189\.json"):
        data.check_layout()


def test_malformed_pair_json_names_the_file(spair_sample, tmp_path):
    root = _copy(spair_sample, tmp_path)
    bad = root / "PairAnnotation" / "test" / f"{PAIR}.json"
    bad.write_text('{"pair_id": 167, "src_imname": ')
    with pytest.raises(DatasetError, match=r"000167-.*aeroplane\.json: not valid JSON"):
        SPairDataset(root).pairs("test")
    bad.write_text(json.dumps({"pair_id": 167, "category": "aeroplane"}))
    with pytest.raises(DatasetError, match=r"aeroplane\.json: missing field 'src_imname'"):
        SPairDataset(root).pairs("test")


def test_malformed_keypoints_and_azimuth_name_the_file(spair_sample, tmp_path):
    root = _copy(spair_sample, tmp_path)
    path = root / "ImageAnnotation" / "dog" / "2009_001225.json"
    raw = json.loads(path.read_text())
    raw["kps"]["0"] = [1, 2, 3]
    path.write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match=r"2009_001225\.json: 'kps\[0\]' must hold 2 numbers"):
        SPairDataset(root).image("dog", "2009_001225")
    raw["kps"]["0"] = None
    raw["azimuth_id"] = 9
    path.write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match=r"'azimuth_id' must be an integer 0..7"):
        SPairDataset(root).image("dog", "2009_001225")


def test_layout_check_counts_pairs(spair_sample):
    data = SPairDataset(spair_sample)
    assert data.check_layout() == {"trn": 0, "val": 0, "test": 12}
    with pytest.raises(DatasetError, match="pair counts"):
        data.check_layout(expected_pairs={"trn": 53_340, "val": 5_384, "test": 12_234})
    with pytest.raises(DatasetError, match="categories"):
        data.check_layout(expected_categories=("aeroplane",))


def test_not_an_spair_tree(tmp_path):
    with pytest.raises(DatasetError, match="not an SPair-71k tree"):
        SPairDataset(tmp_path)


def test_corrupt_and_missing_images(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(DatasetError, match=r"bad\.jpg: cannot decode image"):
        load_rgb(bad)
    with pytest.raises(DatasetError, match=r"absent\.jpg: image file not found"):
        load_rgb(tmp_path / "absent.jpg")


def test_the_counterpart_table_covers_spair_and_pairs_distinct_slots():
    assert set(SPAIR_COUNTERPARTS) == set(SPAIR_CATEGORIES)
    for cat, pairs in SPAIR_COUNTERPARTS.items():
        slots = [s for pair in pairs for s in pair]
        assert len(slots) == len(set(slots)) and all(0 <= s < 30 for s in slots), cat


def test_bird_left_right_counterparts_include_mouth_corners_and_eyes():
    """Bird slots: 1/2 wing ends, 4/5 mouth corners, 7/8 eyes, 10/11 feet, 12/13 knees, 14/15
    hips (GeoAware-SC marks each first slot right, each second left). A flip swaps all six pairs;
    the geo-aware groups leave the mouth corners and eyes out."""
    assert SPAIR_COUNTERPARTS["bird"] == ((1, 2), (4, 5), (7, 8), (10, 11), (12, 13), (14, 15))
    assert SPAIR_SYMMETRY["bird"] == ((1, 2), (10, 11), (12, 13), (14, 15))


def test_counterparts_stay_within_one_symmetry_group():
    """Both tables number the annotations' 30 slots: a left/right pair lies inside one symmetry
    group or outside all of them (bus: the fender, wheel and window pairs are 10/20 ... 28/29, as
    for car; slots 8 and 9 are unused)."""
    for cat in SPAIR_CATEGORIES:
        groups = SPAIR_SYMMETRY[cat]
        for pair in SPAIR_COUNTERPARTS[cat]:
            holding = [g for g in groups if set(pair) & set(g)]
            assert holding == [] or (len(holding) == 1 and set(pair) <= set(holding[0])), (
                cat,
                pair,
            )
