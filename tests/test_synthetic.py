"""The synthetic SPair-layout dataset: renderer, visibility, symmetry, layout, determinism."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from diysc.config.schema import ParamsError, SyntheticParams
from diysc.data.spair import SPLITS, SPairDataset
from diysc.datasets.synthetic import exact
from diysc.datasets.synthetic.generator import (
    _rng,
    dataset_digest,
    generate,
    render_view,
    split_sizes,
)
from diysc.datasets.synthetic.render import (
    BOX,
    CYLINDER,
    ELLIPSOID,
    Camera,
    Primitive,
    cast,
    rotation_x,
)
from diysc.datasets.synthetic.shapes import FAMILIES, build

PARAMS = SyntheticParams(
    categories=("quadruped", "car", "chair"),
    images_per_category=32,
    image_size=96,
    pairs_trn=24,
    pairs_val=10,
    pairs_test=12,
    seed=3,
)
# sha256 of PARAMS' dataset tree (`dataset_digest`). It is the same on every machine: a change here
# is a change of the generator (or of the locked numpy / Pillow), never of the CPU.
PARAMS_DIGEST = "e730e11c99823421c669492f498c168477c885475cd9cfe705f8c2cc3ef1d726"
# Fields of a real SPair-71k pair file (PairAnnotation/test/000001-2008_002719-2008_004100:aeroplane)
PAIR_FIELDS = [
    "pair_id",
    "filename",
    "src_imname",
    "trg_imname",
    "src_imsize",
    "trg_imsize",
    "src_bndbox",
    "trg_bndbox",
    "category",
    "src_pose",
    "trg_pose",
    "src_kps",
    "trg_kps",
    "kps_ids",
    "mirror",
    "viewpoint_variation",
    "scale_variation",
    "truncation",
    "occlusion",
]
IMAGE_FIELDS = [
    "filename",
    "src_database",
    "src_annotation",
    "src_image",
    "image_width",
    "image_height",
    "image_depth",
    "category",
    "pose",
    "truncated",
    "occluded",
    "difficult",
    "bndbox",
    "kps",
    "azimuth_id",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "dataset"
    generate(root, PARAMS)
    return root


def _view(category: str, azimuth: float, seed: int = 0, size: int = 160):
    model = build(category, np.random.default_rng(seed))
    camera = Camera.orbit(azimuth, 10.0, 4 * model.radius, 1.6 * size, size, size)
    light = np.array([0.3, 1.0, 0.5])
    return render_view(model, camera, light, np.zeros((size, size, 3)))


def _slot(category: str, name: str) -> int:
    return FAMILIES[category].names.index(name)


# --- renderer ---------------------------------------------------------------------------------


def test_ray_hits_match_analytic_distances_and_normals():
    origin = np.zeros(3)
    sphere = Primitive(ELLIPSOID, np.array([0, 0, 5.0]), np.array([1.0, 1, 1]), (1, 0, 0))
    box = Primitive(BOX, np.array([0, 0, 10.0]), np.array([1.0, 2, 3]), (0, 1, 0))
    t, index, normal = cast([box, sphere], origin, np.array([[0, 0, 1.0], [0, 0, 2.0]]))
    np.testing.assert_allclose(t, [4.0, 2.0])  # t is in units of the direction's length
    assert list(index) == [1, 1]  # the sphere is in front of the box
    np.testing.assert_allclose(normal, [[0, 0, -1], [0, 0, -1]], atol=1e-12)
    t, index, normal = cast([box], origin, np.array([[0, 0, 1.0], [1.0, 0, 0]]))
    assert t[0] == pytest.approx(7.0) and index[1] == -1 and np.isinf(t[1])
    # cylinder (axis y, radius 1, half-height 1) at z = 5: the side from the front ...
    cyl = Primitive(CYLINDER, np.array([0, 0, 5.0]), np.array([1.0, 1, 1]), (0, 0, 1))
    t, _, normal = cast([cyl], origin, np.array([[0, 0, 1.0], [0, 1.0, 5.0]]))
    np.testing.assert_allclose(t, [4.0, 0.8])  # (0, t, 5t) meets the side at 5t = 4
    np.testing.assert_allclose(normal, [[0, 0, -1], [0, 0, -1]], atol=1e-12)
    # ... and its bottom cap from below
    t, _, normal = cast([cyl], np.array([0, -5.0, 5.0]), np.array([[0, 1.0, 0]]))
    assert t[0] == pytest.approx(4.0)
    np.testing.assert_allclose(normal[0], [0, -1, 0], atol=1e-12)
    # a box rotated by 90° about x swaps its y and z extents: the face is 2 away, not 3
    turned = Primitive(
        BOX, np.array([0, 0, 10.0]), np.array([1.0, 2, 3]), (0, 1, 0), rotation=rotation_x(90)
    )
    t, _, _ = cast([turned], origin, np.array([[0, 0, 1.0]]))
    assert t[0] == pytest.approx(8.0)


def test_camera_rays_pass_through_projected_points():
    camera = Camera.orbit(30, 20, 5.0, 100.0, 64, 48, principal=(30.0, 20.0))
    xy, depth = camera.project(np.zeros((1, 3)))  # the camera looks at the origin
    np.testing.assert_allclose(xy[0], [30.0, 20.0])
    assert depth[0] == pytest.approx(5.0)
    # the ray through pixel (i, j) passes through its centre (i + 0.5, j + 0.5)
    rays = camera.pixel_rays().reshape(48, 64, 3)
    centre_ray = rays[10, 7]
    xy, _ = camera.project(camera.position[None] + centre_ray[None])
    np.testing.assert_allclose(xy[0], [7.5, 10.5], atol=1e-9)
    # azimuth 90 puts the camera on the object's left (+x), looking at the origin
    side = Camera.orbit(90, 0, 5.0, 100.0, 64, 64)
    np.testing.assert_allclose(side.position, [5, 0, 0], atol=1e-12)


# --- visibility and symmetry --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "left", "right"),
    [
        ("car", "front left wheel", "front right wheel"),
        ("quadruped", "left eye", "right eye"),
        ("chair", "back top left corner", "back top right corner"),
    ],
)
def test_near_side_keypoint_visible_on_the_mask_far_side_hidden(category, left, right):
    for azimuth, near, far in ((90, left, right), (270, right, left)):  # side views
        view = _view(category, azimuth)
        i, j = _slot(category, near), _slot(category, far)
        assert view.visible[i], f"{near} hidden at azimuth {azimuth}"
        x, y = view.keypoints[i]
        assert view.mask[int(y), int(x)]
        assert not view.visible[j], f"{far} visible at azimuth {azimuth}"
        # hidden by depth, not by leaving the picture: it projects inside the image
        xf, yf = view.keypoints[j]
        assert 0 <= xf < view.camera.width and 0 <= yf < view.camera.height


@pytest.mark.parametrize("category", sorted(FAMILIES))
def test_left_and_right_keypoints_swap_sides_between_opposite_bins(category):
    pairs = FAMILIES[category].symmetry_pairs
    assert pairs
    for front_bin in (0, 1, 7):  # the front half; front_bin + 4 is the opposite view
        checked = {front_bin: 0, front_bin + 4: 0}
        for seed in range(3):  # a few instances: at 3/4 views one side can be all hidden
            for b in checked:
                view = _view(category, b * 45.0 + 10, seed)  # off the diagonal: no edge-on parts
                for i, j in pairs:
                    if view.visible[i] and view.visible[j]:
                        dx = view.keypoints[i, 0] - view.keypoints[j, 0]
                        # from the front the object's left is on the image's right
                        assert (dx > 0) == (b == front_bin), (seed, b, i, j)
                        checked[b] += 1
        assert min(checked.values()) > 0, checked


def test_dataset_left_right_order_follows_the_azimuth_bin(dataset):
    data = SPairDataset(dataset)
    checked = 0
    for cat in data.categories:
        for stem in data.images(cat):
            record = data.image(cat, stem)
            if record.azimuth_id not in (0, 4):
                continue
            for i, j in record.extra["symmetry_pairs"]:
                if record.visible[i] and record.visible[j]:
                    dx = record.keypoints[i, 0] - record.keypoints[j, 0]
                    assert (dx > 0) == (record.azimuth_id == 0), (cat, stem, i, j)
                    checked += 1
    assert checked > 20


# --- layout and annotations ---------------------------------------------------------------------


def test_reader_loads_it_with_split_sizes_from_params(dataset):
    data = SPairDataset(dataset)
    assert data.categories == ("car", "chair", "quadruped")
    counts = data.check_layout()  # also checks that every pair's image and annotation exist
    assert counts == {s: 3 * getattr(PARAMS, f"pairs_{s}") for s in SPLITS}
    sizes = split_sizes(PARAMS.images_per_category)
    assert sizes == {"trn": 16, "val": 8, "test": 8}
    instances = {}
    for split in SPLITS:
        listed = (dataset / "Layout" / "large" / f"{split}.txt").read_text().split()
        files = sorted(p.stem for p in (dataset / "PairAnnotation" / split).glob("*.json"))
        assert sorted(listed) == files
        for cat in data.categories:
            stems = data.split_images(split, cat)
            assert len(stems) == sizes[split]  # every image of the split is in a pair
            assert {data.image(cat, s).azimuth_id for s in stems} == set(range(8))
            instances[split, cat] = {data.image(cat, s).extra["instance_id"] for s in stems}
            for stem in stems:
                assert data.segmentation_path(cat, stem).is_file()
    for cat in data.categories:  # the splits share no instance
        assert not instances["trn", cat] & instances["val", cat]
        assert not instances["trn", cat] & instances["test", cat]
        assert not instances["val", cat] & instances["test", cat]
    ids = [json.loads(p.read_text())["pair_id"] for p in data.pair_files("test")]
    assert ids == list(range(1, len(ids) + 1))


def test_annotations_have_the_real_fields_and_agree_with_pixels(dataset):
    data = SPairDataset(dataset)
    for path in data.pair_files("val"):
        raw = json.loads(path.read_text())
        assert list(raw) == PAIR_FIELDS
        assert raw["filename"] == path.stem
        cat = raw["category"]
        src, trg = (data.image(cat, Path(raw[k]).stem) for k in ("src_imname", "trg_imname"))
        common = [str(k) for k in np.flatnonzero(src.visible & trg.visible)]
        assert raw["kps_ids"] == common and common
        np.testing.assert_array_equal(raw["src_kps"], src.keypoints[[int(k) for k in common]])
        assert raw["src_imsize"] == [src.width, src.height, 3]
        assert raw["src_bndbox"] == src.bbox.tolist()
    for cat in data.categories:
        for stem in data.images(cat)[:12]:
            raw = json.loads(data.annotation_path(cat, stem).read_text())
            assert list(raw)[: len(IMAGE_FIELDS)] == IMAGE_FIELDS
            assert list(raw["kps"]) == [str(i) for i in range(30)]
            record = data.image(cat, stem)
            with Image.open(data.image_path(cat, stem)) as img:
                assert img.size == (record.width, record.height) and img.format == "JPEG"
            mask = np.asarray(Image.open(data.segmentation_path(cat, stem))) > 0
            rows, cols = np.nonzero(mask)
            assert record.bbox.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            k = len(FAMILIES[cat].names)
            assert all(raw["kps_3d"][str(i)] is None for i in range(k, 30))
            assert raw["symmetry_pairs"] == FAMILIES[cat].symmetry_pairs
            # the stored camera projects the 3D keypoints onto the annotated 2D ones
            kps_3d = np.array([raw["kps_3d"][str(i)] for i in range(k)])
            cam = np.array(raw["camera"]["extrinsics"])
            proj = (np.array(raw["camera"]["intrinsics"]) @ (cam[:, :3] @ kps_3d.T + cam[:, 3:])).T
            proj = proj[:, :2] / proj[:, 2:]
            vis = record.visible[:k]
            np.testing.assert_allclose(proj[vis], record.keypoints[:k][vis], atol=0.02)
            for x, y in record.keypoints[:k][vis].astype(int):  # on the mask, within a pixel
                assert mask[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2].any()
            assert record.azimuth_id == round(raw["azimuth"] / 45) % 8


def test_same_seed_gives_byte_identical_files(tmp_path):
    params = SyntheticParams(
        categories=("car",),
        images_per_category=32,
        image_size=64,
        pairs_trn=20,
        pairs_val=8,
        pairs_test=8,
        seed=11,
    )
    generate(tmp_path / "a", params)
    generate(tmp_path / "b", params)

    def files(root):
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert len(a) > 100 and a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    generate(tmp_path / "c", SyntheticParams(**{**params.__dict__, "seed": 12}))
    c = files(tmp_path / "c")
    annotation = Path("ImageAnnotation/car/car_0000.json")
    assert c[annotation] != a[annotation]


def test_dataset_digest_is_pinned(dataset):
    assert dataset_digest(dataset) == PARAMS_DIGEST


def _slowest_cpu_paths() -> dict[str, str]:
    """Environment that makes numpy, OpenBLAS and libjpeg-turbo take their baseline code paths."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    env = {"NPY_DISABLE_CPU_FEATURES": " ".join(f for f in __cpu_dispatch__ if __cpu_features__[f])}
    env["JSIMD_FORCENONE"] = "1"
    if platform.machine() in ("x86_64", "AMD64"):
        env["OPENBLAS_CORETYPE"] = "Prescott"  # SSE3 kernels, no FMA
    return env


