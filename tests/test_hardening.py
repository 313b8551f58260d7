"""Bad input, hostile files and failing services: each is refused with an error naming the thing,
and nothing already there is lost."""

from __future__ import annotations

import ast
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from diysc.adapter.model import Adapter, AdapterCheckpointError, load_adapter
from diysc.config.compose import GENERATED_HEADER, compose_text
from diysc.config.load import load_params
from diysc.config.schema import ParamsError
from diysc.data.spair import DatasetError, SPairDataset
from diysc.datasets.spair.download import (
    DownloadError,
    has_fixed_data_filter,
    prepare_spair,
    safe_extract,
)
from diysc.errors import UserError, clean_errors
from diysc.features import FeatureStore, FeatureStoreError
from diysc.io import Shard, ShardError, save_shard
from tests.conftest import ROOT
from tests.test_features import dino_group, sd_group

# --- errors a user reads --------------------------------------------------------------------------

STAGE_SCRIPTS = sorted((ROOT / "stages").glob("*.py"))


def _commands(module_path: Path) -> list[click.Command]:
    import importlib

    module = importlib.import_module(f"stages.{module_path.stem}")
    main = module.main
    return list(main.commands.values()) if isinstance(main, click.Group) else [main]


@pytest.mark.parametrize("script", STAGE_SCRIPTS, ids=lambda p: p.stem)
def test_every_stage_command_has_clean_errors(script):
    for command in _commands(script):
        assert "debug" in {p.name for p in command.params}, f"{script.name}: {command.name}"


def test_every_cli_command_has_clean_errors():
    from diysc.cli import main

    for name, command in main.commands.items():
        assert "debug" in {p.name for p in command.params}, name


def _run_stage(script: str, *args: str, env: dict[str, str] | None = None, **options):
    """Run `stages/<script>` as DVC does (`python -m`), with `env` over this environment (an empty
    value unsets a setting) and more `subprocess.run` options."""
    return subprocess.run(
        [sys.executable, "-m", f"stages.{Path(script).stem}", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        **{"timeout": 120, **options},
    )


def test_a_stage_reports_bad_input_as_one_line_and_the_traceback_on_request(tmp_path):
    not_a_dataset = tmp_path / "nothing-here"
    not_a_dataset.mkdir()
    args = ["--dataset", str(not_a_dataset), "--out", str(tmp_path / "features")]
    result = _run_stage("features.py", *args)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {not_a_dataset}: not an SPair-71k tree (no ImageAnnotation/ folder)"
    ]
    assert "Traceback" not in result.stderr
    debug = _run_stage("features.py", *args, env={"DIYSC_DEBUG": "1"})
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "diysc.data.spair.DatasetError" in debug.stderr
    assert not (tmp_path / "features").exists()


def test_clean_errors_passes_bugs_through_and_names_files_of_os_errors(tmp_path):
    @click.command()
    @click.argument("what")
    @clean_errors
    def command(what):
        if what == "user":
            raise UserError("params.yaml: 'x' must be\n an integer")
        if what == "file":
            open(tmp_path / "missing.txt")
        raise RuntimeError("a bug")

    runner = CliRunner()
    user = runner.invoke(command, ["user"])
    assert user.exit_code == 1 and user.output == "Error: params.yaml: 'x' must be an integer\n"
    missing = runner.invoke(command, ["file"])
    assert missing.exit_code == 1
    assert missing.output == f"Error: {tmp_path / 'missing.txt'}: No such file or directory\n"
    bug = runner.invoke(command, ["bug"])
    assert isinstance(bug.exception, RuntimeError)  # a bug keeps its traceback
    debug = runner.invoke(command, ["user", "--debug"])
    assert isinstance(debug.exception, UserError)


def test_match_rejects_an_empty_grid(spair_sample, tmp_path):
    from diysc.cli import main

    images = sorted((spair_sample / "JPEGImages" / "cow").glob("*.jpg"))
    out = tmp_path / "m.png"
    result = CliRunner().invoke(
        main, ["match", *map(str, images), "--grid", "0", "--out", str(out)]
    )
    assert result.exit_code == 2
    assert "Invalid value for '--grid': 0 is not in the range x>=1" in result.output
    assert not out.exists()


