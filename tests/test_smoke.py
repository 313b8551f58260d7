"""`preset=smoke`: its composition (the paper's shapes), its real-layout local data source, and a
cut-down CPU run of its code path through every stage of dvc.yaml."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from dvc.repo import Repo
from PIL import Image, ImageOps

from diysc.config.compose import compose
from diysc.config.load import load_params
from diysc.config.overrides import params_from_dict
from diysc.config.schema import LocalParams, ParamsError
from diysc.data.spair import SPAIR_COUNTERPARTS, DatasetError, SPairDataset
from diysc.datasets.spair.local import MIRROR_SUFFIX, mirror_annotation, prepare_local
from tests.conftest import ROOT

SAMPLE_CATEGORIES = ("aeroplane", "cow", "dog", "horse", "motorbike", "pottedplant")


def smoke(*overrides: str):
    return params_from_dict(compose(ROOT / "conf", ["preset=smoke", *overrides]))


def sample_params(spair_sample, **changes) -> LocalParams:
    return LocalParams(**{"path": str(spair_sample), "masks": "extra/odise_masks", **changes})


@pytest.fixture(scope="module")
def built(spair_sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke-data") / "dataset"
    counts = prepare_local(out, sample_params(spair_sample))
    return out, counts


# --- composition -------------------------------------------------------------------------------


def test_smoke_composes_to_the_papers_shapes():
    from diffusers import UNet2DConditionModel
    from transformers import Dinov2Config

    from diysc.backbones import paper_size, registry

    p, paper = smoke(), smoke("preset=paper")
    assert p.preset == "smoke" and paper.preset == "paper"
    sizes = {name: b.size for name, b in p.features.backbones.items()}
    assert sizes == {name: b.size for name, b in paper.features.backbones.items()}
    assert (p.features.dtype, p.adapter.channels) == (paper.features.dtype, paper.adapter.channels)
    assert (sizes, p.features.size, p.adapter.channels) == ({"sd": 960, "dino": 840}, 840, 768)
    assert (list(p.datasets), p.train_dataset, p.eval_datasets) == (["spair"], "spair", ("spair",))
    spair = p.datasets["spair"]
    assert (spair.source, p.masks.source) == ("local", "dataset")
    assert spair.local == LocalParams("tests/fixtures/spair_sample", "extra/odise_masks", True)
    assert 100 <= p.adapter.steps <= 1000 and p.ablation.seeds == (0,)
    models = {name: b.model for name, b in p.features.backbones.items()}
    assert registry.built("dino")[models["dino"]] == "diysc.backbones.paper_size:random_dino"
    assert registry.built("sd")[models["sd"]] == "diysc.backbones.paper_size:random_sd"
    # The random models have the real architectures: DINOv2-B/14 gives a 60 x 60 grid of 768
    # channels at 840 px; the SD-1.5 UNet's s3 / s4 / s5 (sd.py) have 640 / 1280 / 1280 channels,
    # s3 on a 60 x 60 grid at 960 px (latent 120, halved). Built on the meta device: no weights.
    dino = Dinov2Config(**paper_size.DINO_CONFIG)
    assert (dino.hidden_size, dino.num_hidden_layers, dino.num_attention_heads) == (768, 12, 12)
    assert sizes["dino"] // dino.patch_size == 60
    with torch.device("meta"):
        unet = UNet2DConditionModel(**paper_size.SD_UNET_CONFIG)
    sd_dims = [unet.up_blocks[i].resnets[-2].out_channels for i in range(3)]  # s5, s4, s3
    assert sd_dims == [1280, 1280, 640]
    assert dino.hidden_size + sum(sd_dims) == 3968
    assert sizes["sd"] // 8 // 2 == 60
    assert 850e6 < sum(x.numel() for x in unet.parameters()) < 870e6  # SD-1.5's 860 M


def test_smoke_ablations_compose(tmp_path):
    """The ablation pipelines resolve against the smoke params (their matrices need entries)."""
    from dvc.repo import Repo

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(compose(ROOT / "conf", ["preset=smoke"])))
    pipelines = [
        Path("dvc.yaml"),
        *(p.relative_to(ROOT) for p in ROOT.glob("ablations/*/dvc.yaml")),
    ]
    for name in pipelines:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text((ROOT / name).read_text())
    with Repo(str(tmp_path), uninitialized=True) as repo:
        names = {s.name for s in repo.index.stages if "ablations" in Path(s.path).parts}
    assert {"train_adapters@channels_384-0", "pseudo_labels@naive-0", "ablation_tables"} <= names


def test_smoke_data_source_reads_the_sample_through_the_reader(built, spair_sample):
    out, counts = built
    # 6 categories x (2 images + 2 mirrors): 12 ordered pairs each for trn and val; the sample's
    # own 12 test pairs, unchanged.
    assert counts == {"trn": 72, "val": 72, "test": 12}
    dataset = SPairDataset(out)
    assert dataset.categories == SAMPLE_CATEGORIES
    for cat in SAMPLE_CATEGORIES:
        originals = SPairDataset(spair_sample).images(cat)
        assert len(originals) == 2
        assert dataset.images(cat) == sorted([*originals, *(s + MIRROR_SUFFIX for s in originals)])
        assert dataset.split_images("trn", cat) == dataset.images(cat)
        assert dataset.split_images("test", cat) == originals
    for path in SPairDataset(spair_sample).pair_files("test"):
        assert (out / "PairAnnotation" / "test" / path.name).read_bytes() == path.read_bytes()
    # mirrored copies add azimuth bins: the cow's 6, 7 become 1, 0, so 4-image chains exist
    cow = sorted(dataset.image("cow", s).azimuth_id for s in dataset.images("cow"))
    assert cow == [0, 1, 6, 7]


def test_the_params_validator_names_the_local_keys(tmp_path):
    with pytest.raises(ParamsError, match=r"'datasets\.spair\.local\.path' must name a directory"):
        smoke("datasets.spair.local.path=")
    with pytest.raises(
        ParamsError, match=r"'datasets\.spair\.local\.masks' must be a folder inside"
    ):
        smoke("datasets.spair.local.masks=../masks")
    raw = compose(ROOT / "conf", ["preset=smoke"])
    raw["datasets"]["spair"]["local"]["mirrored"] = True
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"unknown parameter 'datasets\.spair\.local\.mirrored'"):
        load_params(path)


def test_smoke_needs_nothing_but_the_checkout(monkeypatch, tmp_path):
    """`diysc check -S preset=smoke` offline, without a GPU: the sample is the only prerequisite
    (the random backbones are generated locally, so no hub and no GPU are asked for)."""
    from diysc import prerequisites

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("DIYSC_DEVICE", raising=False)
    found = prerequisites.check(smoke())
    assert [(p.what, p.ok) for p in found] == [
        ("datasets.spair.local.path=tests/fixtures/spair_sample", True)
    ]
    (tmp_path / "not-spair").mkdir()
    with pytest.raises(prerequisites.PrerequisitesError) as caught:
        prerequisites.require(smoke(f"datasets.spair.local.path={tmp_path / 'not-spair'}"))
    assert f"local.path={tmp_path / 'not-spair'} (no ImageAnnotation/ in it)" in str(caught.value)


@pytest.mark.slow
def test_random_backbones_load_like_real_weights_at_the_real_sizes(tiny_cache):
    """Built once into the cache (`tiny.materialise`), then loaded through the same loaders as
    downloaded weights; the DINOv2-B forward at 840 px gives the paper's 768 x 60 x 60."""
    from diysc.backbones import dino, registry, sd

    directory = registry.resolve("random-dinov2-base", "dino")
    assert directory.startswith(str(tiny_cache)) and (Path(directory) / "config.json").is_file()
    assert registry.resolve("random-dinov2-base", "dino") == directory  # built once
    extractor = dino.DINOv2(dino.DINOv2.load_model("random-dinov2-base", "p"), 840, "cpu", "p")
    assert sum(p.numel() for p in extractor.model.parameters()) == pytest.approx(86.6e6, rel=0.01)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8))
    feats = extractor(extractor.preprocess(image)[None])[""]
    assert feats.shape == (1, 768, 60, 60) and torch.isfinite(feats).all()
    unet, vae, text, tokenizer, _ = sd.load_pipeline_parts("random-sd15", "p")
    counts = [sum(p.numel() for p in m.parameters()) / 1e6 for m in (unet, vae, text)]
    assert counts == [pytest.approx(859.5, rel=0.01), pytest.approx(83.7, rel=0.01),
                      pytest.approx(123.1, rel=0.01)]  # fmt: skip
    context = sd.empty_prompt_embedding(text, tokenizer)
    assert context.shape == (1, 77, 768)


