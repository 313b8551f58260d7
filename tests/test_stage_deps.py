"""Each DVC stage's deps are the code it runs, so that any change to that code reruns it.

The stages come from DVC's own resolution of `dvc.yaml` and `ablations/*/dvc.yaml` (templating and
`foreach` expanded by DVC). For each, the project modules in its script's import closure
(`diysc.provenance.import_closure`: every import statement, module and function level) must be
exactly its `diysc/` deps: none missing (DVC would keep a stale result) and none extra (an
unrelated change would rerun an hours-long stage).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo

from diysc.provenance import import_closure

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = re.compile(r"\bpython -m stages\.(\w+)\b")


def resolved_stages() -> list[dict]:
    with Repo(str(ROOT)) as repo:
        stages = []
        for stage in repo.index.stages:
            wdir = Path(stage.wdir)
            paths, params = [], set()
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    params.update(dep.params if Path(dep.def_path).name == "params.yaml" else [])
                else:
                    paths.append((wdir / dep.def_path).resolve().relative_to(ROOT))
            match = SCRIPT.search(stage.cmd)
            stages.append(
                {
                    "name": stage.addressing,
                    "script": Path(f"stages/{match.group(1)}.py") if match else None,
                    "deps": paths,
                    "params": params,
                }
            )
        return stages


STAGES = resolved_stages()


def covered(path: Path, deps: list[Path]) -> bool:
    return any(path == d or d in path.parents for d in deps)


@pytest.mark.parametrize("stage", STAGES, ids=[s["name"] for s in STAGES])
def test_code_deps_are_exactly_the_import_closure_of_the_stage_script(stage):
    assert stage["script"] is not None, f"{stage['name']}: its cmd runs no `python -m stages.<x>`"
    closure = import_closure(ROOT / stage["script"], ROOT)
    assert closure, f"{stage['script']} imports nothing from diysc"
    missing = [str(f) for f in [stage["script"], *closure] if not covered(f, stage["deps"])]
    assert not missing, f"{stage['name']}: dvc.yaml deps miss {missing}"
    code_deps = [d for d in stage["deps"] if d.parts[0] == "diysc"]
    extra = []
    for dep in code_deps:
        files = (
            [dep]
            if dep.suffix == ".py"
            else sorted(f.relative_to(ROOT) for f in (ROOT / dep).rglob("*.py"))
        )
        extra += [str(f) for f in files if f not in closure]
    assert not extra, f"{stage['name']}: deps on modules it does not import: {extra}"


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


def test_pseudo_label_stages_track_every_toggle_of_the_registry():
    """Every stage that generates pseudo-labels (main and ablation) reruns when a toggle changes:
    its params list each toggle of `diysc.pseudo.steps` (a new toggle is caught here)."""
    from diysc.pseudo.steps import TOGGLES

    generating = [s for s in STAGES if s["script"] == Path("stages/pseudo_labels.py")]
    assert len(generating) >= 3  # the main stage, the ablation variants, the main settings' seeds
    for stage in generating:
        missing = sorted({t.param for t in TOGGLES} - stage["params"])
        assert not missing, f"{stage['name']}: does not track the toggles {missing}"


def test_the_precision_plot_names_the_registrys_steps():
    import yaml

    from diysc.headline import SPLITS
    from diysc.metric_keys import HEADLINE_ALPHA, precision_key
    from diysc.pseudo.steps import plot_axis_label

    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    plot = next(p["pseudo_label_precision"] for p in plots if "pseudo_label_precision" in p)
    assert plot["x_label"] == plot_axis_label()
    columns = [f"{split}_{precision_key(HEADLINE_ALPHA)}" for split in SPLITS]
    assert plot["y"] == {"plots/pseudo_precision.csv": columns}
