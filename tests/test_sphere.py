"""Spherical mapper: architecture and checkpoints, losses on hand-made cases, training on a toy
problem, resume, sphere points and quality figures, and the two stages."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from diysc.config.compose import compose
from diysc.config.schema import SphereParams
from diysc.data.spair import ImageRecord
from diysc.formats.sphere_points import SpherePoints, SpherePointsError, write_points
from diysc.io import save_shard
from diysc.sphere.losses import (
    patch_coords,
    prototype_loss,
    sample_triplets,
    triplet_distance_loss,
    triplet_orientation_loss,
    viewpoint_loss,
)
from diysc.sphere.model import (
    CheckpointError,
    PrototypeDecoder,
    SphereMapper,
    init_mapper,
    load_mapper,
)
from diysc.sphere.points import compute_points, map_features
from diysc.sphere.quality import (
    counterpart_angles,
    keypoint_patches,
    same_keypoint_angles,
    summarise,
)
from diysc.sphere.train import SphereTrainingSet, train_sphere, write_history
from tests.conftest import ROOT

torch.set_num_threads(1)  # small tensors; avoids oversubscribing a shared CPU

# --- model and checkpoints -------------------------------------------------------------------


def test_mapper_outputs_unit_vectors_with_the_reference_layout():
    mapper = SphereMapper(in_dim=16, hidden=8, heads=2)
    out = mapper(torch.randn(2, 9, 16))
    assert out.shape == (2, 9, 3)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 9))
    shapes = {k: tuple(v.shape) for k, v in mapper.state_dict().items()}
    assert shapes["0.weight"] == (8, 16) and shapes["3.weight"] == (3, 8)
    assert shapes["2.attn.qkv.weight"] == (24, 8) and "2.attn.qkv.bias" not in shapes
    assert shapes["2.mlp.fc1.weight"] == (32, 8)  # MLP ratio 4
    assert {"2.norm1.weight", "2.norm2.weight", "2.attn.proj.bias"} <= set(shapes)


def test_mapper_attends_across_tokens():
    mapper = SphereMapper(in_dim=16, hidden=8, heads=2)
    x = torch.randn(1, 5, 16)
    y = x.clone()
    y[0, 4] += 3.0  # change one token only
    assert not torch.allclose(mapper(x)[0, :4], mapper(y)[0, :4])


def test_decoder_is_conditioned_on_the_category():
    decoder = PrototypeDecoder(feat_dim=64, n_categories=3)
    sphere = F.normalize(torch.randn(1, 4, 3), dim=-1)
    a = decoder(sphere, torch.tensor([0]))
    b = decoder(sphere, torch.tensor([2]))
    assert a.shape == (1, 4, 64) and not torch.allclose(a, b)


def test_spherical_maps_checkpoint_and_plain_state_dict_load(tmp_path):
    mapper = init_mapper(16, 8, 2, seed=3)
    reference = {f"sphere_mapper.{k}": v for k, v in mapper.state_dict().items()}
    reference["sphere.weight"] = torch.randn(1024, 3)  # the reference's obsolete buffer
    reference["prototypes.proj.weight"] = torch.randn(16, 3)
    torch.save(reference, tmp_path / "200.pth")
    torch.save(mapper.state_dict(), tmp_path / "plain.pth")
    x = torch.randn(1, 6, 16)
    for name in ("200.pth", "plain.pth"):
        loaded = load_mapper(tmp_path / name, 16, 8, 2)
        torch.testing.assert_close(loaded(x), mapper.eval()(x), rtol=0, atol=0)


def test_bad_checkpoints_name_the_file_and_keys(tmp_path):
    state = init_mapper(16, 8, 2, seed=0).state_dict()
    missing = {k: v for k, v in state.items() if k != "2.attn.qkv.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(
        CheckpointError, match=r"missing\.pth.*missing keys \['2\.attn\.qkv\.weight'\]"
    ):
        load_mapper(tmp_path / "missing.pth", 16, 8, 2)
    with pytest.raises(
        CheckpointError,
        match=r"wrong\.pth.*0\.weight: \(8, 16\) in the file, "
        r"\(8, 32\) expected",
    ):
        torch.save(state, tmp_path / "wrong.pth")
        load_mapper(tmp_path / "wrong.pth", 32, 8, 2)  # features of another width
    with pytest.raises(CheckpointError, match=r"absent\.pth.*not found"):
        load_mapper(tmp_path / "absent.pth", 16, 8, 2)
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pth.*not a readable"):
        load_mapper(tmp_path / "junk.pth", 16, 8, 2)


# --- losses on hand-made cases ---------------------------------------------------------------


def test_prototype_loss_is_one_minus_cosine_on_the_foreground():
    feats = torch.randn(2, 3, 5)
    fg = torch.tensor([[True, True, False], [True, False, False]])
    recon = 2 * feats  # same directions
    recon[0, 2] = -feats[0, 2]  # background: ignored
    recon[1, 1:] = torch.randn(2, 5)
    assert prototype_loss(feats, recon, fg).item() == pytest.approx(0, abs=1e-6)
    assert prototype_loss(feats, -feats, fg).item() == pytest.approx(2, abs=1e-6)


def _circle_sphere(azimuth_bins: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
    """Per image, 4 points whose mean points along the azimuth on the equator, plus 2 background zeros."""
    angle = 2 * math.pi * azimuth_bins.float() / 8 + offset
    centre = torch.stack([angle.cos(), angle.sin(), torch.zeros_like(angle)], -1)
    up = torch.tensor([0.0, 0.0, 0.5]).expand_as(centre)
    side = 0.2 * torch.stack([-angle.sin(), angle.cos(), torch.zeros_like(angle)], -1)
    spread = torch.stack([up, -up, side, -side], 1)  # symmetric about the centre
    points = F.normalize(centre[:, None] + spread, dim=-1)
    return torch.cat([points, torch.zeros(len(angle), 2, 3)], dim=1)


def test_viewpoint_loss_is_minimal_when_the_sphere_turns_with_the_azimuth():
    bins = torch.tensor([0, 1, 2, 5, 7])
    assert viewpoint_loss(_circle_sphere(bins), bins).item() == pytest.approx(0, abs=1e-6)
    # a global rotation of the sphere changes nothing; a wrong turn per bin does
    assert viewpoint_loss(_circle_sphere(bins, offset=1.0), bins).item() == pytest.approx(
        0, abs=1e-6
    )
    assert viewpoint_loss(_circle_sphere(bins * 2), bins).item() > 0.1
    # hand-computed: two images two bins apart (target cos 90° = 0) mapped to one direction
    same = _circle_sphere(torch.tensor([0, 0]))
    assert viewpoint_loss(same, torch.tensor([0, 2])).item() == pytest.approx(0.5, abs=1e-6)


def _three_patch_sphere(a, b, c):
    sphere = torch.zeros(1, 16, 3)  # a 4×4 grid; patches 0, 1, 3 hold the triplet
    sphere[0, [0, 1, 3]] = F.normalize(torch.tensor([a, b, c], dtype=torch.float), dim=-1)
    return sphere


def test_distance_loss_prefers_the_patch_nearer_in_the_image():
    coords = patch_coords(4)  # patch 1 is next to patch 0, patch 3 three columns away
    image, patches = torch.tensor([0]), torch.tensor([[0, 1, 3]])
    near, far = [0.0, 0.436, 0.9], [1.0, 0.0, 0.0]  # cos(a, near) ≈ 0.9, cos(a, far) = 0
    good = _three_patch_sphere([0, 0, 1], near, far)
    bad = _three_patch_sphere([0, 0, 1], far, near)
    cos_near = F.cosine_similarity(good[0, 0], good[0, 1], dim=0).item()
    assert triplet_distance_loss(good, coords, image, patches, 0.5).item() == 0
    expected = (1 - 0) - (1 - cos_near) + 0.5
    assert triplet_distance_loss(bad, coords, image, patches, 0.5).item() == pytest.approx(expected)


def test_orientation_loss_is_zero_when_oriented_and_four_when_mirrored():
    coords = patch_coords(4)
    # image triplet: anchor patch 0 at (row 0, col 0), patch 1 at (0, 1), patch 4 at (1, 0)
    image, patches = torch.tensor([0]), torch.tensor([[0, 1, 4]])

    def sphere(mirror: float) -> torch.Tensor:
        s = torch.zeros(1, 16, 3)
        s[0, 0] = torch.tensor([0.0, 0.0, 1.0])
        s[0, 4] = F.normalize(torch.tensor([0.1 * mirror, 0.0, 1.0]), dim=0)  # one step down → +x
        s[0, 1] = F.normalize(torch.tensor([0.0, 0.1, 1.0]), dim=0)  # one step right → +y
        return s

    assert triplet_orientation_loss(sphere(1.0), coords, image, patches).item() == pytest.approx(
        0, abs=1e-6
    )
    assert triplet_orientation_loss(sphere(-1.0), coords, image, patches).item() == pytest.approx(
        4, abs=1e-5
    )
    # a collinear image triplet says nothing about orientation
    assert (
        triplet_orientation_loss(sphere(-1.0), coords, image, torch.tensor([[0, 1, 2]])).item() == 0
    )


def test_orientation_loss_on_a_whole_map_and_its_mirror():
    grid = 6
    coords = patch_coords(grid)
    centred = coords - 0.5
    oriented = F.normalize(torch.cat([centred, torch.full((grid * grid, 1), 2.0)], -1), dim=-1)
    mirrored = oriented * torch.tensor([-1.0, 1.0, 1.0])
    fg = torch.ones(1, grid * grid, dtype=torch.bool)
    image, patches = sample_triplets(fg, 500, torch.Generator().manual_seed(0))
    good = triplet_orientation_loss(oriented[None], coords, image, patches).item()
    bad = triplet_orientation_loss(mirrored[None], coords, image, patches).item()
    assert good < 0.1 and bad > 2.5


def test_triplets_come_from_the_foreground_only():
    fg = torch.zeros(3, 10, dtype=torch.bool)
    fg[0, [2, 5]] = True
    fg[2, 7] = True  # image 1 has no foreground
    image, patches = sample_triplets(fg, 8, torch.Generator().manual_seed(0))
    assert image.tolist() == [0] * 8 + [2] * 8
    assert set(patches[:8].flatten().tolist()) <= {2, 5} and set(
        patches[8:].flatten().tolist()
    ) == {7}


# --- a toy problem whose features encode the canonical surface position -----------------------

TOY_PAIRS = torch.tensor([[0, 1], [2, 3], [4, 5]])  # left/right keypoint slots


def make_toy(
    n_images: int = 48, grid: int = 8, dim: int = 32, handedness: float = 0.3, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Views of a unit-sphere object at 8 azimuth bins, orthographic, object disc of random size.

    A foreground patch's feature is a random Fourier embedding of the mirror-symmetric part of its
    canonical surface point (|x|, y, z), plus `handedness`·x along one random direction: like
    DINO, left and right look almost alike. Background patches are noise.
    """
    g = torch.Generator().manual_seed(seed)
    kps = F.normalize(
        torch.tensor(
            [
                [0.6, 0.5, 0.62],
                [-0.6, 0.5, 0.62],
                [0.8, -0.3, 0.52],
                [-0.8, -0.3, 0.52],
                [0.6, 0.0, -0.8],
                [-0.6, 0.0, -0.8],
                [0.0, 0.6, 0.8],
            ]
        ),
        dim=-1,
    )
    freq = torch.randn(3, dim // 2, generator=g) * 2.0
    mix = torch.randn(dim, dim, generator=g) / math.sqrt(dim)
    hand = torch.randn(dim, generator=g)

    def embed(p: torch.Tensor) -> torch.Tensor:
        sym = torch.stack([p[..., 0].abs(), p[..., 1], p[..., 2]], -1)
        return (
            torch.cat([torch.cos(sym @ freq), torch.sin(sym @ freq)], -1) @ mix
            + handedness * p[..., :1] * hand
        )

    centre = (torch.arange(grid) + 0.5) / grid * 2 - 1
    v, u = torch.meshgrid(centre, centre, indexing="ij")  # rows go down the image
    out = {k: [] for k in ("features", "fg", "azimuth", "patches", "visible")}
    for i in range(n_images):
        azimuth = i % 8
        theta = 2 * math.pi * azimuth / 8 + (torch.rand(1, generator=g).item() - 0.5) * 0.3
        scale = 0.75 + 0.2 * torch.rand(1, generator=g).item()
        x, y = u / scale, -v / scale
        inside = x**2 + y**2 < 1
        q = torch.stack([x, y, torch.sqrt((1 - x**2 - y**2).clamp(min=0))], -1)  # camera frame
        c, s = math.cos(theta), math.sin(theta)
        rot = torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])  # canonical → camera
        feats = torch.where(
            inside[..., None], embed(q @ rot), 0.3 * torch.randn(grid, grid, dim, generator=g)
        )
        feats = feats + 0.05 * torch.randn(grid, grid, dim, generator=g)
        kq = kps @ rot.T
        col = ((kq[:, 0] * scale + 1) / 2 * grid).floor().clamp(0, grid - 1).long()
        row = ((-kq[:, 1] * scale + 1) / 2 * grid).floor().clamp(0, grid - 1).long()
        for key, value in (
            ("features", feats.reshape(-1, dim)),
            ("fg", inside.reshape(-1)),
            ("azimuth", azimuth),
            ("patches", row * grid + col),
            ("visible", kq[:, 2] > 0.3),
        ):
            out[key].append(torch.as_tensor(value))
    return {k: torch.stack(v) for k, v in out.items()}


