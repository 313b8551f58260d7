"""The offline stand-in for DINOv2: its targets, its registry entry, and the trained model's
properties (semantic, blind to left/right symmetry) and zero-shot PCK on the synthetic data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diysc import standin
from diysc.backbones import registry
from diysc.config.compose import compose
from diysc.config.overrides import params_from_dict
from diysc.data.spair import SPairDataset
from diysc.datasets.synthetic.generator import generate, sample_view
from diysc.evaluation.run import evaluate, select_pairs, zero_shot_describer
from diysc.evaluation.symmetry import confusion_by_azimuth, feature_affinities
from diysc.feature_extraction import extract_features
from diysc.features import FeatureStore
from diysc.geometry import ResizePad
from diysc.provenance import code_digest, import_closure

from .conftest import ROOT


def _embedding() -> standin.Embedding:
    return standin.embedding(standin.RECIPE)


def test_the_embedding_is_a_gaussian_kernel_of_folded_position():
    embed = _embedding()
    rng = np.random.default_rng(0)
    a = np.zeros((400, standin.VECTOR))
    a[:, :3] = rng.uniform(-0.8, 0.8, (400, 3))
    b = a.copy()
    b[:, :3] += rng.normal(0, 1, (400, 3)) * np.linspace(0, 0.6, 400)[:, None]
    dots = (embed(a) * embed(b)).sum(-1).numpy()
    distance2 = ((a - b) ** 2).sum(1)
    kernel = np.exp(-distance2 / (2 * standin.RECIPE["bandwidth"] ** 2))
    assert np.allclose((embed(a) ** 2).sum(-1).numpy(), 1.0)
    # 21 random frequencies: a Monte-Carlo kernel estimate, close on average, ordered like it.
    assert abs(dots - kernel).mean() < 0.1
    assert np.corrcoef(dots, kernel)[0, 1] > 0.9
    background = np.zeros((1, standin.VECTOR))
    background[0, 6] = 1.0
    assert float((embed(background) * embed(a[:1])).sum()) < 0.3


def test_targets_fold_left_and_right_and_mark_the_background():
    view = sample_view("car", standin._training_rng("car", 3, 0), 2, 256)
    size, grid, sub = 224, 16, 2
    vectors = standin.target_vectors(view, size, grid, sub, standin.RECIPE["anchor_width"])
    assert vectors.shape == (grid, grid, sub * sub, standin.VECTOR)
    on_object = vectors[..., 6] == 0
    assert on_object.any() and (~on_object).any()
    assert (vectors[on_object][:, 0] >= 0).all()  # folded: |x|
    assert (np.linalg.norm(vectors[on_object][:, :3], axis=1) <= 1 + 1e-9).all()
    assert np.allclose(np.linalg.norm(vectors[on_object][:, 3:6], axis=1), 1.0)
    assert (vectors[~on_object][:, :6] == 0).all()
    assert (vectors[~on_object][:, 7:] == 0).all()  # no part channels off the object
    # The object share of the rays is the mask's share of the padded frame's patches.
    frame = ResizePad(view.mask.shape[1], view.mask.shape[0], size)
    picture = np.prod(frame.new_size) / size**2  # share of the padded frame the image covers
    assert abs(on_object.mean() - view.mask.mean() * picture) < 0.05


def test_a_keypoint_and_its_counterpart_get_the_same_target_position():
    """Folding maps a left keypoint's 3D position onto its right counterpart's."""
    from diysc.datasets.synthetic.shapes import FAMILIES, build

    for category, family in FAMILIES.items():
        model = build(category, np.random.default_rng(5))
        for left, right in family.symmetry_pairs:
            a, b = model.keypoints[left].copy(), model.keypoints[right].copy()
            a[0], b[0] = abs(a[0]), abs(b[0])
            assert np.allclose(a, b, atol=1e-9), (category, family.names[left])


def test_part_channels_peak_at_a_keypoint_and_its_counterpart_alike():
    """The keypoint-class channels: 1 at any keypoint of the class, left or right, decaying with
    folded 3D distance, and only in the category's own block."""
    from diysc.datasets.synthetic.shapes import FAMILIES, build

    width = standin.RECIPE["anchor_width"]
    blocks = standin.KEYPOINT_CLASSES
    assert standin.ANCHORS == sum(max(c) + 1 for _, c in blocks.values())
    for category, family in FAMILIES.items():
        model = build(category, np.random.default_rng(3))
        first, classes = blocks[category]
        for left, right in family.symmetry_pairs:
            assert classes[left] == classes[right], family.names[left]
        points = model.keypoints.copy()
        points[:, 0] = np.abs(points[:, 0])
        bumps = standin.keypoint_bumps(model, points, width)
        own = bumps[np.arange(len(points)), [first + c for c in classes]]
        assert np.allclose(own, 1.0), category
        outside = np.ones(standin.ANCHORS, bool)
        outside[first : first + max(classes) + 1] = False
        assert (bumps[:, outside] == 0).all()
        # one bump width away (in bounding radii) from the first keypoint: exp(-1/2)
        away = points[:1] + np.array([[0.0, width * model.radius, 0.0]])
        value = standin.keypoint_bumps(model, away, width)[0, first + classes[0]]
        assert value >= np.exp(-0.5) - 1e-9  # another keypoint of the class may be nearer


