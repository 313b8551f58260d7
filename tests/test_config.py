"""Parameter loading, validation and composition."""

from __future__ import annotations

import math

import pytest
import yaml

from diysc.config.compose import compose
from diysc.config.load import load_params
from diysc.config.overrides import params_from_dict
from diysc.config.schema import BackboneParams, ParamsError
from tests.conftest import ROOT


def test_committed_params_yaml_is_the_composition_of_conf():
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert committed == compose(ROOT / "conf")
    assert committed["preset"] == "tiny"


def test_both_presets_validate():
    tiny = params_from_dict(compose(ROOT / "conf"))
    paper = params_from_dict(compose(ROOT / "conf", ["preset=paper"]))
    assert (list(tiny.datasets), tiny.train_dataset, tiny.eval_datasets) == (
        ["synthetic"],
        "synthetic",
        ("synthetic",),
    )
    assert (list(paper.datasets), paper.train_dataset, paper.eval_datasets) == (
        ["spair"],
        "spair",
        ("spair",),
    )
    assert paper.datasets["spair"].source == "official"


def test_backbones_are_entries_by_name_and_null_turns_one_off():
    params = ROOT / "params.yaml"
    p = load_params(params, ["features.backbones.dino.model=/models/dinov2-base"])
    assert p.features.backbones["dino"] == BackboneParams("/models/dinov2-base", 224)
    assert list(p.features.backbones) == ["sd", "dino"]  # the adapter's group order
    dino_only = load_params(params, ["features.backbones.sd=null"])
    assert list(dino_only.features.backbones) == ["dino"] and dino_only.features.size == 224
    standin = params_from_dict(compose(ROOT / "conf", ["preset=standin"]))
    assert list(standin.features.backbones) == ["dino"]  # the tiny preset's SD turned off
    with pytest.raises(ParamsError, match=r"unknown parameter 'features\.backbones\.dino\.sizes'"):
        load_params(params, ["features.backbones={dino: {model: tiny, sizes: 224}}"])
    with pytest.raises(ParamsError, match=r"'features\.backbones\.clip' must be a mapping"):
        load_params(params, ["features.backbones={clip: tiny}"])
    with pytest.raises(ParamsError, match=r"'features\.backbones' must name at least one"):
        load_params(params, ["features.backbones={}"])


def test_paper_preset_holds_the_papers_values():
    p = params_from_dict(compose(ROOT / "conf", ["preset=paper"]))
    assert p.features.backbones == {
        "sd": BackboneParams("stable-diffusion-v1-5/stable-diffusion-v1-5", 960),
        "dino": BackboneParams("facebook/dinov2-base", 840),
    }  # the adapter's group order: [s3, s4, s5, dino]
    assert (p.features.size, p.features.sd_timestep) == (840, 50)
    assert (p.mask, p.cycle, p.chaining, p.sphere_filter) == (True, "relaxed", True, True)
    assert (p.pseudo.r_max, p.pseudo.chain_length) == (2, 4)
    assert math.isclose(p.pseudo.sphere_threshold, 0.15)
    assert (p.pseudo.pairs_trn, p.pseudo.pairs_val) == (30_000, 300)
    a = p.adapter
    assert (a.channels, a.steps, a.batch_size, a.max_kps) == (768, 200_001, 1, 50)
    assert (a.lr, a.weight_decay, a.warmup, a.dropout) == (5e-3, 1e-3, 0.3, 0.2)
    assert (a.temperature, a.beta, a.noise) == (0.07, 0.02, 0.1)
    assert (a.val_every, a.val_pairs) == (25_000, 200)
    assert p.eval.alphas == (0.1, 0.05, 0.01) and p.eval.window == 15 and p.eval.beta == 0.02
    s = p.sphere
    assert (s.epochs, s.batch_size, s.lr, s.replication, s.hidden, s.heads) == (
        200,
        64,
        1e-3,
        10,
        384,
        6,
    )
    assert (s.w_prototype, s.w_viewpoint, s.w_distance, s.w_orientation) == (1.0, 0.1, 0.3, 0.3)


def test_overrides_follow_dvc_grammar():
    p = params_from_dict(compose(ROOT / "conf", ["chaining=false", "adapter.channels=384"]))
    assert p.chaining is False and p.adapter.channels == 384


def _write(tmp_path, mutate):
    raw = compose(ROOT / "conf")
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_unknown_key_is_named(tmp_path):
    path = _write(tmp_path, lambda r: r["pseudo"].update(rmax=3))
    with pytest.raises(ParamsError, match=r"unknown parameter 'pseudo\.rmax'"):
        load_params(path)
    path = _write(tmp_path, lambda r: r.update(chainin=True))
    with pytest.raises(ParamsError, match=r"unknown parameter 'chainin'"):
        load_params(path)