def toy_set(toy) -> SphereTrainingSet:
    n = len(toy["azimuth"])
    return SphereTrainingSet.from_tensors(
        toy["features"], toy["fg"], toy["azimuth"], torch.zeros(n, dtype=torch.long), 1
    )


def toy_quality(mapper, toy) -> dict:
    with torch.no_grad():
        sphere = mapper.eval()(toy["features"])
    at_kps = torch.gather(sphere, 1, toy["patches"][..., None].expand(-1, -1, 3))
    return summarise(
        same_keypoint_angles(at_kps, toy["visible"]),
        counterpart_angles(at_kps, toy["visible"], TOY_PAIRS),
        threshold=0.15,
    )


TOY_PARAMS = SphereParams(epochs=20, batch_size=16, replication=1, hidden=32, heads=2, triplets=32)


def test_training_separates_left_from_right_on_the_toy_problem():
    toy = make_toy()
    before = toy_quality(init_mapper(32, 32, 2, seed=0), toy)
    result = train_sphere(toy_set(toy), TOY_PARAMS, seed=0)
    after = toy_quality(result.mapper, toy)
    assert before["counterpart_separated"] < 0.8  # the random mapper does not separate them
    assert after["counterpart_separated"] > 0.95
    assert after["counterpart_angle_deg"] > 0.15 * 180
    assert after["keypoint_kept"] > before["keypoint_kept"]  # and the same keypoint stays together
    assert result.history[-1]["loss"] < 0.5 * result.history[0]["loss"]
    assert result.history[-1]["viewpoint"] < 0.1


