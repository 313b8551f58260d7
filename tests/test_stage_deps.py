"""Each DVC stage's deps are the code it runs, so that any change to that code reruns it.

The stages come from DVC's own resolution of `dvc.yaml` and `ablations/*/dvc.yaml` (templating and
`foreach` expanded by DVC). For each, the project code among its deps must be exactly its script and
the script's import closure (`diysc.stage_deps.expected_code_deps`: every import statement, module
and function level, and the closures of the modules a script names in `CODE_DEPS`, the code it
records digests of without importing it), in the order `diysc deps` writes them: none missing (DVC
would keep a stale result) and none extra (an unrelated change would rerun an hours-long stage).

A dataset's own code (`diysc/datasets/<name>/`) is loaded by name, so it is in no script's closure:
a stage run per dataset (`<stage>@<name>`) lists it itself, its package folder or its reader
(`__init__.py`), and the modules the datasets' code of that kind imports join the listed closure.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo

from diysc.cli import main
from diysc.provenance import import_closure
from diysc.stage_deps import DATASETS, expected_code_deps, is_code, pipeline_files, script_of

ROOT = Path(__file__).resolve().parents[1]


def resolved_stages(root: Path = ROOT) -> list[dict]:
    with Repo(str(root)) as repo:
        stages = []
        for stage in repo.index.stages:
            wdir = Path(stage.wdir)
            paths, params = [], set()
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    params.update(dep.params if Path(dep.def_path).name == "params.yaml" else [])
                else:
                    paths.append((wdir / dep.def_path).resolve().relative_to(root.resolve()))
            stages.append(
                {
                    "name": stage.addressing,
                    "file": Path(stage.path).resolve(),
                    "script": script_of(stage.cmd),
                    "deps": paths,
                    "params": params,
                }
            )
        return stages


STAGES = resolved_stages()


def own_dataset_code(stage: dict) -> tuple[Path | None, str | None]:
    """A per-dataset stage's dep on its dataset's own code (resolved from `diysc/datasets/${key}`
    or `.../${key}/__init__.py`) and which kind it is; (None, None) for other stages."""
    name = stage["name"].rpartition("@")[2] if "@" in stage["name"] else None
    if name is None:
        return None, None
    for dep, kind in ((DATASETS / name, "build"), (DATASETS / name / "__init__.py", "reader")):
        if dep in stage["deps"]:
            return dep, kind
    return None, None


@pytest.mark.parametrize("stage", STAGES, ids=[s["name"] for s in STAGES])
def test_code_deps_are_exactly_the_import_closure_of_the_stage_script(stage):
    assert stage["script"] is not None, f"{stage['name']}: its cmd runs no `python -m stages.<x>`"
    assert stage["file"] in [f.resolve() for f in pipeline_files(ROOT)], (
        f"{stage['name']}: `diysc deps` does not cover {stage['file']} (diysc.stage_deps.PIPELINES)"
    )
    own, kind = own_dataset_code(stage)
    expected = expected_code_deps(stage["script"], ROOT, kind)
    assert len(expected) > 1, f"{stage['script']} imports nothing from diysc"
    code = [d for d in stage["deps"] if is_code(d)]
    if own is not None:  # listed after the closure (the features' closure may hold it too)
        del code[len(code) - 1 - code[::-1].index(own)]
        modules = [own] if kind == "reader" else sorted((ROOT / own).rglob("*.py"))
        runs = {f for module in modules for f in import_closure(ROOT / module, ROOT)}
        uncovered = [str(f) for f in sorted(runs) if f not in code and own not in (f, *f.parents)]
        assert not uncovered, f"{stage['name']}: its dataset's code imports {uncovered}"
    missing = [str(f) for f in expected if f not in code]
    extra = [str(f) for f in code if f not in expected]
    hint = " (run `diysc deps`)"
    assert not missing, f"{stage['name']}: dvc.yaml deps miss {missing}{hint}"
    assert not extra, f"{stage['name']}: deps on code it does not import: {extra}{hint}"
    assert code == expected, f"{stage['name']}: code deps out of order{hint}"


def test_the_backbones_stage_depends_on_the_code_its_script_names_in_code_deps():
    """`stages/backbones.py` imports no backbone, yet records digests of their code: `diysc deps`
    gives it every registered backbone and builder (CODE_DEPS), and `features` none of them."""
    script = Path("stages/backbones.py")
    assert Path("diysc/backbones/clip.py") not in import_closure(ROOT / script, ROOT)
    [stage] = [s for s in STAGES if s["name"] == "backbones"]
    for module in ("clip", "dino", "sd", "paper_size"):
        assert Path(f"diysc/backbones/{module}.py") in stage["deps"], module
    assert Path("diysc/standin.py") in stage["deps"]
    renderer = SYNTHETIC_CODE / "render.py"
    assert renderer in stage["deps"]  # the stand-in's renderer, by closure
    features = [s for s in STAGES if s["name"].startswith("features@")]
    assert features, [s["name"] for s in STAGES]
    for stage in features:
        assert not {Path("diysc/backbones/clip.py"), Path("diysc/standin.py")} & set(stage["deps"])


def test_the_quality_report_is_no_dep_of_any_training_stage():
    """Editing the pseudo-label quality report (or any other part of label generation) reruns
    the labels, never an adapter: training reads the label files through `diysc.formats.labels`."""
    training = [s for s in STAGES if s["script"] == Path("stages/train_adapter.py")]
    assert len(training) >= 4, [s["name"] for s in training]  # main, and the ablations' per seed
    for stage in training:
        generation = [d for d in stage["deps"] if d.parts[:2] == ("diysc", "pseudo")]
        assert not generation, f"{stage['name']}: depends on {generation}"
        assert Path("diysc/formats/labels.py") in stage["deps"], stage["name"]
    labelling = [s for s in STAGES if s["script"] == Path("stages/pseudo_labels.py")]
    assert labelling and all(Path("diysc/pseudo/quality.py") in s["deps"] for s in labelling)


def test_the_closure_follows_function_level_and_package_imports(tmp_path):
    """Hand-made package: `from diysc.b import c` inside a function pulls in b/__init__ and b/c."""
    pkg = tmp_path / "diysc"
    (pkg / "b").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from diysc.b import c\n")
    (pkg / "b" / "__init__.py").write_text("")
    (pkg / "b" / "c.py").write_text("from . import d\n")
    (pkg / "b" / "d.py").write_text("import os\n")
    (pkg / "unused.py").write_text("")
    script = tmp_path / "run.py"
    script.write_text("import diysc.a\n")
    assert import_closure(script, tmp_path) == [
        Path("diysc/__init__.py"),
        Path("diysc/a.py"),
        Path("diysc/b/__init__.py"),
        Path("diysc/b/c.py"),
        Path("diysc/b/d.py"),
    ]


def test_ablation_stages_track_the_params_their_shared_script_reads():
    """A script reads the params its main-pipeline stage declares (`load_stage_params` enforces
    that); a variant stage running the same script must track them too."""
    by_script = {s["script"]: s for s in STAGES if ":" not in s["name"]}
    for stage in STAGES:
        if ":" not in stage["name"] or stage["script"] not in by_script:
            continue
        main = by_script[stage["script"]]
        missing = sorted(main["params"] - stage["params"])
        assert not missing, f"{stage['name']}: reads {missing} but does not track them"


def test_every_lock_entry_is_a_stage_of_its_dvc_yaml():
    """DVC keeps a removed or renamed stage's lock entry; a stale one misleads a reader of the
    lock and costs every later stage its parse (DVC rereads and rewrites the whole lock per stage).
    """
    import yaml

    names = {s["name"] for s in STAGES}
    stale = []
    for lock in [ROOT / "dvc.lock", *sorted((ROOT / "ablations").glob("*/dvc.lock"))]:
        pipeline = lock.with_name("dvc.yaml").relative_to(ROOT).as_posix()
        prefix = "" if lock.parent == ROOT else f"{pipeline}:"
        entries = yaml.safe_load(lock.read_text())["stages"]
        stale += [
            f"{lock.relative_to(ROOT)}: {name}" for name in entries if prefix + name not in names
        ]
    assert not stale, f"lock entries of stages no dvc.yaml defines: {stale}"


def _copy_pipelines(dest: Path) -> list[Path]:
    """The code and pipeline files of the repository under `dest`; the pipelines, relative."""
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("diysc", "stages"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=ignore)
    pipelines = [f.relative_to(ROOT) for f in pipeline_files(ROOT)]
    for rel in pipelines:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, dest / rel)
    return pipelines


def test_diysc_deps_rewrites_stale_code_deps_and_nothing_else(tmp_path):
    pipelines = _copy_pipelines(tmp_path)
    original = (ROOT / "dvc.yaml").read_text()
    lines = original.splitlines(keepends=True)
    at = lines.index(next(line for line in lines if line.strip() == "- stages/train_adapter.py"))
    prefix = lines[at][: lines[at].index("-")]
    assert lines[at + 1] == f"{prefix}- diysc/__init__.py\n"
    # diysc/__init__.py missing, and a module the stage does not import in its place.
    stale = [*lines[: at + 1], f"{prefix}- diysc/pseudo/quality.py\n", *lines[at + 2 :]]
    (tmp_path / "dvc.yaml").write_text("".join(stale))

    check = CliRunner().invoke(main, ["deps", "--check", "--root", str(tmp_path)])
    assert check.exit_code == 1, check.output
    assert "stale  dvc.yaml:train_adapter\n" in check.output
    assert check.output.count("stale  ") == 1, check.output
    assert (tmp_path / "dvc.yaml").read_text() == "".join(stale)  # --check writes nothing

    fixed = CliRunner().invoke(main, ["deps", "--root", str(tmp_path)])
    assert fixed.exit_code == 0, fixed.output
    assert "updated  dvc.yaml:train_adapter\n" in fixed.output
    # The committed files are current, so the fix gives back their every byte.
    for rel in pipelines:
        assert (tmp_path / rel).read_bytes() == (ROOT / rel).read_bytes(), rel

    again = CliRunner().invoke(main, ["deps", "--check", "--root", str(tmp_path)])
    assert again.exit_code == 0 and "every stage is current" in again.output, again.output


def test_diysc_deps_adds_a_new_import_after_the_stage_scripts_code_deps(tmp_path):
    """A module the data stage's script starts importing; it sorts after every other module."""
    pipelines = _copy_pipelines(tmp_path)
    (tmp_path / "diysc" / "zz_new.py").write_text("import os\n")
    script = tmp_path / "stages" / "data.py"
    script.write_text(script.read_text() + "\nimport diysc.zz_new  # noqa: E402, F401\n")
    lines = (ROOT / "dvc.yaml").read_text().splitlines(keepends=True)
    at = lines.index(next(line for line in lines if line.strip() == "- stages/data.py"))
    prefix = lines[at][: lines[at].index("-")]
    last = at
    while lines[last + 1].startswith(f"{prefix}- diysc/") and "${" not in lines[last + 1]:
        last += 1
    expected = [*lines[: last + 1], f"{prefix}- diysc/zz_new.py\n", *lines[last + 1 :]]

    result = CliRunner().invoke(main, ["deps", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "dvc.yaml").read_text() == "".join(expected)
    for rel in pipelines[1:]:  # the ablations do not run the data stage
        assert (tmp_path / rel).read_bytes() == (ROOT / rel).read_bytes(), rel


def test_diysc_deps_names_the_file_and_stage_of_a_deps_list_it_cannot_rewrite(tmp_path):
    _copy_pipelines(tmp_path)
    text = (tmp_path / "dvc.yaml").read_text()
    line = next(line for line in text.splitlines() if line.strip() == "- stages/masks.py")
    (tmp_path / "dvc.yaml").write_text(text.replace(line, line.replace("- ", '- "', 1) + '"'))
    result = CliRunner().invoke(main, ["deps", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert f"{tmp_path / 'dvc.yaml'}: stage 'masks': dep at line" in result.output
    assert "is not a plain path" in result.output


def preset_stages(preset: str) -> dict[str, list[Path]]:
    """Every stage as DVC resolves the pipelines with `preset`'s params: name -> path deps."""
    import tempfile

    import yaml

    from diysc.config.compose import compose

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        for rel in [f.relative_to(ROOT) for f in pipeline_files(ROOT)]:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / rel, root / rel)
        params = compose(ROOT / "conf", [f"preset={preset}"])
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        with Repo(str(root), uninitialized=True) as repo:
            return {
                stage_name(stage, root): [
                    (Path(stage.wdir) / dep.def_path).resolve().relative_to(root)
                    for dep in stage.deps
                    if not isinstance(dep, ParamsDependency)
                ]
                for stage in repo.index.stages
            }


def stage_name(stage, root: Path) -> str:
    """`name`, or `ablations/<kind>/dvc.yaml:name` for a stage of an ablation pipeline."""
    pipeline = Path(stage.path).resolve().relative_to(root)
    return stage.name if pipeline == Path("dvc.yaml") else f"{pipeline.as_posix()}:{stage.name}"


PAPER_STAGES = preset_stages("paper")
SYNTHETIC_CODE = DATASETS / "synthetic"


def synthetic_code_deps(deps: list[Path]) -> list[str]:
    return [d.as_posix() for d in deps if d == SYNTHETIC_CODE or SYNTHETIC_CODE in d.parents]


# `backbones` depends on every registered backbone and builder (CODE_DEPS), the stand-in's
# renderer included; it reruns in a second and writes the same models/backbones.json on the paper
# preset, so DVC goes no further.
@pytest.mark.parametrize("name", [name for name in PAPER_STAGES if name != "backbones"])
def test_no_stage_of_the_paper_preset_depends_on_the_synthetic_datasets_code(name):
    """Editing the renderer (diysc/datasets/synthetic/) reruns nothing on the paper preset."""
    assert not synthetic_code_deps(PAPER_STAGES[name]), f"{name} (paper preset) depends on them"


def test_the_paper_preset_runs_spair_and_the_tiny_one_depends_on_the_synthetic_code():
    """The check above sees the dataset stages: SPair-71k's on the paper preset, and the synthetic
    dataset's code as a dep of its own stages on the tiny preset."""
    assert {"data@spair", "masks@spair", "features@spair", "evaluate@spair"} <= set(PAPER_STAGES)
    assert DATASETS / "spair" in PAPER_STAGES["data@spair"]
    tiny = preset_stages("tiny")
    assert synthetic_code_deps(tiny["data@synthetic"]) == ["diysc/datasets/synthetic"]
    assert synthetic_code_deps(tiny["masks@synthetic"]) == ["diysc/datasets/synthetic/__init__.py"]


def test_diysc_deps_lists_what_the_datasets_code_imports_for_a_per_dataset_stage(tmp_path):
    """A module only a dataset's builder imports joins the data stage's listed closure, not the
    stages that only read datasets; the templated dep itself stays where it is."""
    _copy_pipelines(tmp_path)
    (tmp_path / "diysc" / "zz_builder_only.py").write_text("import os\n")
    build = tmp_path / "diysc" / "datasets" / "synthetic" / "build.py"
    build.write_text(build.read_text() + "\nimport diysc.zz_builder_only  # noqa: E402, F401\n")
    result = CliRunner().invoke(main, ["deps", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("updated  dvc.yaml:data\n"), result.output
    assert result.output.count("updated  ") == 1, result.output
    text = (tmp_path / "dvc.yaml").read_text()
    data = text[text.index("  data:") : text.index("  masks:")]
    assert "        - diysc/stage_options.py\n        - diysc/zz_builder_only.py\n" in data
    assert data.count("- diysc/datasets/${key}\n") == 1


def test_pseudo_label_stages_track_every_toggle_of_the_registry():
    """Every stage that generates pseudo-labels (main and ablation) reruns when a toggle changes:
    its params list each toggle of `diysc.filter_steps` (a new toggle is caught here)."""
    from diysc.filter_steps import TOGGLES

    generating = [s for s in STAGES if s["script"] == Path("stages/pseudo_labels.py")]
    assert len(generating) >= 3  # the main stage, the ablation variants, the main settings' seeds
    for stage in generating:
        missing = sorted({t.param for t in TOGGLES} - stage["params"])
        assert not missing, f"{stage['name']}: does not track the toggles {missing}"


def test_the_precision_plot_names_the_registrys_steps():
    import yaml

    from diysc.filter_steps import plot_axis_label
    from diysc.headline import SPLITS
    from diysc.metric_keys import HEADLINE_ALPHA, precision_key

    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    plot = next(p["pseudo_label_precision"] for p in plots if "pseudo_label_precision" in p)
    assert plot["x_label"] == plot_axis_label()
    columns = [f"{split}_{precision_key(HEADLINE_ALPHA)}" for split in SPLITS]
    assert plot["y"] == {"plots/pseudo_precision.csv": columns}