def test_wrong_type_is_named(tmp_path):
    path = _write(tmp_path, lambda r: r.update(chaining="yes"))
    with pytest.raises(ParamsError, match=r"'chaining' must be true or false, got 'yes'"):
        load_params(path)
    path = _write(tmp_path, lambda r: r["adapter"].update(steps=1.5))
    with pytest.raises(ParamsError, match=r"'adapter\.steps' must be an integer"):
        load_params(path)
    path = _write(tmp_path, lambda r: r["eval"].update(alphas=0.1))
    with pytest.raises(ParamsError, match=r"'eval\.alphas' must be a list"):
        load_params(path)


def test_bad_values_are_named(tmp_path):
    path = _write(tmp_path, lambda r: r.update(cycle="loose"))
    with pytest.raises(
        ParamsError, match=r"'cycle' must be one of \['none', 'strict', 'relaxed'\]"
    ):
        load_params(path)
    path = _write(tmp_path, lambda r: r["pseudo"].update(sphere_threshold=1.5))
    with pytest.raises(ParamsError, match=r"'pseudo\.sphere_threshold' must be in \(0, 1\]"):
        load_params(path)
    path = _write(tmp_path, lambda r: r["eval"].update(window=14))
    with pytest.raises(ParamsError, match=r"'eval\.window' must be odd"):
        load_params(path)
    path = _write(tmp_path, lambda r: r["adapter"].update(channels=100))
    with pytest.raises(ParamsError, match=r"'adapter\.channels' must be a multiple of 128"):
        load_params(path)


def test_cli_style_overrides(tmp_path):
    path = _write(tmp_path, lambda r: None)
    p = load_params(path, ["cycle=strict", "pseudo.r_max=3", "sphere_filter=false"])
    assert (p.cycle, p.pseudo.r_max, p.sphere_filter) == ("strict", 3, False)
    with pytest.raises(ParamsError, match=r"unknown key 'pseudo\.nope'"):
        load_params(path, ["pseudo.nope=1"])
    with pytest.raises(ParamsError, match="expected key=value"):
        load_params(path, ["chaining"])