class Interrupt(Exception):
    pass


def test_interrupted_training_resumes_to_identical_weights(tmp_path):
    toy = make_toy(n_images=16, grid=6, dim=16)
    params = dataclasses.replace(TOY_PARAMS, epochs=3, batch_size=8, hidden=16)
    whole = train_sphere(toy_set(toy), params, seed=1, checkpoint_dir=tmp_path / "whole")

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_sphere(
            toy_set(toy), params, seed=1, checkpoint_dir=tmp_path / "cut", on_epoch=stop_after_two
        )
    seen = []
    resumed = train_sphere(
        toy_set(toy), params, seed=1, checkpoint_dir=tmp_path / "cut", on_epoch=seen.append
    )
    assert [r["epoch"] for r in seen] == [3]  # only the missing epoch ran
    assert resumed.history == whole.history
    for name, tensor in whole.mapper.state_dict().items():
        assert torch.equal(tensor, resumed.mapper.state_dict()[name]), name
    assert not (tmp_path / "cut" / "last.pt").exists()  # a finished run leaves no checkpoint


@pytest.mark.parametrize(
    "change", ["params", "seed", "masks", "features", "finished"], ids=lambda c: c
)
def test_only_the_same_unfinished_run_resumes(tmp_path, change):
    toy = make_toy(n_images=16, grid=6, dim=16)
    params = dataclasses.replace(TOY_PARAMS, epochs=3, batch_size=8, hidden=16)

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_sphere(toy_set(toy), params, seed=1, checkpoint_dir=tmp_path, on_epoch=stop_after_two)
    if change == "finished":
        train_sphere(toy_set(toy), params, seed=1, checkpoint_dir=tmp_path)
    data, seed = toy_set(toy), 1
    if change == "params":
        params = dataclasses.replace(params, lr=1e-2)
    elif change == "seed":
        seed = 2
    elif change == "masks":
        data = dataclasses.replace(data, fg=data.fg.clone())
        data.fg[0, 0] = ~data.fg[0, 0]
    elif change == "features":
        data = dataclasses.replace(data, features_digest="0" * 64)
    seen = []
    train_sphere(data, params, seed=seed, checkpoint_dir=tmp_path, on_epoch=seen.append)
    assert [r["epoch"] for r in seen] == [1, 2, 3]