def test_cli_evaluate_names_an_incompatible_checkpoint(spair_sample, tmp_path):
    from diysc.cli import main

    torch.save({"logit_scale": torch.tensor(1.0)}, tmp_path / "other.pth")
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "info.json").write_text(json.dumps(_INFO))
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--adapter",
            str(tmp_path / "other.pth"),
            "--dataset",
            str(spair_sample),
            "--features",
            str(tmp_path / "features"),
            "--params",
            str(ROOT / "params.yaml"),
        ],
    )
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: {tmp_path / 'other.pth'}: not an adapter state dict (missing key "
        "'self_logit_scale', expected a 0-d tensor (a scalar))"
    )


# --- the SPair reader -------------------------------------------------------------------------------


@pytest.fixture
def sample_copy(spair_sample, tmp_path) -> Path:
    root = tmp_path / "spair"
    shutil.copytree(spair_sample, root)
    return root


def _edit_json(path: Path, **changes) -> None:
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def test_an_image_whose_pixels_disagree_with_its_annotation_is_refused(sample_copy):
    image = sample_copy / "JPEGImages" / "aeroplane" / "2008_007604.jpg"
    Image.new("RGB", (1, 1)).save(image)
    data = SPairDataset(sample_copy)
    expected = rf"{image}: image is 1x1 px but .*2008_007604\.json says 333x500"
    with pytest.raises(DatasetError, match=expected):
        data.check_layout()
    with pytest.raises(DatasetError, match=expected):
        data.load_image("aeroplane", "2008_007604")


def test_a_keypoint_outside_the_image_is_refused(sample_copy):
    path = sample_copy / "ImageAnnotation" / "aeroplane" / "2008_007604.json"
    kps = json.loads(path.read_text())["kps"]
    kps["0"] = [334, 20]  # the image is 333 px wide
    _edit_json(path, kps=kps)
    with pytest.raises(DatasetError, match=rf"{path}: keypoint 0 at \[334.0, 20.0\] lies outside"):
        SPairDataset(sample_copy).image("aeroplane", "2008_007604")
    kps["0"] = [333, 500]  # the far corner is still inside
    _edit_json(path, kps=kps)
    assert SPairDataset(sample_copy).image("aeroplane", "2008_007604").keypoints[0].tolist() == [
        333,
        500,
    ]


@pytest.mark.parametrize("bbox", [[100, 10, 50, 60], [10, 60, 50, 20]])
def test_an_inverted_bbox_is_refused_in_image_and_pair_annotations(sample_copy, bbox):
    image_ann = sample_copy / "ImageAnnotation" / "cow" / "2007_005797.json"
    _edit_json(image_ann, bndbox=bbox)
    with pytest.raises(DatasetError, match=rf"{image_ann}: 'bndbox' must be \[x1, y1, x2, y2\]"):
        SPairDataset(sample_copy).image("cow", "2007_005797")
    pair = sorted((sample_copy / "PairAnnotation" / "test").glob("*:horse.json"))[0]
    _edit_json(pair, trg_bndbox=bbox)
    with pytest.raises(DatasetError, match=rf"{pair}: 'trg_bndbox' must be \[x1, y1, x2, y2\]"):
        SPairDataset(sample_copy).pairs("test", "horse")


def test_a_non_positive_image_size_is_refused(sample_copy):
    path = sample_copy / "ImageAnnotation" / "dog" / "2009_001225.json"
    _edit_json(path, image_width=0)
    with pytest.raises(DatasetError, match=rf"{path}: 'image_width' must be a positive integer"):
        SPairDataset(sample_copy).image("dog", "2009_001225")


# --- feature shards ---------------------------------------------------------------------------------

_INFO = {
    "size": 56,
    "grid": 4,
    "groups": [sd_group(4, 8, 8), dino_group(8)],
    "dtype": "float16",
    "categories": ["cow"],
}


def _store(root: Path, dino: torch.Tensor, s5: torch.Tensor | None = None) -> FeatureStore:
    root.mkdir(parents=True, exist_ok=True)
    (root / "info.json").write_text(json.dumps(_INFO))
    save_shard(root / "dino" / "cow.safetensors", {"a": dino})
    sd = {
        "a.s3": torch.zeros(4, 4, 4).half(),
        "a.s4": torch.zeros(8, 2, 2).half(),
        "a.s5": torch.zeros(8, 1, 1).half() if s5 is None else s5,
    }
    save_shard(root / "sd" / "cow.safetensors", sd)
    return FeatureStore(root)


def test_a_good_store_reads(tmp_path):
    store = _store(tmp_path, torch.ones(8, 4, 4).half())
    assert store.adapter_input("cow", "a").shape == (28, 4, 4)