# --- the local source: copies, mirrors, errors --------------------------------------------------


def test_mirrored_annotation_flips_geometry_and_swaps_left_and_right(spair_sample):
    raw = json.loads((spair_sample / "ImageAnnotation/cow/2009_003189.json").read_text())
    m = mirror_annotation(raw, "cow", "2009_003189")
    width = raw["image_width"]  # 332
    assert m["bndbox"] == [width - 216, 150, width - 63, 414]
    assert m["azimuth_id"] == 7 - 7 and m["filename"] == "2009_003189_mirror.jpg"
    # slots 0/1 (left/right eye) swap: the mirrored left eye is the original right one, flipped
    assert m["kps"]["0"] == [width - 186, 209] and m["kps"]["1"] == [width - 121, 213]
    assert m["kps"]["8"] == [width - 161, 286]  # on the symmetry plane: same slot
    assert m["kps"]["16"] == [width - 121, 345] and m["kps"]["15"] == [width - 159, 358]
    assert m["kps"]["12"] == [width - 122, 391] and m["kps"]["13"] is None
    assert mirror_annotation(raw | {"pose": "Left"}, "cow", "x")["pose"] == "Right"
    twice = mirror_annotation(m, "cow", "2009_003189")
    assert twice["kps"] == raw["kps"] and twice["bndbox"] == raw["bndbox"]
    assert twice["azimuth_id"] == raw["azimuth_id"]