def test_history_csv(tmp_path):
    write_history(
        tmp_path / "h.csv",
        [
            {
                "epoch": 1,
                "loss": 0.5,
                "prototype": 0.25,
                "viewpoint": 0.125,
                "distance": 0.0,
                "orientation": 1.0,
            }
        ],
    )
    assert (tmp_path / "h.csv").read_text().splitlines() == [
        "epoch,loss,prototype,viewpoint,distance,orientation",
        "1,0.5,0.25,0.125,0,1",
    ]


# --- sphere points and quality ---------------------------------------------------------------


def test_points_follow_the_flat_index_and_round_trip(tmp_path):
    mapper = init_mapper(8, 8, 2, seed=0)
    maps = torch.randn(2, 8, 3, 3)  # (B, D, grid, grid)
    points = map_features(mapper, maps)
    tokens = torch.stack([torch.stack([maps[:, :, r, c] for r in range(3) for c in range(3)], 1)])
    with torch.no_grad():
        torch.testing.assert_close(points, mapper(tokens[0]))
    by_cat = compute_points(
        mapper,
        lambda cat, stem: maps[int(stem)],
        [("car", "0"), ("car", "1"), ("dog", "1")],
        batch_size=2,
    )
    write_points(tmp_path / "points", by_cat)
    reader = SpherePoints(tmp_path / "points")
    got = reader.points("dog", "1")
    assert got.dtype == torch.float32 and got.shape == (9, 3)
    torch.testing.assert_close(got, points[1])
    with pytest.raises(KeyError, match="car.safetensors.*'7'"):
        reader.points("car", "7")
    with pytest.raises(SpherePointsError, match=r"cow\.safetensors: no sphere points for"):
        reader.points("cow", "1")
    with pytest.raises(SpherePointsError, match=r"none: sphere points directory not found"):
        SpherePoints(tmp_path / "none")