def test_dataset_is_the_same_with_other_simd_and_blas_kernels(dataset, tmp_path):
    """What another CPU would run: baseline numpy loops, another BLAS kernel, no JPEG SIMD."""
    out = tmp_path / "dataset"
    code = (
        "import sys; from pathlib import Path; from tests.test_synthetic import PARAMS; "
        "from diysc.datasets.synthetic.generator import generate; generate(Path(sys.argv[1]), PARAMS)"
    )
    env = {**os.environ, **_slowest_cpu_paths()}
    root = Path(__file__).parent.parent
    subprocess.run([sys.executable, "-c", code, str(out)], env=env, cwd=root, check=True)
    assert dataset_digest(out) == dataset_digest(dataset)


@pytest.mark.parametrize("x", [0.0, 0.5, -1.2, 3.0, 100.0, -2000.5, 1e4 / 3])
def test_exact_sine_and_cosine_agree_with_libm(x):
    sin, cos = exact.sin_cos(x)
    assert abs(sin - np.sin(x)) <= 4e-16 * max(1.0, abs(x)) and abs(cos - np.cos(x)) <= 4e-16 * max(
        1.0, abs(x)
    )


def test_instances_vary_and_streams_are_independent():
    a, b = build("car", _rng(0, "car", 1)), build("car", _rng(0, "car", 2))
    assert not np.allclose(a.keypoints, b.keypoints)
    np.testing.assert_array_equal(a.keypoints, build("car", _rng(0, "car", 1)).keypoints)
    # four identical wheels: same radius and width
    wheels = [p for p in a.parts if p.kind == CYLINDER and p.half[1] > 0.05]  # tyres, not hubs
    assert len(wheels) == 4 and all(np.allclose(w.half, wheels[0].half) for w in wheels)