@pytest.mark.parametrize(
    ("dino", "message"),
    [
        (torch.ones(8, 4, 4, dtype=torch.bool), r"tensor 'a' is bool, but info\.json says float16"),
        (torch.ones(8, 4, 4, dtype=torch.int8), r"tensor 'a' is int8, but info\.json says float16"),
        (torch.ones(8, 4, 4).float(), r"tensor 'a' is float32, but info\.json says float16"),
        (torch.ones(8, 6, 6).half(), r"tensor 'a' has shape \(8, 6, 6\), expected \(8, 4, 4\)"),
        (torch.ones(7, 4, 4).half(), r"tensor 'a' has shape \(7, 4, 4\), expected \(8, 4, 4\)"),
    ],
)
def test_a_dino_shard_disagreeing_with_info_json_is_refused(tmp_path, dino, message):
    store = _store(tmp_path, dino)
    with pytest.raises(FeatureStoreError, match=rf"dino/cow\.safetensors: {message}"):
        store.adapter_input("cow", "a")


def test_an_sd_level_of_the_wrong_size_is_refused(tmp_path):
    store = _store(tmp_path, torch.ones(8, 4, 4).half(), s5=torch.zeros(8, 2, 2).half())
    with pytest.raises(
        FeatureStoreError, match=r"sd/cow\.safetensors: tensor 'a\.s5' has shape \(8, 2, 2\)"
    ):
        store.similarity("cow", "a")


def test_truncated_garbage_and_missing_keys_name_the_file_and_key(tmp_path):
    store = _store(tmp_path, torch.ones(8, 4, 4).half())
    shard = tmp_path / "dino" / "cow.safetensors"
    with pytest.raises(ShardError, match=rf"{shard}: no tensor 'b'"):
        store.maps("dino", "cow", "b")
    with pytest.raises(KeyError):  # still a KeyError for mapping-style callers
        Shard(shard)["b"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 10])
    with pytest.raises(ShardError, match=rf"{shard}: not a readable safetensors file"):
        FeatureStore(tmp_path).maps("dino", "cow", "a")
    shard.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(ShardError, match=rf"{shard}: not a readable safetensors file"):
        FeatureStore(tmp_path).maps("dino", "cow", "a")


def test_an_unknown_dtype_in_info_json_is_refused(tmp_path):
    _store(tmp_path, torch.ones(8, 4, 4).half())
    (tmp_path / "info.json").write_text(json.dumps({**_INFO, "dtype": "int8"}))
    with pytest.raises(FeatureStoreError, match=r"info\.json: 'dtype' must be one of"):
        FeatureStore(tmp_path)


# --- adapter checkpoints and pickles ------------------------------------------------------------------


def test_an_adapter_checkpoint_missing_a_key_names_file_and_key(tmp_path):
    state = Adapter([256], 128).state_dict()
    del state["bottleneck_layers.0.0.conv3.weight"]
    torch.save(state, tmp_path / "a.pth")
    with pytest.raises(
        AdapterCheckpointError,
        match=r"a\.pth: not an adapter state dict \(missing key "
        r"'bottleneck_layers\.0\.0\.conv3\.weight', expected a 4-d convolution weight",
    ):
        load_adapter(tmp_path / "a.pth")


def test_a_0d_mixing_weights_names_file_key_and_expectation(tmp_path):
    state = Adapter([256], 128).state_dict()
    state["mixing_weights"] = torch.tensor(1.0)
    torch.save(state, tmp_path / "a.pth")
    with pytest.raises(
        AdapterCheckpointError,
        match=r"a\.pth: key 'mixing_weights' must be a 1-d tensor with one weight per feature "
        r"group, found a 0-d tensor of shape \(\)",
    ):
        load_adapter(tmp_path / "a.pth")


class _Payload:
    """Unpickling this calls `open(marker, "w")`: code run by merely loading a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_payload_in_a_checkpoint_never_runs(tmp_path):
    from diysc.sphere.model import CheckpointError, read_mapper_state

    marker = tmp_path / "pwned"
    torch.save({"mixing_weights": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(AdapterCheckpointError, match=r"evil\.pth: cannot be read .*weights only"):
        load_adapter(tmp_path / "evil.pth")
    with pytest.raises((CheckpointError, UserError)):
        read_mapper_state(tmp_path / "evil.pth")
    # A planted resume checkpoint: refused, never unpickled.
    from diysc.resume import CheckpointError as ResumeError
    from diysc.resume import load_resumable

    torch.save({"run_key": "k", "model": _Payload(marker)}, tmp_path / "last.pt")
    with pytest.raises(ResumeError, match=r"last\.pt: cannot read this resume checkpoint"):
        load_resumable(tmp_path, "k")
    assert not marker.exists()


def _torch_loads(path: Path) -> list[tuple[int, bool]]:
    """(line, weights_only=True given) of every torch.load call in a source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch"
        ):
            safe = any(
                k.arg == "weights_only"
                and isinstance(k.value, ast.Constant)
                and k.value.value is True
                for k in node.keywords
            )
            found.append((node.lineno, safe))
    return found


