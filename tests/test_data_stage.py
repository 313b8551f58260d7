"""The `data` stage script: synthetic source, local SPair sources, errors that name the key."""

from __future__ import annotations

import importlib.util
import shutil
import tarfile

import pytest
import yaml
from click.testing import CliRunner

from diysc.config.compose import compose
from diysc.data.spair import SPairDataset
from tests.conftest import ROOT
from tests.test_download import _tiny_spair

SMALL = [
    "datasets.synthetic.categories=[car]",
    "datasets.synthetic.image_size=64",
    "datasets.synthetic.pairs_trn=20",
    "datasets.synthetic.pairs_val=8",
    "datasets.synthetic.pairs_test=8",
]


@pytest.fixture(scope="module")
def stage():
    spec = importlib.util.spec_from_file_location("data_stage", ROOT / "stages" / "data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _run(stage, *args, env=None, params=ROOT / "params.yaml"):
    argv = ["--params", str(params), *args]
    return CliRunner().invoke(stage, argv, env=env or {}, catch_exceptions=False)


def _spair_params(folder, url):
    """A params file with SPair-71k's entry (official source at `url`; offline stand-in backbones,
    so that no other prerequisite is missing), beside a copy of the pipeline that declares it."""
    raw = compose(ROOT / "conf", ["preset=smoke", "datasets.spair.source=official"])
    raw["datasets"]["spair"]["url"] = url
    folder.mkdir()
    (folder / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(ROOT / "dvc.yaml", folder / "dvc.yaml")
    return folder / "params.yaml"


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


def test_synthetic_source_writes_a_readable_tree(stage, tmp_path):
    out = tmp_path / "dataset"
    result = _run(stage, *_sets(SMALL), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert SPairDataset(out).check_layout() == {"trn": 20, "val": 8, "test": 8}
    assert f"data: synthetic at {out}: pairs trn 20, val 8, test 8 (" in result.output


def test_unknown_category_is_a_clear_error(stage, tmp_path):
    result = _run(
        stage,
        *_sets([*SMALL, "datasets.synthetic.categories=[car,bus]"]),
        "--out",
        str(tmp_path / "dataset"),
    )
    assert result.exit_code != 0
    assert "'datasets.synthetic.categories': unknown category 'bus'" in result.output
    assert list(tmp_path.iterdir()) == []


def test_local_spair_sources_replace_the_download(stage, tmp_path):
    tree = tmp_path / "SPair-71k"
    _tiny_spair(tree)
    archive = tmp_path / "SPair-71k.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="SPair-71k")
    out = tmp_path / "dataset"
    params = _spair_params(tmp_path / "unreachable", "http://127.0.0.1:9/SPair-71k.tar.gz")
    spair = ["--dataset-name", "spair", "--out", str(out)]
    # --source and DIYSC_SPAIR_ARCHIVE are both read: the tiny tree reaches the official
    # layout check (18 categories) instead of the unreachable URL
    for args, env in ((["--source", str(archive)], None), ([], {"DIYSC_SPAIR_ARCHIVE": str(tree)})):
        result = _run(stage, *spair, *args, env=env, params=params)
        assert result.exit_code != 0
        assert "dataset: categories ['cow'] differ from the expected ['aeroplane'" in result.output
        assert not out.exists()
    result = _run(stage, *spair, params=params)  # no local copy, no server
    assert result.exit_code != 0
    assert "SPair-71k (http://127.0.0.1:9/SPair-71k.tar.gz: no answer" in result.output
    assert "set DIYSC_SPAIR_ARCHIVE=" in result.output  # named before any download is tried


def test_source_option_needs_a_dataset_that_downloads(stage, tmp_path):
    result = _run(stage, *_sets(SMALL), "--out", str(tmp_path / "d"), "--source", str(tmp_path))
    assert result.exit_code != 0
    assert "--source: the synthetic dataset is rendered, it has no source to give" in result.output


def test_an_unknown_dataset_name_is_a_clear_error(stage, tmp_path):
    result = _run(stage, "--dataset-name", "spair", "--out", str(tmp_path / "d"))
    assert result.exit_code != 0
    assert f"{ROOT / 'params.yaml'}: no dataset 'spair' under datasets (here: synthetic)" in (
        result.output
    )