# --- bad input ----------------------------------------------------------------------------------


def test_unknown_category_names_the_key_and_writes_nothing(tmp_path):
    params = SyntheticParams(categories=("car", "bus"))
    with pytest.raises(ParamsError, match=r"datasets\.synthetic\.categories.*'bus'.*car, chair"):
        generate(tmp_path / "out", params)
    assert list(tmp_path.iterdir()) == []


def test_too_many_pairs_names_the_key_and_writes_nothing(tmp_path):
    params = SyntheticParams(
        categories=("chair",),
        images_per_category=32,
        image_size=64,
        pairs_trn=10,
        pairs_val=57,
        pairs_test=5,
    )
    with pytest.raises(ParamsError, match=r"datasets\.synthetic\.pairs_val.*57 pairs"):
        generate(tmp_path / "out", params)
    assert list(tmp_path.iterdir()) == []


# --- contact sheet ------------------------------------------------------------------------------


def test_show_dataset_writes_a_contact_sheet(dataset, tmp_path):
    from diysc.cli import main

    out = tmp_path / "sheet.png"
    result = CliRunner().invoke(
        main,
        [
            "show-dataset",
            str(dataset),
            "--out",
            str(out),
            "--split",
            "val",
            "--per-category",
            "8",
            "--size",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    with Image.open(out) as sheet:
        assert sheet.size == (8 * 64, 3 * (64 + 14))
        pixels = np.asarray(sheet.convert("RGB"))
    assert pixels.std() > 10
    bad = CliRunner().invoke(main, ["show-dataset", str(dataset), "--category", "bus"])
    assert bad.exit_code != 0 and "bus" in str(bad.exception)