def test_mirrored_pixels_masks_and_keypoints_agree(built, spair_sample):
    out, _ = built
    dataset = SPairDataset(out)
    for stem in ("2007_005797", "2009_003189"):
        original = dataset.load_image("cow", stem)
        mirrored = dataset.load_image("cow", stem + MIRROR_SUFFIX)  # size checked by the reader
        diff = np.abs(
            np.asarray(ImageOps.mirror(original), dtype=np.int16)
            - np.asarray(mirrored, dtype=np.int16)
        )
        assert diff.mean() < 3  # one JPEG re-encoding at quality 95
        mask = np.asarray(Image.open(out / "Segmentation/cow" / f"{stem}.png"))
        mask_m = np.asarray(Image.open(out / "Segmentation/cow" / f"{stem}{MIRROR_SUFFIX}.png"))
        assert set(np.unique(mask)) == {0, 255} and np.array_equal(mask_m, mask[:, ::-1])
        odise = np.asarray(Image.open(spair_sample / "extra/odise_masks/cow" / f"{stem}.jpg"))
        assert np.array_equal(mask > 0, (odise if odise.ndim == 2 else odise[..., 0]) > 127)
        # every visible keypoint of the mirror lands where its counterpart's does, flipped
        rec, rec_m = dataset.image("cow", stem), dataset.image("cow", stem + MIRROR_SUFFIX)
        swap = dict(SPAIR_COUNTERPARTS["cow"]) | {j: i for i, j in SPAIR_COUNTERPARTS["cow"]}
        for slot in np.flatnonzero(rec_m.visible):
            x, y = rec.keypoints[swap.get(slot, slot)]
            assert np.allclose(rec_m.keypoints[slot], [rec.width - x, y])


def test_built_pairs_list_the_keypoints_visible_in_both(built):
    out, _ = built
    dataset = SPairDataset(out)
    pairs = dataset.pairs("val", "dog")
    assert len(pairs) == 12 and len({(p.src, p.trg) for p in pairs}) == 12
    for pair in pairs:
        src, trg = dataset.image("dog", pair.src), dataset.image("dog", pair.trg)
        assert pair.kps_ids == tuple(np.flatnonzero(src.visible & trg.visible))
        assert np.array_equal(pair.src_bbox, src.bbox)
    layout = (out / "Layout/large/val.txt").read_text().split()
    assert sorted(layout) == sorted(p.stem for p in dataset.pair_files("val"))