SOURCES_WITH_LOADS = sorted(
    p.relative_to(ROOT).as_posix()
    for p in [*(ROOT / "diysc").rglob("*.py"), *(ROOT / "stages").glob("*.py")]
    if "torch.load(" in p.read_text()
)


@pytest.mark.parametrize("source", SOURCES_WITH_LOADS)
def test_every_torch_load_is_weights_only(source):
    loads = _torch_loads(ROOT / source)
    assert loads and all(safe for _, safe in loads), f"{source}: {loads}"


# --- archives -----------------------------------------------------------------------------------------


def _chained_symlink_archive(path: Path) -> Path:
    """The CVE-2025-4517 technique: symlinks chained through long names until the resolved path
    exceeds PATH_MAX, then a link whose target is checked lexically but resolves outside."""
    comp = "d" * 247
    steps = "abcdefghijklmnop"
    prefix = ""
    with tarfile.open(path, "w") as tar:
        for step in steps:
            folder = tarfile.TarInfo(os.path.join(prefix, comp))
            folder.type = tarfile.DIRTYPE
            tar.addfile(folder)
            link = tarfile.TarInfo(os.path.join(prefix, step))
            link.type, link.linkname = tarfile.SYMTYPE, comp
            tar.addfile(link)
            prefix = os.path.join(prefix, comp)
        deep = os.path.join(*steps, "l" * 254)
        up = tarfile.TarInfo(deep)
        up.type, up.linkname = tarfile.SYMTYPE, "/".join([".."] * len(steps))
        tar.addfile(up)
        escape = tarfile.TarInfo("escape")
        escape.type, escape.linkname = tarfile.SYMTYPE, deep + "/.."
        tar.addfile(escape)
        payload = tarfile.TarInfo("escape/pwned")
        payload.size = 7
        tar.addfile(payload, io.BytesIO(b"outside"))
    return path


def test_a_chained_symlink_path_max_archive_writes_nothing_outside(tmp_path):
    archive = _chained_symlink_archive(tmp_path / "cve.tar")
    dest = tmp_path / "target"
    dest.mkdir()
    with pytest.raises(DownloadError, match=r"cve\.tar: refusing member 'a': link to 'd+'"):
        safe_extract(archive, dest)
    assert not (tmp_path / "pwned").exists()
    assert list(dest.iterdir()) == []
    # the same archive given as a local SPair-71k source (--source, DIYSC_SPAIR_ARCHIVE)
    with pytest.raises(DownloadError, match=r"refusing member 'a'"):
        prepare_spair(tmp_path / "dataset", "unused", local=archive)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "dataset").exists()


@pytest.mark.parametrize(
    ("version", "fixed"),
    [
        ((3, 10, 17), False),
        ((3, 10, 18), True),
        ((3, 11, 12), False),
        ((3, 11, 13), True),
        ((3, 12, 10), False),
        ((3, 12, 11), True),
        ((3, 13, 3), False),
        ((3, 13, 4), True),
        ((3, 14, 0), True),
    ],
)
def test_the_data_filter_is_trusted_only_where_it_has_the_fix(version, fixed):
    assert has_fixed_data_filter(version) is fixed


def test_files_and_directories_are_extracted_by_construction(tmp_path):
    from diysc.datasets.spair.download import write_members

    archive = tmp_path / "ok.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in (("top/a.txt", b"one"), ("top/sub/b.txt", b"two"), ("top/a.txt", b"3")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("top/empty")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    dest = tmp_path / "out"
    dest.mkdir()
    with tarfile.open(archive) as tar:
        write_members(tar, tar.getmembers(), dest)
    assert (dest / "top" / "a.txt").read_bytes() == b"3"  # a repeated member: the later wins
    assert (dest / "top" / "sub" / "b.txt").read_bytes() == b"two"
    assert (dest / "top" / "empty").is_dir()