def test_quality_angles_by_hand():
    # two images, slots 0/1 are a left/right pair; image 1 sees only slot 1
    points = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]], [[0, 0, 1.0], [1.0, 0, 0]]])
    visible = torch.tensor([[True, True], [False, True]])
    same = same_keypoint_angles(points, visible)
    torch.testing.assert_close(same, torch.tensor([math.pi / 2]))  # slot 1: y vs x
    cross = counterpart_angles(points, visible, torch.tensor([[0, 1]]))
    torch.testing.assert_close(cross, torch.tensor([0.0]))  # slot 0 of image 0 vs slot 1 of image 1
    figures = summarise(same, torch.tensor([0.1, 0.2 * math.pi]), threshold=0.15)
    assert figures["keypoint_kept"] == 0 and figures["counterpart_separated"] == 0.5
    assert figures["keypoint_angle_deg"] == pytest.approx(90)
    assert summarise(same, torch.zeros(0), threshold=0.15)["counterpart_angle_deg"] is None
    # scored at the filter's threshold: at 0.5·π the 90° angle is kept (inclusive, as the filter)
    # and 0.2·π no longer separates
    wide = summarise(same, torch.tensor([0.1, 0.2 * math.pi]), threshold=0.5)
    assert wide["keypoint_kept"] == 1 and wide["counterpart_separated"] == 0