def test_built_splits_skip_pairs_without_a_common_keypoint(spair_sample, tmp_path):
    """As in SPair, every pair shares a keypoint: two cows with disjoint visible keypoints make
    no pair of each other (the official test pairs are copied as they are)."""
    import shutil

    tree = tmp_path / "tree"
    shutil.copytree(spair_sample, tree)
    files = sorted((tree / "ImageAnnotation" / "cow").glob("*.json"))
    first, second = (json.loads(f.read_text()) for f in files)
    shown = [k for k, xy in first["kps"].items() if xy]
    second["kps"] = {k: (None if k in shown else xy) for k, xy in second["kps"].items()}
    assert any(second["kps"].values())  # the second cow keeps keypoints of its own
    files[1].write_text(json.dumps(second))
    counts = prepare_local(tmp_path / "d", sample_params(tree, mirror=False, masks=""))
    assert counts == {"trn": 10, "val": 10, "test": 12}
    dataset = SPairDataset(tmp_path / "d")
    assert dataset.pairs("trn", "cow") == [] and len(dataset.pairs("trn", "dog")) == 2


def test_without_mirrors_or_masks(spair_sample, tmp_path):
    counts = prepare_local(tmp_path / "d", sample_params(spair_sample, mirror=False, masks=""))
    assert counts == {"trn": 12, "val": 12, "test": 12}  # 2 ordered pairs per category
    assert not list((tmp_path / "d" / "Segmentation").rglob("*.png"))  # the sample has none


def test_a_tree_with_every_split_is_used_as_is(spair_sample, tmp_path):
    """Mirrors only feed built splits: with trn, val and test pairs given, nothing is added."""
    import shutil

    tree = tmp_path / "tree"
    shutil.copytree(spair_sample, tree)
    for split in ("trn", "val"):
        shutil.copytree(tree / "PairAnnotation/test", tree / "PairAnnotation" / split)
    counts = prepare_local(tmp_path / "d", sample_params(tree))
    assert counts == {"trn": 12, "val": 12, "test": 12}
    assert not list((tmp_path / "d" / "JPEGImages").rglob(f"*{MIRROR_SUFFIX}.jpg"))
    assert len(list((tmp_path / "d" / "Segmentation").rglob("*.png"))) == 12