# --- partial outputs and unreachable services ----------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracking_server_is_skipped_within_seconds(monkeypatch, capsys):
    from diysc.config.schema import TrackingParams
    from diysc.tracking import TrackingError, start_run

    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("DIYSC_STRICT_TRACKING", raising=False)
    start = time.monotonic()
    with start_run(TrackingParams(), "evaluate", {"a": 1}) as run:
        run.log_metrics({"x": 1.0})
        assert not run.enabled
    assert time.monotonic() - start < 15
    assert f"warning: MLflow tracking at {uri} is unusable" in capsys.readouterr().err
    monkeypatch.setenv("DIYSC_STRICT_TRACKING", "1")
    with (
        pytest.raises(TrackingError, match=rf"MLflow tracking at {uri} is unusable"),
        start_run(TrackingParams(), "evaluate", {}),
    ):
        pytest.fail("the block must not run under strict tracking")


@pytest.fixture
def evaluated(spair_sample, tmp_path):
    """A dataset copy, a feature store and an adapter; the evaluate stage has run once."""
    from tests.test_evaluation import _write_store

    root = tmp_path / "spair"
    shutil.copytree(spair_sample, root)
    _write_store(tmp_path / "features", SPairDataset(root))
    torch.manual_seed(0)
    torch.save(Adapter([4, 8, 8, 8], channels=128).state_dict(), tmp_path / "adapter.pth")
    args = [
        "--params",
        str(ROOT / "params.yaml"),
        "--dataset",
        str(root),
        "--features",
        str(tmp_path / "features"),
        "--adapter",
        str(tmp_path / "adapter.pth"),
        "--metrics",
        str(tmp_path / "metrics" / "eval.json"),
        "--plots",
        str(tmp_path / "plots"),
    ]
    first = _evaluate([*args, "--set", "tracking.mlflow=false"])
    assert first.exit_code == 0, first.output
    # mark the outputs, to see whether a failing run touches them
    (tmp_path / "metrics" / "eval.json").write_text('{"previous": true}\n')
    (tmp_path / "plots" / "previous.txt").write_text("kept")
    return tmp_path, root, args


def _evaluate(args):
    from stages.evaluate import main

    return CliRunner().invoke(main, args)


def _unchanged(tmp_path: Path) -> bool:
    return (tmp_path / "metrics" / "eval.json").read_text() == '{"previous": true}\n' and (
        tmp_path / "plots" / "previous.txt"
    ).read_text() == "kept"


