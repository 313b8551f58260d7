"""Adapter training: schedule, validation and best model, resume after SIGKILL, NaN, DDP (gloo)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diysc.adapter.data import FeatureBank, TrainingData, random_training_data
from diysc.adapter.model import Adapter
from diysc.adapter.train import (
    PairOrder,
    TrainingDiverged,
    train_adapter,
    validate,
    write_curve,
)
from diysc.config.schema import AdapterParams

ROOT = Path(__file__).resolve().parents[1]
DIMS = (16, 32, 24)  # three small feature groups: two with a projection shortcut, …
GRID = 6
SMALL = AdapterParams(
    channels=128,
    steps=8,
    batch_size=1,
    val_every=4,
    val_pairs=4,
    checkpoint_every=2,
    max_kps=6,
    dropout=0.2,
)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the subprocess runs use one, and the test machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_data(seed: int = 0) -> TrainingData:
    return random_training_data(
        DIMS, GRID, images=6, train_pairs=10, val_pairs=4, max_kps=6, seed=seed
    )


# One training run in a fresh process: `script.py <checkpoints> <out> <batch_size> <block_at>`.
# With block_at > 0 it announces step block_at (file `<out>.ready`) and then waits to be killed.
SCRIPT = f"""
import sys, time
from pathlib import Path
import torch
from diysc.adapter.data import random_training_data
from diysc.adapter.train import setup_distributed, train_adapter
from diysc.config.schema import AdapterParams

torch.set_num_threads(1)
checkpoints, out, batch_size, block_at = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
device = setup_distributed()

def on_step(row):
    if row["step"] == block_at:
        Path(str(out) + ".ready").write_text("ready")
        time.sleep(600)

params = AdapterParams(**{{**{dataclasses.asdict(SMALL)!r}, "batch_size": batch_size}})
data = random_training_data({DIMS!r}, {GRID}, images=6, train_pairs=10, val_pairs=4, max_kps=6)
result = train_adapter(data, params, 0, checkpoints, device=device, on_step=on_step)
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
torch.save({{"best": result.best_state, "final": result.final_state, "curve": result.curve}}, out)
"""


def train_here(checkpoints: Path, batch_size: int) -> dict:
    """The same run as SCRIPT's, in this process (one thread, like the script)."""
    result = train_adapter(
        small_data(), dataclasses.replace(SMALL, batch_size=batch_size), 0, checkpoints
    )
    return {"best": result.best_state, "final": result.final_state, "curve": result.curve}


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("adapter") / "train_once.py"
    path.write_text(SCRIPT)
    return path