def test_errors_name_the_path(spair_sample, tmp_path):
    with pytest.raises(
        DatasetError, match=f"{tmp_path / 'none'}: datasets.spair.local.path is not a dir"
    ):
        prepare_local(tmp_path / "out", sample_params(tmp_path / "none"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=f"{tmp_path / 'empty'}: not an SPair-71k tree"):
        prepare_local(tmp_path / "out", sample_params(tmp_path / "empty"))
    with pytest.raises(
        DatasetError, match="extra/nothing: datasets.spair.local.masks is not a directory"
    ):
        prepare_local(tmp_path / "out", sample_params(spair_sample, masks="extra/nothing"))
    # a copy of the sample with a broken annotation, a missing mask, a mask of the wrong size
    import shutil

    tree = tmp_path / "tree"
    shutil.copytree(spair_sample, tree)
    (tree / "extra/odise_masks/dog/2009_001225.jpg").unlink()
    with pytest.raises(DatasetError, match=r"odise_masks/dog/2009_001225\.png\|\.jpg: mask file"):
        prepare_local(tmp_path / "out", sample_params(tree))
    Image.new("L", (10, 10)).save(tree / "extra/odise_masks/dog/2009_001225.jpg")
    with pytest.raises(DatasetError, match=r"2009_001225\.jpg: mask is 10x10 px, image is 500x375"):
        prepare_local(tmp_path / "out", sample_params(tree))
    (tree / "ImageAnnotation/horse/2008_007277.json").write_text("{")
    with pytest.raises(DatasetError, match=r"horse/2008_007277\.json: not valid JSON"):
        prepare_local(tmp_path / "out", sample_params(tree))
    assert not (tmp_path / "out").exists()  # nothing half-built is left


def test_mirroring_needs_the_counterpart_table(spair_sample, tmp_path):
    import shutil

    tree = tmp_path / "tree"
    shutil.copytree(spair_sample, tree, ignore=shutil.ignore_patterns("*:cow.json"))
    for folder in ("ImageAnnotation", "JPEGImages", "extra/odise_masks"):
        (tree / folder / "cow").rename(tree / folder / "cattle")
    with pytest.raises(DatasetError, match=r"categories \['cattle'\] have no left/right keypoint"):
        prepare_local(tmp_path / "out", sample_params(tree))
    counts = prepare_local(tmp_path / "out", sample_params(tree, mirror=False))
    assert counts == {"trn": 12, "val": 12, "test": 10}


def test_data_stage_local_source(spair_sample, tmp_path):
    from click.testing import CliRunner

    from stages.data import main

    # the smoke params, beside the dvc.yaml that declares each stage's params
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(compose(ROOT / "conf", ["preset=smoke"])))
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    args = ["--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "dataset")]
    sets = [f"datasets.spair.local.path={spair_sample}", "datasets.spair.local.mirror=false"]
    result = CliRunner().invoke(main, [*args, *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    assert (
        f"data: spair at {tmp_path / 'dataset'}" in result.output
        and "pairs trn 12, val 12, test 12" in result.output
    )
    missing = tmp_path / "missing"
    sets[0] = f"datasets.spair.local.path={missing}"
    result = CliRunner().invoke(main, [*args, *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code != 0
    assert f"local.path={missing} (no such directory)" in result.output  # the prerequisite
    result = CliRunner().invoke(main, [*args, "--source", str(tmp_path)])
    assert result.exit_code != 0
    assert "--source applies to datasets.spair.source=official only" in result.output


# --- a cut-down CPU run of the smoke preset's code path -------------------------------------------

# Only what is expensive shrinks: the backbones (tiny, same code path), image sizes, steps, epochs.
# The local real-layout data source, the split construction, the dataset masks and the adapter
# width stay the smoke preset's.
CUT_DOWN = [
    "features.backbones={sd: {model: tiny, size: 256}, dino: {model: tiny, size: 224}}",
    "sphere.epochs=2",
    "pseudo.pairs_trn=8",
    "pseudo.pairs_val=4",
    "adapter.steps=20",
    "adapter.val_every=10",
    "adapter.val_pairs=4",
    "adapter.checkpoint_every=10",
    "eval.match_images=1",
    "tracking.mlflow=false",
]


@pytest.mark.slow
def test_cut_down_smoke_run_through_every_stage(tmp_path, tiny_cache):
    """Every stage of dvc.yaml, with its own command line, on the smoke params (cut down)."""
    raw = compose(ROOT / "conf", ["preset=smoke", *CUT_DOWN])
    local = raw["datasets"]["spair"]["local"]
    local["path"] = str(ROOT / local["path"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    (tmp_path / "stages").symlink_to(ROOT / "stages")
    env = {**__import__("os").environ, "DIYSC_DEVICE": "cpu", "PYTHONPATH": str(ROOT)}
    outputs = {}
    with Repo(str(tmp_path), uninitialized=True) as repo:  # the commands as DVC resolves them
        commands = {stage.name: stage.cmd for stage in repo.index.stages}
    for name, cmd in commands.items():
        argv = shlex.split(cmd)
        argv[0] = sys.executable
        run = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert run.returncode == 0, f"{name}: {run.stdout}\n{run.stderr}"
        outputs[name] = run.stdout
    assert "pairs trn 72, val 72, test 12" in outputs["data@spair"]
    info = json.loads((tmp_path / "data/spair/features/info.json").read_text())
    assert info["categories"] == list(SAMPLE_CATEGORIES) and info["grid"] == 16
    labels = json.loads((tmp_path / "metrics/pseudo_labels.json").read_text())
    assert labels["trn"]["pairs"] > 0 and labels["val"]["pairs"] > 0
    train = json.loads((tmp_path / "metrics/train.json").read_text())
    assert train["steps"] == 20 and train["adapter"]["channels"] == 768 and train["train_pairs"] > 0
    evaluation = json.loads((tmp_path / "metrics/spair/eval.json").read_text())
    # the sample's 12 real test pairs, every one of their 86 keypoints, per category
    for method in ("zero_shot", "adapter"):
        assert evaluation[method]["pairs"] == 12 and evaluation[method]["keypoints"] == 86
        assert sorted(evaluation[method]["per_category"]) == list(SAMPLE_CATEGORIES)
    assert (tmp_path / "metrics/headline.json").is_file()