def test_unreadable_files(tmp_path):
    with pytest.raises(ParamsError, match="parameter file not found"):
        load_params(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_a_stage_reads_only_what_dvc_yaml_declares():
    from diysc.config.stage import load_stage_params

    p = load_stage_params("sphere_points", ROOT / "params.yaml")
    assert p.sphere.hidden == 96 and p.sphere.heads == 6  # declared as sphere.hidden / sphere.heads
    assert p.tracking.experiment == "diysc"  # the MLflow mirror is always readable
    with pytest.raises(ParamsError, match=r"stage 'sphere_points' reads 'sphere\.epochs'"):
        _ = p.sphere.epochs
    with pytest.raises(ParamsError, match=r"stage 'sphere_points' reads 'chaining'"):
        bool(p.chaining)
    q = load_stage_params("pseudo_labels", ROOT / "params.yaml", ["chaining=false"])
    assert q.chaining is False and q.pseudo.r_max == 2
    with pytest.raises(ParamsError, match=r"reads 'adapter', "):  # the group is not held at all
        _ = q.adapter.lr


def test_every_read_of_an_undeclared_param_fails_naming_stage_and_key():
    """Comparisons, membership and formatting read the value too: none may silently see a
    stand-in (`cycle == "relaxed"` being False would pick the wrong branch unnoticed)."""
    from diysc.config.stage import load_stage_params

    p = load_stage_params("sphere_points", ROOT / "params.yaml")  # sphere.hidden/heads, seed
    reads = {
        "==": lambda: p.cycle == "relaxed",
        "!=": lambda: p.cycle != "none",
        "in": lambda: p.cycle in ("none", "strict", "relaxed"),
        "f-string": lambda: f"{p.cycle}",
        "bool": lambda: bool(p.mask),
        "if": lambda: 1 if p.chaining else 0,
        "nested ==": lambda: p.sphere.lr == 1e-3,
        "nested in": lambda: 0.1 in p.eval.alphas,
    }
    keys = {"nested ==": "sphere.lr", "nested in": "eval", "bool": "mask", "if": "chaining"}
    for how, read in reads.items():
        key = keys.get(how, "cycle").replace(".", r"\.")
        with pytest.raises(ParamsError, match=rf"^stage 'sphere_points' reads '{key}', "):
            read()


def test_a_partly_declared_group_cannot_be_used_whole():
    """Only `sphere.hidden` and `sphere.heads` are declared: the group as a whole would read the
    others (`epochs`, `lr`, ...)."""
    from diysc.config.schema import SphereParams
    from diysc.config.stage import load_stage_params

    p = load_stage_params("sphere_points", ROOT / "params.yaml")
    for read in (
        lambda: p.sphere == SphereParams(hidden=96),
        lambda: p.sphere != SphereParams(hidden=96),
        lambda: "hidden" in p.sphere,
        lambda: f"{p.sphere}",
        lambda: bool(p.sphere),
    ):
        with pytest.raises(ParamsError, match=r"^stage 'sphere_points' reads 'sphere', "):
            read()


def test_stage_params_are_a_copy_of_the_declared_keys_only(tmp_path):
    from diysc.config.schema import PseudoParams, TrackingParams
    from diysc.config.stage import restrict

    full = load_params(ROOT / "params.yaml")
    q = restrict(full, ["pseudo", "cycle", "ablation.label_variants.naive"], "labels")
    assert q.pseudo == full.pseudo and isinstance(q.pseudo, PseudoParams)  # a declared group whole
    assert q.cycle == "relaxed" and isinstance(q.tracking, TrackingParams)
    assert q.ablation.label_variants == {
        "naive": {"cycle": "none", "chaining": False, "sphere_filter": False}
    }  # a mapping holds its declared entries only
    assert (
        repr(q)
        == "StageParams('labels', holds ['ablation', 'cycle', 'preset', 'pseudo', 'tracking'])"
    )
    with pytest.raises(ParamsError, match=r"reads 'ablation\.seeds'"):
        _ = q.ablation.seeds
    with pytest.raises(AttributeError, match="read-only"):
        q.cycle = "none"


def test_every_stage_script_loads_its_own_stage_params():
    """Each stage script asks for its own dvc.yaml entry, so undeclared reads fail at run time (a
    stage run per dataset, `foreach`, for its `<name>@<dataset>` entry)."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for name, stage in spec["stages"].items():
        per_dataset = "foreach" in stage
        stage = stage["do"] if per_dataset else stage
        module = stage["cmd"].split()[2]  # python -m stages.<x>
        script = module.replace(".", "/") + ".py"
        source = (ROOT / script).read_text()
        loader = "load_dataset_stage_params" if per_dataset else "load_stage_params"
        if stage.get("params"):
            assert f'{loader}("{name}"' in source, f"{script} must load params of '{name}'"


def test_a_per_dataset_stage_reads_its_own_dataset_entry_only(tmp_path):
    from diysc.config.stage import load_dataset_stage_params

    name, p = load_dataset_stage_params("data", None, ROOT / "params.yaml")  # train_dataset
    assert name == "synthetic" and p.datasets["synthetic"].images_per_category == 32
    with pytest.raises(ParamsError, match=r"stage 'data@synthetic' reads 'datasets\.spair'"):
        _ = p.datasets["spair"]
    with pytest.raises(ParamsError, match=r"stage 'data@synthetic' reads 'features'"):
        _ = p.features.backbones
    name, p = load_dataset_stage_params("features", "synthetic", ROOT / "params.yaml")
    assert p.features.backbones["dino"].size == 224
    with pytest.raises(ParamsError, match=r"stage 'features@synthetic' reads 'datasets'"):
        _ = p.datasets["synthetic"]


def test_dataset_entries_are_checked(tmp_path):
    raw = compose(ROOT / "conf")
    with pytest.raises(ParamsError, match=r"'datasets\.ap10k': unknown dataset \(known: spair"):
        params_from_dict({**raw, "datasets": {**raw["datasets"], "ap10k": {}}})
    with pytest.raises(ParamsError, match=r"unknown parameter 'datasets\.synthetic\.url'"):
        params_from_dict({**raw, "datasets": {"synthetic": {"url": "x"}}})
    with pytest.raises(ParamsError, match=r"'train_dataset' must name an entry of datasets"):
        params_from_dict({**raw, "train_dataset": "spair"})
    for bad in ([], ["synthetic", "synthetic"], ["spair"]):
        with pytest.raises(
            ParamsError, match=r"'eval_datasets' must be a non-empty list of distinct"
        ):
            params_from_dict({**raw, "eval_datasets": bad})
    with pytest.raises(ParamsError, match=r"'datasets\.spair\.local\.path' must name a directory"):
        params_from_dict(
            {
                **raw,
                "datasets": {"spair": {"source": "local"}},
                "train_dataset": "spair",
                "eval_datasets": ["spair"],
            }
        )


def test_declared_params_come_from_dvcs_own_resolution(tmp_path):
    from diysc.config.stage import declared_params

    assert declared_params("sphere_points", ROOT / "dvc.yaml") == [
        "sphere.hidden",
        "sphere.heads",
        "sphere.backbone",
        "seed",
        "pseudo.sphere_threshold",
    ]
    (tmp_path / "params.yaml").write_text("eval: {split: test}\nseed: 0\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  score:\n    foreach: [a, b]\n    do:\n      cmd: echo ${item}\n"
        "      params: [eval, seed]\n"
    )
    assert declared_params("score@b", tmp_path / "dvc.yaml") == ["eval", "seed"]  # foreach expanded
    with pytest.raises(ParamsError, match=r"dvc\.yaml: no stage 'score'$"):
        declared_params("score", tmp_path / "dvc.yaml")
    with pytest.raises(ParamsError, match=r"missing\.yaml: not found"):
        declared_params("score", tmp_path / "missing.yaml")
