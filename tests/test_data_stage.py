"""The `data` stage script: synthetic source, local SPair sources, errors that name the key."""

from __future__ import annotations

import importlib.util
import tarfile

import pytest
from click.testing import CliRunner

from diysc.data.spair import SPairDataset
from tests.conftest import ROOT
from tests.test_download import _tiny_spair

SMALL = [
    "data.source=synthetic",
    "data.synthetic.categories=[car]",
    "data.synthetic.image_size=64",
    "data.synthetic.pairs_trn=20",
    "data.synthetic.pairs_val=8",
    "data.synthetic.pairs_test=8",
]


@pytest.fixture(scope="module")
def stage():
    spec = importlib.util.spec_from_file_location("data_stage", ROOT / "stages" / "data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _run(stage, *args, env=None):
    argv = ["--params", str(ROOT / "params.yaml"), *args]
    return CliRunner().invoke(stage, argv, env=env or {}, catch_exceptions=False)


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


def test_synthetic_source_writes_a_readable_tree(stage, tmp_path):
    out = tmp_path / "dataset"
    result = _run(stage, *_sets(SMALL), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert SPairDataset(out).check_layout() == {"trn": 20, "val": 8, "test": 8}
    assert f"data: synthetic dataset at {out}: pairs trn 20, val 8, test 8 (" in result.output


def test_unknown_category_is_a_clear_error(stage, tmp_path):
    result = _run(
        stage,
        *_sets([*SMALL, "data.synthetic.categories=[car,bus]"]),
        "--out",
        str(tmp_path / "dataset"),
    )
    assert result.exit_code != 0
    assert "'data.synthetic.categories': unknown category 'bus'" in result.output
    assert list(tmp_path.iterdir()) == []


def test_local_spair_sources_replace_the_download(stage, tmp_path):
    tree = tmp_path / "SPair-71k"
    _tiny_spair(tree)
    archive = tmp_path / "SPair-71k.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="SPair-71k")
    out = tmp_path / "dataset"
    unreachable = ["data.source=spair", "data.url=http://127.0.0.1:9/SPair-71k.tar.gz"]
    # --source and DIYSC_SPAIR_ARCHIVE are both read: the tiny tree reaches the official
    # layout check (18 categories) instead of the unreachable URL
    for args, env in (
        ((_sets(unreachable) + ["--source", str(archive)]), None),
        (_sets(unreachable), {"DIYSC_SPAIR_ARCHIVE": str(tree)}),
    ):
        result = _run(stage, *args, "--out", str(out), env=env)
        assert result.exit_code != 0
        assert "dataset: categories ['cow'] differ from the expected ['aeroplane'" in result.output
        assert not out.exists()
    result = _run(stage, *_sets(unreachable), "--out", str(out))  # no local copy, no server
    assert result.exit_code != 0
    assert "SPair-71k (http://127.0.0.1:9/SPair-71k.tar.gz: no answer" in result.output
    assert "set DIYSC_SPAIR_ARCHIVE=" in result.output  # named before any download is tried


def test_source_option_needs_the_spair_source(stage, tmp_path):
    result = _run(stage, *_sets(SMALL), "--out", str(tmp_path / "d"), "--source", str(tmp_path))
    assert result.exit_code != 0 and "--source applies to data.source=spair only" in result.output