def test_evaluate_publishes_nothing_when_the_pictures_fail(evaluated):
    tmp_path, root, args = evaluated
    broken = root / "JPEGImages" / "aeroplane" / "2008_007604.jpg"  # drawn in the match pictures
    broken.write_bytes(broken.read_bytes()[:300])
    result = _evaluate([*args, "--set", "tracking.mlflow=false"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(f"Error: {broken}: cannot decode")
    assert _unchanged(tmp_path)
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == ["eval.json"]


def test_evaluate_under_strict_tracking_publishes_nothing_when_mlflow_is_down(
    evaluated, monkeypatch
):
    tmp_path, _, args = evaluated
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("DIYSC_STRICT_TRACKING", "1")
    start = time.monotonic()
    result = _evaluate([*args, "--set", "tracking.mlflow=true"])
    assert time.monotonic() - start < 60
    assert result.exit_code == 1 and "is unusable" in result.output
    assert _unchanged(tmp_path)
    monkeypatch.delenv("DIYSC_STRICT_TRACKING")
    result = _evaluate([*args, "--set", "tracking.mlflow=true"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "metrics" / "eval.json").read_text())["pairs"] == 12
    assert not (tmp_path / "plots" / "previous.txt").exists()  # the plots folder was replaced


# --- params.yaml hand edits ----------------------------------------------------------------------------


@pytest.fixture
def repo_params(tmp_path) -> Path:
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path / "params.yaml"


def test_the_committed_params_yaml_is_exactly_what_compose_params_writes():
    assert (ROOT / "params.yaml").read_text() == compose_text(ROOT / "conf")
    assert (ROOT / "params.yaml").read_text().startswith(GENERATED_HEADER)


def test_a_hand_edit_of_params_yaml_is_refused_pointing_at_conf(repo_params):
    assert load_params(repo_params).chaining is True
    text = repo_params.read_text()
    repo_params.write_text(re.sub(r"^chaining: true$", "chaining: false", text, flags=re.M))
    with pytest.raises(
        ParamsError, match=r"params\.yaml: hand-edited \(chaining differ from .*conf/\)"
    ):
        load_params(repo_params)
    # the same values as DVC writes them for `dvc exp run -S chaining=false` (no header): accepted
    repo_params.write_text(
        compose_text(repo_params.parent / "conf", ["chaining=false"], header=False)
    )
    assert load_params(repo_params).chaining is False
    # overrides on the command line are not hand edits
    repo_params.write_text(text)
    assert load_params(repo_params, ["chaining=false"]).chaining is False


def test_compose_params_regenerates_params_yaml_after_an_edit_of_conf(repo_params):
    from diysc.cli import main

    config = repo_params.parent / "conf" / "config.yaml"
    config.write_text(re.sub(r"^chaining: true", "chaining: false", config.read_text(), flags=re.M))
    with pytest.raises(ParamsError, match="hand-edited"):  # params.yaml is now stale
        load_params(repo_params)
    result = CliRunner().invoke(
        main,
        ["compose-params", "--conf", str(repo_params.parent / "conf"), "--out", str(repo_params)],
    )
    assert result.exit_code == 0, result.output
    assert load_params(repo_params).chaining is False


# --- round two: hangs, numbers that enter unchecked, faults while writing ---------------------------


@pytest.fixture
def silent_hub():
    """A loopback server that accepts every connection and never answers: a stalled hub."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_a_stalled_hub_fails_a_model_load_within_seconds_naming_the_fix(
    silent_hub, spair_sample, tmp_path
):
    hub = {"HF_ENDPOINT": silent_hub, "HF_HOME": str(tmp_path / "hf")}
    hub |= {"HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": ""}  # the hub is to be asked
    args = ["--set", "features.backbones.dino.model=facebook/dinov2-base"]
    args += ["--dataset", str(spair_sample), "--out", str(tmp_path / "features")]
    start = time.monotonic()
    try:
        result = _run_stage("features", *args, env=hub, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("loading a model from a silent hub hung")
    assert time.monotonic() - start < 60  # the hub's deadline is 10 s; the rest is start-up
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith(
        "Error: features.backbones.dino.model 'facebook/dinov2-base': cannot load"
    )
    assert f"the Hugging Face hub {silent_hub} gave no answer" in line
    assert "hf download facebook/dinov2-base --local-dir" in line
    assert "-S features.backbones.dino.model=/models/dinov2-base" in line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "features").exists()


def test_a_shard_with_a_nan_is_refused_at_write_naming_file_and_key(tmp_path):
    path = tmp_path / "dino" / "cow.safetensors"
    bad = torch.ones(8, 4, 4)
    bad[0, 1, 2] = float("nan")
    bad[3, 0, 0] = float("inf")
    with pytest.raises(ShardError, match=rf"{path}: tensor 'b' has 2 non-finite value\(s\)"):
        save_shard(path, {"a": torch.ones(8, 4, 4), "b": bad})
    assert not path.parent.exists() or not list(path.parent.iterdir())  # nothing half-written


def test_a_non_finite_feature_in_a_shard_is_refused_at_read(tmp_path):
    from safetensors.torch import save_file

    store = _store(tmp_path, torch.ones(8, 4, 4).half())
    nan = torch.ones(8, 4, 4).half()
    nan[:, 2, 2] = float("nan")
    shard = tmp_path / "dino" / "cow.safetensors"
    save_file({"a": nan}, str(shard))  # written by something else than save_shard
    with pytest.raises(ShardError, match=rf"{shard}: tensor 'a' has 8 non-finite value\(s\)"):
        FeatureStore(tmp_path).adapter_input("cow", "a")
    assert store.grid == 4


BBOX_MASKS = ("--set", "masks.source=bbox", "--set", "tracking.mlflow=false")  # masks in a second


def _file_size_limit(limit: int):
    def apply() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write beyond the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_an_os_error_while_writing_a_shard_names_it_and_leaves_nothing(spair_sample, tmp_path):
    out = tmp_path / "masks"
    out.mkdir()
    (out / "cow.safetensors").write_bytes(b"an earlier output")
    result = _run_stage(
        "masks", *BBOX_MASKS, "--dataset", str(spair_sample), "--out", str(out),
        env={"PYTHONDONTWRITEBYTECODE": "1"},
        preexec_fn=_file_size_limit(120_000),  # a full disk, as far as the shard writer can tell
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    [line] = re.findall(r"Error: [^\n]*", result.stderr)  # tqdm's progress shares the line
    assert re.fullmatch(
        rf"Error: {tmp_path}/\.masks\.partial/\w+\.safetensors: cannot write it: .*File too large.*",
        line.strip(),
    ), line
    assert "Traceback" not in result.stderr
    assert [p.name for p in out.iterdir()] == ["cow.safetensors"]
    assert (out / "cow.safetensors").read_bytes() == b"an earlier output"
    partial = tmp_path / ".masks.partial"
    assert not [p for p in partial.rglob("*") if p.is_file() and p.name.endswith(".tmp")]


def test_a_full_disk_while_writing_any_output_names_it_and_keeps_the_old_one(tmp_path):
    import errno

    from diysc.io import OutputError, atomic_path

    out = tmp_path / "eval.json"
    out.write_text("old")
    with pytest.raises(OutputError, match=rf"^{out}: cannot write it: No space left on device$"):
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")  # as a full disk raises it
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["eval.json"]


# --- pseudo-labels: coordinates off the grid, categories without labels -------------------------------


def _labels(root: Path, split: str, cat: str):
    import pandas as pd

    return pd.read_parquet(root / split / f"{cat}.parquet")


def test_a_label_row_outside_the_grid_is_refused_naming_file_and_row(tmp_path):
    from diysc.adapter.data import load_training_data
    from diysc.formats.labels import LabelsError, write_labels
    from tests.test_adapter_train import write_inputs

    features, labels = write_inputs(tmp_path)  # a 4x4 grid
    path = labels / "trn" / "car.parquet"
    frame = _labels(labels, "trn", "car")
    frame.loc[3, "trg_col"] = 999
    write_labels(path, frame)
    with pytest.raises(
        LabelsError,
        match=rf"^{path}: row 3: trg_col = 999 lies outside the 4x4 patch grid \(0..3\)",
    ):
        load_training_data(features, labels, max_kps=6, val_pairs=2, seed=0)
    frame["trg_col"] = 4  # every row one past the edge
    write_labels(path, frame)
    with pytest.raises(LabelsError, match=r"row 0: trg_col = 4 .* 18 of 18 rows are outside"):
        load_training_data(features, labels, max_kps=6, val_pairs=2, seed=0)


def test_training_uses_the_categories_with_labels_and_stops_only_when_none_has(tmp_path, capsys):
    from diysc.adapter.data import load_training_data
    from diysc.formats.labels import LabelsError, write_labels
    from tests.test_adapter_train import write_inputs

    features, labels = write_inputs(tmp_path)  # car and dog, 3 pairs each in trn and val
    write_labels(labels / "val" / "dog.parquet", _labels(labels, "val", "dog").iloc[:0])
    data = load_training_data(features, labels, max_kps=6, val_pairs=2, seed=0)
    assert len(data.train) == 6 and len(data.val) == 2  # val: car's 2 drawn pairs only
    assert capsys.readouterr().err == (
        f"note: {labels / 'val'}: no pseudo-labels for dog; val uses the other 1 categories\n"
    )
    write_labels(labels / "val" / "car.parquet", _labels(labels, "val", "car").iloc[:0])
    with pytest.raises(LabelsError, match=rf"^{labels / 'val'}: no category has val pseudo-labels"):
        load_training_data(features, labels, max_kps=6, val_pairs=2, seed=0)
    for cat in ("car", "dog"):
        write_labels(labels / "trn" / f"{cat}.parquet", _labels(labels, "trn", cat).iloc[:0])
    with pytest.raises(LabelsError, match=rf"^{labels / 'trn'}: no category has trn pseudo-labels"):
        load_training_data(features, labels, max_kps=6, val_pairs=2, seed=0)


def test_generation_warns_for_each_category_without_labels(tmp_path):
    from tests.test_pseudo import run_stage, write_stores

    write_stores(tmp_path)
    output = run_stage(tmp_path, "pseudo.sphere_threshold=0.0001")
    warned = re.findall(r"warning: (\S+): no pseudo-labels", output)
    assert warned == [
        str(tmp_path / "labels" / split / f"{cat}.parquet")
        for split in ("trn", "val")
        for cat in ("cow", "dog")
    ]


# --- segmentation masks -------------------------------------------------------------------------------


def test_a_segmentation_drawn_in_alpha_is_read_from_alpha(tmp_path):
    from diysc.masks import dataset_mask

    obj = np.zeros((4, 6), bool)
    obj[1:3, 2:5] = True  # 6 of 24 pixels
    rgba = np.full((4, 6, 4), 255, np.uint8)  # white everywhere, the object only in alpha
    rgba[..., 3] = np.where(obj, 255, 0)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert (dataset_mask(tmp_path / "rgba.png", 6, 4) == obj).all()
    la = np.stack([np.full((4, 6), 200, np.uint8), np.where(obj, 255, 0).astype(np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert (dataset_mask(tmp_path / "la.png", 6, 4) == obj).all()
    coloured = np.zeros((4, 6, 4), np.uint8)  # colour-coded, alpha opaque everywhere
    coloured[obj] = (0, 128, 0, 255)
    coloured[~obj, 3] = 255
    Image.fromarray(coloured, "RGBA").save(tmp_path / "opaque.png")
    assert (dataset_mask(tmp_path / "opaque.png", 6, 4) == obj).all()
    deep = Image.fromarray(np.where(obj, 40000, 0).astype(np.uint16))  # 16-bit: as before
    deep.save(tmp_path / "deep.png")
    assert (dataset_mask(tmp_path / "deep.png", 6, 4) == obj).all()
    palette = Image.fromarray(np.where(obj, 3, 0).astype(np.uint8), "P")  # palette indices
    palette.save(tmp_path / "palette.png")
    assert (dataset_mask(tmp_path / "palette.png", 6, 4) == obj).all()


def test_a_mask_covering_the_whole_image_is_reported_by_name(tmp_path, capsys):
    from diysc.config.schema import MasksParams
    from diysc.formats.masks import MaskStore
    from diysc.masks import compute_masks
    from tests.test_features import IMAGES, make_spair_tree

    root = make_spair_tree(tmp_path / "dataset", IMAGES[:2])
    Image.fromarray(np.full((90, 120), 255, np.uint8)).save(root / "Segmentation/bird/a1.png")
    dataset = SPairDataset(root)
    compute_masks(dataset, MasksParams(source="dataset"), tmp_path / "masks", progress=False)
    assert capsys.readouterr().err == (
        f"warning: {root / 'JPEGImages/bird/a1.jpg'}: the dataset mask covers the whole image "
        "(120x90 px)\n"
    )
    assert MaskStore(tmp_path / "masks").mask("bird", "a1").all()  # kept: it may be right


# --- runtime settings, diysc verify ---------------------------------------------------------------


def test_several_workers_without_a_gpu_are_refused_saying_so(spair_sample, tmp_path):
    # no GPU, whatever the machine has, and no device named
    env = {"DIYSC_GPUS": "3", "CUDA_VISIBLE_DEVICES": "", "DIYSC_DEVICE": ""}
    args = ["--dataset", str(spair_sample), "--out", str(tmp_path / "masks")]
    result = _run_stage("masks", *BBOX_MASKS, *args, env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: DIYSC_GPUS=3 but there is no GPU here (torch sees no CUDA device); set "
        "DIYSC_GPUS=1, or DIYSC_DEVICE=cpu to run 3 worker processes on the CPU"
    ]
    assert not (tmp_path / "masks").exists()


def test_a_batch_that_the_workers_cannot_share_is_refused_before_any_starts(tmp_path):
    env = {"DIYSC_GPUS": "3", "DIYSC_DEVICE": "cpu"}
    args = ["--set", "adapter.batch_size=8", "--features", str(tmp_path), "--labels", str(tmp_path)]
    args += ["--out", str(tmp_path / "a.pth"), "--curve", str(tmp_path / "c.csv")]
    args += ["--metrics", str(tmp_path / "m.json"), "--checkpoints", str(tmp_path / "ck")]
    result = _run_stage("train_adapter", *args, env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: adapter.batch_size=8 (pairs per step, all processes) must be divisible by the "
        "number of processes (3, DIYSC_GPUS)"
    ]


def test_dvc_exp_run_refuses_a_hand_edit_of_params_yaml_and_keeps_it(tmp_path):
    """`dvc exp run` recomposes params.yaml from conf/ before any stage runs; the guard DVC's Hydra
    loads first (hydra_plugins/) refuses, so the edit is neither lost nor run as if absent."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    params = clone / "params.yaml"
    edited = params.read_text().replace("\ncycle: relaxed\n", "\ncycle: strict\n")
    assert edited != params.read_text()
    params.write_text(edited)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    env["DVC_NO_ANALYTICS"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "run"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"ERROR: {params}: hand-edited; `dvc exp run` recomposes it from conf/ and would silently "
        "drop the edit. Run the experiment with `dvc exp run -S key=value` (after `git checkout "
        "params.yaml`), or make the change in conf/ (then `diysc compose-params`)"
    ]
    assert params.read_text() == edited  # the edit is still there
    assert "Running stage" not in result.stdout + result.stderr