def run_script(script: Path, *args, torchrun: int = 0, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DIYSC_DEVICE": "cpu"}
    launcher = [sys.executable]
    if torchrun:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
    return subprocess.Popen(
        [*launcher, str(script), *map(str, args)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def finish(process: subprocess.Popen, timeout: float = 120) -> None:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output


# --- in-process ---------------------------------------------------------------------------------


def test_schedule_validation_best_model_and_curve(tmp_path):
    result = train_adapter(small_data(), SMALL, 0, tmp_path / "ckpt")
    loss, lr, val = result.curve.T
    assert result.steps == 8 and result.curve.shape == (8, 3)
    assert lr[0].item() == pytest.approx(5e-3 / 25)  # OneCycle: start at max_lr / div_factor
    assert lr[-1].item() == pytest.approx(5e-3 / 25 / 1e4)  # … end at start / final_div_factor
    assert lr.max().item() > 4e-3 and lr.argmax().item() in (1, 2)  # peak after 30 % of the steps
    assert torch.isfinite(loss).all()
    measured = [i + 1 for i in range(8) if not math.isnan(val[i])]
    assert measured == [4, 8]  # every val_every steps and at the end
    best = min(measured, key=lambda s: val[s - 1].item())
    assert result.best_step == best and result.best_val_loss == val[best - 1].item()
    # The best state is the model as it was at that step: its validation loss is reproduced.
    model = Adapter(DIMS, 128)
    model.load_state_dict(result.best_state)
    again = validate(model, small_data(), SMALL, 0, torch.device("cpu"), False)
    assert again == pytest.approx(result.best_val_loss, rel=1e-6)
    write_curve(tmp_path / "curve.csv", result.curve)
    lines = (tmp_path / "curve.csv").read_text().splitlines()
    assert lines[0] == "step,loss,lr,val_loss" and len(lines) == 9
    assert lines[1].endswith(",") and lines[4].split(",")[3] != ""


def test_beta1_cycles_with_the_learning_rate(tmp_path):
    import diysc.adapter.train as train_module

    seen = []
    original = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["betas"][0])
        return original(self, *args, **kwargs)

    torch.optim.AdamW.step = spy
    try:
        train_module.train_adapter(
            small_data(), dataclasses.replace(SMALL, val_every=100), 0, tmp_path / "ckpt"
        )
    finally:
        torch.optim.AdamW.step = original
    assert seen[0] == pytest.approx(0.95) and min(seen) == pytest.approx(0.85, abs=0.01)


def test_a_finished_run_leaves_no_checkpoint_and_a_rerun_trains_from_scratch(tmp_path):
    first = train_adapter(small_data(), SMALL, 0, tmp_path)
    assert first.resumed_from == 0 and not (tmp_path / "last.pt").exists()
    again = train_adapter(small_data(), SMALL, 0, tmp_path)
    assert again.resumed_from == 0 and again.steps == 8  # all 8 steps ran again
    torch.testing.assert_close(again.curve, first.curve, rtol=0, atol=0, equal_nan=True)
    for name, value in first.final_state.items():
        assert torch.equal(again.final_state[name], value), name


def test_only_the_same_unfinished_run_is_resumed(tmp_path):
    with pytest.raises(Interrupt):
        train_adapter(small_data(), SMALL, 0, tmp_path, on_step=interrupt_at(4))
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 4
    # Other params, other input content, another seed: the checkpoint is not theirs.
    for changed in (
        {"params": dataclasses.replace(SMALL, lr=1e-3)},
        {"inputs": {"features": "0" * 64}},
        {"seed": 1},
    ):
        with pytest.raises(Interrupt):
            train_adapter(
                small_data(),
                changed.get("params", SMALL),
                changed.get("seed", 0),
                tmp_path,
                inputs=changed.get("inputs"),
                on_step=interrupt_at(2),
            )
        assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 2, changed
    # The interrupted run (seed 1 wrote the checkpoint last) resumes from step 2.
    resumed = train_adapter(small_data(), SMALL, 1, tmp_path)
    assert resumed.resumed_from == 2 and resumed.steps == 8


def test_old_fingerprint_directories_are_pruned(tmp_path):
    legacy = tmp_path / "0123456789abcdef"
    legacy.mkdir()
    torch.save({"step": 8}, legacy / "last.pt")
    train_adapter(small_data(), SMALL, 0, tmp_path)
    assert not legacy.exists()


class Interrupt(Exception):
    pass


def interrupt_at(step: int):
    def on_step(row: dict) -> None:
        if row["step"] == step:
            raise Interrupt

    return on_step


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    data = small_data()
    # Give the pair trained at step 6 (position 5 of epoch 0) a source image full of NaN.
    poisoned = int(PairOrder(len(data.train), 0)[torch.tensor([5])])
    nan_image = len(data.bank)
    src_image = data.train.src_image.clone()
    src_image[poisoned] = nan_image
    clean = data.bank

    def loader(cat, stem):
        return torch.full((sum(DIMS), GRID, GRID), math.nan) if stem == "nan" else clean[int(stem)]

    data = dataclasses.replace(
        data,
        train=dataclasses.replace(data.train, src_image=src_image),
        bank=FeatureBank(
            [*[("random", str(i)) for i in range(len(clean))], ("random", "nan")], loader
        ),
    )
    with pytest.raises(
        TrainingDiverged, match=r"loss is nan at step 6.*last good checkpoint"
    ) as err:
        train_adapter(data, SMALL, 0, tmp_path)
    checkpoint = tmp_path / "last.pt"
    assert str(checkpoint) in str(err.value)
    kept = torch.load(checkpoint, weights_only=True)
    assert kept["step"] == 4  # checkpoints every 2 steps; step 6 was never applied
    assert all(torch.isfinite(v).all() for v in kept["model"].values())


# --- real processes -------------------------------------------------------------------------------


def test_sigkill_then_resume_ends_with_the_same_weights(tmp_path, script):
    victim = run_script(script, tmp_path / "ckpt", tmp_path / "run.pt", 1, 7)
    ready = Path(str(tmp_path / "run.pt") + ".ready")
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert victim.poll() is None, victim.communicate()[0]
        assert time.monotonic() < deadline, "the training process never reached step 7"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    checkpoint = tmp_path / "ckpt" / "last.pt"
    # step 7 was lost with the process
    assert torch.load(checkpoint, weights_only=True)["step"] == 6

    finish(run_script(script, tmp_path / "ckpt", tmp_path / "run.pt", 1, 0))
    resumed, uninterrupted = torch.load(tmp_path / "run.pt"), train_here(tmp_path / "ref", 1)
    for key in ("best", "final"):
        for name, value in uninterrupted[key].items():
            assert torch.equal(resumed[key][name], value), f"{key}: {name} differs"
    torch.testing.assert_close(
        resumed["curve"], uninterrupted["curve"], rtol=0, atol=0, equal_nan=True
    )


def test_ddp_two_gloo_processes_match_one_process_with_the_doubled_batch(tmp_path, script):
    ddp = run_script(script, tmp_path / "ddp", tmp_path / "ddp.pt", 2, 0, torchrun=2)
    one = train_here(tmp_path / "one", 2)
    finish(ddp)
    two = torch.load(tmp_path / "ddp.pt")
    for name, value in one["final"].items():
        torch.testing.assert_close(two["final"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(two["curve"], one["curve"], rtol=1e-5, atol=1e-6, equal_nan=True)
    assert not torch.equal(one["final"]["mixing_weights"], torch.ones(len(DIMS)))  # it trained


# --- the stage, on real feature and label files ---------------------------------------------------


LABEL_SETTINGS = {"mask": True, "cycle": "strict", "chaining": False, "sphere_filter": True}


def write_inputs(root: Path) -> tuple[Path, Path]:
    """A two-category feature cache (SD + DINO, contract layout) and pseudo-labels for it."""
    import json

    import pandas as pd

    from diysc.formats.labels import labels_path, write_labels
    from diysc.io import save_shard

    g = torch.Generator().manual_seed(0)
    grid, dims = 4, {"s3": (8, 4), "s4": (8, 2), "s5": (8, 1)}
    features, labels = root / "features", root / "labels"
    stems = {"car": ["c0", "c1", "c2"], "dog": ["d0", "d1"]}
    for cat, names in stems.items():
        save_shard(
            features / "dino" / f"{cat}.safetensors",
            {n: torch.randn(16, grid, grid, generator=g).half() for n in names},
        )
        save_shard(
            features / "sd" / f"{cat}.safetensors",
            {
                f"{n}.{lvl}": torch.randn(c, s, s, generator=g).half()
                for n in names
                for lvl, (c, s) in dims.items()
            },
        )
        for split in ("trn", "val"):
            rows = [
                (
                    p,
                    names[p % len(names)],
                    names[(p + 1) % len(names)],
                    i % grid,
                    i // grid % grid,
                    (i + p) % grid,
                    (i + 2 * p) // grid % grid,
                )
                for p in range(3)
                for i in range(5 + p)
            ]
            frame = pd.DataFrame(
                rows, columns=["pair", "src", "trg", "src_col", "src_row", "trg_col", "trg_row"]
            )
            write_labels(labels_path(labels, split, cat), frame)
    info = {
        "size": 56,
        "grid": grid,
        "dino_dim": 16,
        "sd_dims": [8, 8, 8],
        "sd": True,
        "dtype": "float16",
        "categories": sorted(stems),
    }
    (features / "info.json").write_text(json.dumps(info))
    (labels / "info.json").write_text(json.dumps({"settings": LABEL_SETTINGS}))
    return features, labels


def test_training_data_from_the_feature_cache_and_label_files(tmp_path):
    from diysc.adapter.data import load_training_data
    from diysc.features import FeatureStore

    features, labels = write_inputs(tmp_path)
    data = load_training_data(features, labels, max_kps=6, val_pairs=2, seed=0)
    assert data.feature_dims == (8, 8, 8, 16) and data.grid == 4
    assert len(data.train) == 6 and len(data.val) == 4  # 3 pairs per category; 2 drawn for val
    assert data.train.valid.sum(1).tolist() == [5, 6, 6, 5, 6, 6]  # 5, 6, 7 rows → at most 6
    car = data.bank.keys.index(("car", "c1"))
    expected = FeatureStore(features).adapter_input("car", "c1").half()
    assert torch.equal(data.bank[car], expected)
    (labels / "val" / "dog.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"val.*dog"):
        load_training_data(features, labels, max_kps=6, val_pairs=2, seed=0)


def test_stage_writes_adapter_curve_and_mlflow_run(tmp_path, monkeypatch):
    import importlib.util

    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from diysc.adapter.model import load_adapter

    features, labels = write_inputs(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DIYSC_DEVICE", "cpu")
    spec = importlib.util.spec_from_file_location(
        "train_adapter_stage", ROOT / "stages" / "train_adapter.py"
    )
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    out, curve = tmp_path / "models" / "adapter.pth", tmp_path / "plots" / "curve.csv"
    sets = [
        "adapter.steps=4",
        "adapter.val_every=2",
        "adapter.checkpoint_every=2",
        "adapter.val_pairs=2",
        "adapter.channels=128",
        "adapter.max_kps=6",
        "tracking.mlflow=true",
    ]
    args = [
        "--params",
        str(ROOT / "params.yaml"),
        *[a for s in sets for a in ("--set", s)],
        "--features",
        str(features),
        "--labels",
        str(labels),
        "--out",
        str(out),
        "--curve",
        str(curve),
        "--metrics",
        str(tmp_path / "train.json"),
        "--checkpoints",
        str(tmp_path / "checkpoints"),
    ]
    result = CliRunner().invoke(stage.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "best val loss" in result.output
    adapter = load_adapter(out)
    assert adapter.feature_dims == (8, 8, 8, 16) and adapter.channels == 128
    rows = curve.read_text().splitlines()
    assert rows[0] == "step,loss,lr,val_loss" and len(rows) == 5
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["labels"] == LABEL_SETTINGS  # what the labels were generated with, recorded
    assert record["adapter"]["channels"] == 128 and record["steps"] == 4
    assert not (tmp_path / "checkpoints" / "last.pt").exists()  # finished: nothing to resume
    client = MlflowClient()
    [run] = client.search_runs(
        [client.get_experiment_by_name("diysc").experiment_id],
        "attributes.run_name = 'train_adapter'",
    )
    assert run.data.params["adapter.steps"] == "4" and run.data.params["seed"] == "0"
    assert all(run.data.params[f"labels.{k}"] == str(v) for k, v in LABEL_SETTINGS.items())
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 2
    assert "best_val_loss" in run.data.metrics
    assert "curve.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}
    model = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert model == {"adapter/adapter.pth", "adapter/config.json"}
    config = client.download_artifacts(run.info.run_id, "adapter/config.json", str(tmp_path))
    config = json.loads(Path(config).read_text())
    assert config["feature_dims"] == [8, 8, 8, 16] and config["labels"] == LABEL_SETTINGS


def test_the_stage_launches_its_own_workers_with_the_same_result(tmp_path):
    """`DIYSC_GPUS=2` (gloo on the CPU here): two workers started by the stage itself give the
    adapter of one process with the same global batch."""
    features, labels = write_inputs(tmp_path)
    sets = ["adapter.steps=4", "adapter.val_every=2", "adapter.checkpoint_every=2"]
    sets += ["adapter.val_pairs=2", "adapter.max_kps=6", "adapter.batch_size=2"]
    sets += ["tracking.mlflow=false"]

    def run_stage(name: str, gpus: int) -> dict:
        out = tmp_path / name
        command = [sys.executable, str(ROOT / "stages" / "train_adapter.py")]
        command += ["--params", str(ROOT / "params.yaml"), *[a for s in sets for a in ("--set", s)]]
        command += ["--features", str(features), "--labels", str(labels)]
        command += ["--out", str(out / "adapter.pth"), "--curve", str(out / "curve.csv")]
        command += ["--metrics", str(out / "train.json"), "--checkpoints", str(out / "ckpt")]
        env = {**os.environ, "DIYSC_GPUS": str(gpus), "DIYSC_DEVICE": "cpu"}
        env["OMP_NUM_THREADS"] = "1"
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads((out / "train.json").read_text())["steps"] == 4
        return torch.load(out / "adapter.pth", weights_only=True)

    two, one = run_stage("two", 2), run_stage("one", 1)
    assert set(two) == set(one)
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_a_bad_process_count_is_refused_naming_the_setting(monkeypatch):
    from diysc.launch import requested_processes

    for bad in ("two", "0"):
        monkeypatch.setenv("DIYSC_GPUS", bad)
        with pytest.raises(ValueError, match="DIYSC_GPUS"):
            requested_processes()