def test_keypoints_map_to_their_patches():
    record = ImageRecord(
        category="car",
        name="x",
        width=200,
        height=100,
        bbox=np.zeros(4),
        keypoints=np.array([[0.0, 0.0], [199.0, 99.0], [np.nan, np.nan]]),
        visible=np.array([True, True, False]),
        azimuth_id=0,
    )
    # 200×100 → 224×112, padded by 56 rows on top: (0, 0) → (0, 56) → patch (col 0, row 4)
    assert keypoint_patches(record, 224, 16).tolist()[:2] == [4 * 16 + 0, 11 * 16 + 15]


# --- the stages, on the toy problem written in the artifact layout ----------------------------


@pytest.fixture(scope="module")
def toy_tree(tmp_path_factory):
    """A dataset tree, feature/mask shards and params in the contract layout, from the toy."""
    from PIL import Image

    root = tmp_path_factory.mktemp("sphere_stage")
    toy = make_toy(n_images=32)
    grid, size, dim = 8, 112, 32
    stems = [f"img{i:03d}" for i in range(32)]
    splits = {"trn": stems[:24], "test": stems[24:]}
    ann = root / "dataset" / "ImageAnnotation" / "toy"
    ann.mkdir(parents=True)
    for i, stem in enumerate(stems):
        centres = (
            torch.stack([toy["patches"][i] % grid, toy["patches"][i] // grid], -1) + 0.5
        ) * 14
        kps = {str(k): (centres[k].tolist() if toy["visible"][i, k] else None) for k in range(7)}
        (ann / f"{stem}.json").write_text(
            json.dumps(
                {
                    "image_width": size,
                    "image_height": size,
                    "bndbox": [0, 0, size, size],
                    "kps": kps,
                    "azimuth_id": int(toy["azimuth"][i]),
                    "symmetry_pairs": TOY_PAIRS.tolist(),
                }
            )
        )
        (root / "dataset" / "JPEGImages" / "toy").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size)).save(root / "dataset" / "JPEGImages" / "toy" / f"{stem}.jpg")
    for split, names in splits.items():
        pair_dir = root / "dataset" / "PairAnnotation" / split
        pair_dir.mkdir(parents=True)
        for k, (src, trg) in enumerate(zip(names, names[1:] + names[:1], strict=True)):
            (pair_dir / f"{k:06d}-{src}-{trg}:toy.json").write_text(
                json.dumps(
                    {
                        "category": "toy",
                        "src_imname": f"{src}.jpg",
                        "trg_imname": f"{trg}.jpg",
                        "src_bndbox": [0, 0, size, size],
                        "trg_bndbox": [0, 0, size, size],
                        "kps_ids": [],
                    }
                )
            )
    features = toy["features"].reshape(32, grid, grid, dim).permute(0, 3, 1, 2).half()
    save_shard(
        root / "features" / "dino" / "toy.safetensors",
        {s: features[i] for i, s in enumerate(stems)},
    )
    (root / "features" / "info.json").write_text(
        json.dumps(
            {
                "size": size,
                "grid": grid,
                "dino_dim": dim,
                "sd_dims": [],
                "sd": False,
                "dtype": "float16",
                "categories": ["toy"],
            }
        )
    )
    masks = toy["fg"].reshape(32, grid, grid).repeat_interleave(14, 1).repeat_interleave(14, 2)
    save_shard(
        root / "masks" / "toy.safetensors",
        {s: masks[i].to(torch.uint8) for i, s in enumerate(stems)},
    )
    raw = compose(ROOT / "conf")
    raw["sphere"].update(epochs=20, batch_size=16, replication=1, hidden=32, heads=2)
    raw["tracking"]["mlflow"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    return root


def test_sphere_stages_train_write_points_and_report_quality(toy_tree):
    pytest.importorskip("diysc.features")
    pytest.importorskip("diysc.masks")
    from click.testing import CliRunner

    from stages import sphere_points, sphere_train

    r = toy_tree
    common = [
        "--params",
        str(r / "params.yaml"),
        "--dataset",
        str(r / "dataset"),
        "--features",
        str(r / "features"),
    ]
    result = CliRunner().invoke(
        sphere_train.main,
        [
            *common,
            "--masks",
            str(r / "masks"),
            "--out",
            str(r / "sphere.pth"),
            "--checkpoints",
            str(r / "ckpt"),
            "--curve",
            str(r / "curve.csv"),
        ],
    )
    assert result.exit_code == 0, result.output
    curve = (r / "curve.csv").read_text().splitlines()
    assert len(curve) == 21 and float(curve[-1].split(",")[1]) < float(curve[1].split(",")[1])
    result = CliRunner().invoke(
        sphere_points.main,
        [
            *common,
            "--model",
            str(r / "sphere.pth"),
            "--out",
            str(r / "points"),
            "--metrics",
            str(r / "sphere.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    points = SpherePoints(r / "points").points("toy", "img030")
    assert points.shape == (64, 3)
    torch.testing.assert_close(points.norm(dim=-1), torch.ones(64))
    report = json.loads((r / "sphere.json").read_text())
    assert set(report) == {"before", "after"} and set(report["after"]) == {"trn", "test"}
    for split in ("trn", "test"):
        assert report["after"][split]["counterpart_separated"] > 0.9
        assert report["before"][split]["counterpart_separated"] < 0.8
    # scored at pseudo.sphere_threshold: at 1·π every angle is within it
    result = CliRunner().invoke(
        sphere_points.main,
        [*common, "--set", "pseudo.sphere_threshold=1.0", "--model", str(r / "sphere.pth")]
        + ["--out", str(r / "points_wide"), "--metrics", str(r / "sphere_wide.json")],
    )
    assert result.exit_code == 0, result.output
    wide = json.loads((r / "sphere_wide.json").read_text())["after"]["trn"]
    assert wide["keypoint_kept"] == 1 and wide["counterpart_separated"] == 0

    # a SphericalMaps checkpoint given as sphere.pretrained is checked and copied, not trained
    trained = torch.load(r / "sphere.pth", weights_only=True)
    torch.save({f"sphere_mapper.{k}": v for k, v in trained.items()}, r / "200.pth")
    result = CliRunner().invoke(
        sphere_train.main,
        [
            *common,
            "--masks",
            str(r / "masks"),
            "--out",
            str(r / "copied.pth"),
            "--checkpoints",
            str(r / "ckpt2"),
            "--set",
            f"sphere.pretrained={r / '200.pth'}",
        ],
    )
    assert result.exit_code == 0, result.output
    copied = torch.load(r / "copied.pth", weights_only=True)
    assert copied.keys() == trained.keys() and all(
        torch.equal(copied[k], trained[k]) for k in copied
    )
    assert not (r / "ckpt2").exists()
    result = CliRunner().invoke(
        sphere_train.main,
        [
            *common,
            "--masks",
            str(r / "masks"),
            "--out",
            str(r / "copied.pth"),
            "--checkpoints",
            str(r / "ckpt2"),
            "--set",
            "sphere.pretrained=" + str(r / "200.pth"),
            "--set",
            "sphere.hidden=64",
        ],
    )
    assert result.exit_code == 1  # a clean one-line error (diysc.errors.clean_errors)
    [line] = result.output.strip().splitlines()[-1:]
    assert line.startswith("Error: ") and "200.pth" in line and "0.weight" in line