def test_the_registry_names_the_standin_and_passes_other_references_through(tmp_path):
    assert registry.is_built("standin", "dino") and registry.is_built("tiny", "dino")
    assert not registry.is_built("facebook/dinov2-base", "dino")
    assert registry.resolve("facebook/dinov2-base", "dino") == "facebook/dinov2-base"
    assert registry.resolve(str(tmp_path), "sd") == str(tmp_path)


def test_the_standin_cache_key_follows_the_recipe_and_the_code():
    key = standin.cache_key(standin.RECIPE)
    assert key["code"] == code_digest("diysc.standin")
    assert key == standin.cache_key(dict(standin.RECIPE))
    assert standin.cache_key({**standin.RECIPE, "steps": 1}) != key
    # The renderer is part of the recipe's code: the stand-in is retrained when it changes.
    closure = {p.as_posix() for p in import_closure("diysc.standin")}
    renderer = ("render.py", "shapes.py", "generator.py")
    assert {f"diysc/datasets/synthetic/{name}" for name in renderer} <= closure


# --- the trained stand-in (trained once per session cache: minutes) -------------------------------


@pytest.fixture(scope="module")
def standin_world(tiny_cache, tmp_path_factory):
    """The standin preset's dataset and stand-in features of it."""
    root = tmp_path_factory.mktemp("standin")
    params = params_from_dict(compose(ROOT / "conf", ["preset=standin"]))
    assert {n: b.model for n, b in params.features.backbones.items()} == {"dino": "standin"}
    generate(root / "dataset", params.datasets["synthetic"])
    dataset = SPairDataset(root / "dataset")
    extract_features(dataset, params.features, root / "features", progress=False)
    return dataset, FeatureStore(root / "features")


@pytest.mark.slow
def test_standin_features_are_semantic_and_blind_to_symmetry(standin_world):
    dataset, store = standin_world
    images = {cat: dataset.split_images("test", cat) for cat in dataset.categories}
    figures = feature_affinities(
        dataset, images, zero_shot_describer(store), store.size, store.grid
    )
    # Measured with the committed recipe (docs/synthetic.md): same 0.72, counterpart 0.73, other
    # 0.64. Random tiny DINO: 0.11 / 0.14 / 0.09, the same keypoint the closer in 54 % of cases.
    # The margins are small: the stand-in is only weakly semantic.
    # Semantic: the same keypoint on another instance is closer than the other keypoints.
    assert figures["same_cosine"] > figures["other_cosine"] + 0.03, figures
    assert figures["same_closer"] > 0.58, figures
    # Symmetry-blind: the left/right counterpart is as close as the keypoint itself.
    assert figures["counterpart_cosine"] > figures["other_cosine"] + 0.03, figures
    assert abs(figures["counterpart_cosine"] - figures["same_cosine"]) < 0.02, figures


@pytest.mark.slow
def test_zero_shot_pck_of_the_standin_is_far_above_chance(standin_world):
    dataset, store = standin_world
    pairs = select_pairs(dataset, "test")
    outcomes = evaluate(
        dataset,
        pairs,
        {"zero_shot": zero_shot_describer(store)},
        store.size,
        store.grid,
        [0.1],
        progress=False,
    )["zero_shot"]
    # Chance: a prediction uniform over the picture lands within 0.1·bbox side of the keypoint
    # with probability ≤ the disc's share of the picture's area.
    chance = []
    for outcome in outcomes:
        trg = dataset.image(outcome.truth.category, outcome.truth.trg)
        area = np.prod(ResizePad(trg.width, trg.height, store.size).new_size)
        share = math.pi * (0.1 * outcome.truth.threshold) ** 2 / area
        chance += [share] * len(outcome.truth.slots)
    pck = np.concatenate([o.correct[0] for o in outcomes]).mean()
    # Measured: 4.7 % against a chance of about 1.2 % (random tiny DINO: about 1 %). Not the
    # "far above chance" the stand-in was built for: docs/synthetic.md, "What it measures".
    assert pck > 2.5 * np.mean(chance), (pck, np.mean(chance))


def test_counterpart_confusions_are_counted_where_the_prediction_hits_the_mirrored_part():
    from diysc.data.spair import ImageRecord
    from diysc.evaluation.pck import PairKeypoints, outcome

    keypoints = np.full((30, 2), np.nan)
    keypoints[0], keypoints[1], keypoints[2] = (10, 10), (90, 10), (50, 90)
    visible = ~np.isnan(keypoints[:, 0])
    record = ImageRecord(
        "car", "t", 100, 100, np.array([0, 0, 100, 100.0]), keypoints, visible, 0,
        {"symmetry_pairs": [[0, 1]]},
    )  # fmt: skip

    class Images:
        def image(self, category, stem):
            return record

    truth = PairKeypoints(
        "p", "car", "s", "t", np.array([0, 1, 2]), keypoints[:3], keypoints[:3], 100.0, 3, None
    )
    # slot 0 predicted on slot 1 (its counterpart), slot 1 right, slot 2 on slot 0 (not mirrored)
    pred = np.array([[91, 11], [90, 10], [10, 10]], dtype=float)
    figures = confusion_by_azimuth(Images(), [outcome(truth, pred, [0.1])], 100, 0.1)
    assert figures["3"] == figures["all"]
    assert figures["all"]["keypoints"] == 3 and figures["all"]["pck"] == pytest.approx(1 / 3)
    assert figures["all"]["confused"] == 1 and figures["all"]["at_risk"] == 2
    assert figures["all"]["confused_share_of_errors"] == 0.5
