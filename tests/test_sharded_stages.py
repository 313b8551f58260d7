"""`DIYSC_GPUS=N` on the sharded stages (features, masks, pseudo_labels), and the GPU pool.

The stages run as real commands: with N > 1 the stage launches its own workers (gloo processes on
the CPU here, as on N GPUs), which share the categories; the published output must be the one
process's, byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from diysc import launch, runtime
from diysc.launch import share
from diysc.runtime import SettingError
from tests.conftest import ROOT
from tests.test_features import IMAGES, make_spair_tree
from tests.test_pseudo import write_stores


def run_stage(script: str, args: list[str], gpus: int) -> str:
    """Run a stage as DVC does (`python -m stages.<x>` from the root), its workers likewise."""
    module = f"stages.{Path(script).stem}"
    command = [sys.executable, "-m", module, "--params", str(ROOT / "params.yaml")]
    env = {**os.environ, "DIYSC_GPUS": str(gpus), "DIYSC_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        command + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path, with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def assert_same_tree(one: Path, two: Path) -> None:
    a, b = tree(one), tree(two)
    assert sorted(a) == sorted(b)
    assert [rel for rel in a if a[rel] != b[rel]] == []
    assert not (one.parent / f".{one.name}.partial").exists()  # the work dir went with publishing
    assert not (two.parent / f".{two.name}.partial").exists()


# --- how the work is split ----------------------------------------------------------------------


def test_the_share_is_balanced_and_depends_only_on_sizes_and_count():
    # largest first, each to the least loaded: 9 | 5+3+1, ties to the lowest rank
    assert share([3, 9, 1, 5], 2) == [1, 0, 1, 1]
    assert share([3, 9, 1, 5], 1) == [0, 0, 0, 0]
    assert share([4, 4, 4], 2) == [0, 1, 0]
    assert share([2, 2], 4) == [0, 1]  # more workers than items: the rest get none


LEADER_FIRST = """
import sys, time
from pathlib import Path
from diysc.launch import Workers

log = Path(sys.argv[1])
with Workers() as workers, workers.leader_first():
    with log.open("a") as f:
        f.write(f"{workers.rank} in\\n")
    time.sleep(2 if workers.leader else 0)  # rank 1 would come in meanwhile, unless it waits
    with log.open("a") as f:
        f.write(f"{workers.rank} out\\n")
"""


def test_rank_0_builds_first_what_the_others_then_load(tmp_path):
    script, log = tmp_path / "leader_first.py", tmp_path / "log"
    script.write_text(LEADER_FIRST)
    launch = f"from diysc.launch import launch_workers; launch_workers({str(script)!r}, [{str(log)!r}], 2)"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DIYSC_DEVICE": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", launch], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().split("\n") == ["0 in", "0 out", "1 in", "1 out", ""]


def test_workers_run_the_way_their_launcher_ran(tmp_path):
    """A stage run as a module hands `-m <module>` to its workers (so they import the same
    checkout's diysc); a script run by path hands its path."""
    package = tmp_path / "pkg"
    package.mkdir()
    probe = "import sys\nfrom diysc.launch import worker_command\nprint(worker_command(__file__))\n"
    (package / "probe.py").write_text(probe)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    as_module = subprocess.run(
        [sys.executable, "-m", "pkg.probe"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert as_module.stdout.strip() == "['-m', 'pkg.probe']", as_module.stderr
    as_script = subprocess.run(
        [sys.executable, str(package / "probe.py")], env=env, capture_output=True, text=True
    )
    assert as_script.stdout.strip() == repr([str(package / "probe.py")]), as_script.stderr


# --- the same output from one process and from two ----------------------------------------------


def test_features_from_two_workers_are_byte_identical(tmp_path, tiny_cache):
    dataset = make_spair_tree(tmp_path / "dataset", IMAGES)  # two categories, one per worker
    args = ["--set", "features.backbones={dino: {model: tiny, size: 224}}"]
    args += ["--dataset", str(dataset), "--batch-size", "2"]
    one = run_stage("features.py", [*args, "--out", str(tmp_path / "one" / "features")], 1)
    two = run_stage("features.py", [*args, "--out", str(tmp_path / "two" / "features")], 2)
    assert one.split(" -> ")[0] == two.split(" -> ")[0]  # only rank 0 reports
    assert two.count("2 categories, grid 16") == 1
    assert_same_tree(tmp_path / "one" / "features", tmp_path / "two" / "features")
    assert sorted(tree(tmp_path / "two" / "features")) == [
        "dino/bird.safetensors",
        "dino/cat.safetensors",
        "info.json",
    ]


def test_masks_from_two_workers_are_byte_identical(tmp_path):
    dataset = make_spair_tree(tmp_path / "dataset", IMAGES)
    args = ["--set", "masks.source=dataset", "--dataset", str(dataset)]
    one = run_stage("masks.py", [*args, "--out", str(tmp_path / "one" / "masks")], 1)
    two = run_stage("masks.py", [*args, "--out", str(tmp_path / "two" / "masks")], 2)
    assert one.split(" -> ")[0] == two.split(" -> ")[0]
    assert two.count("4 images in 2 categories") == 1
    assert_same_tree(tmp_path / "one" / "masks", tmp_path / "two" / "masks")
    assert sorted(tree(tmp_path / "two" / "masks")) == ["bird.safetensors", "cat.safetensors"]


def test_pseudo_labels_and_their_report_from_two_workers_are_byte_identical(tmp_path):
    # Six jobs, split by size: rank 0 gets trn/ant and trn/cow, rank 1 the others, so merging the
    # reports by rank would list the categories as ant, cow, bee; the job order is ant, bee, cow.
    write_stores(tmp_path, cats=("ant", "bee", "cow"))

    def labels(name: str, gpus: int) -> str:
        args = ["--dataset", str(tmp_path / "dataset"), "--features", str(tmp_path / "features")]
        args += ["--masks", str(tmp_path / "masks"), "--sphere", str(tmp_path / "sphere")]
        args += ["--out", str(tmp_path / name / "labels")]
        args += ["--metrics", str(tmp_path / name / "pseudo_labels.json")]
        args += ["--set", "pseudo.pairs_trn=30", "--set", "pseudo.pairs_val=10"]
        return run_stage("pseudo_labels.py", args, gpus)

    assert labels("one", 1) == labels("two", 2)
    assert_same_tree(tmp_path / "one" / "labels", tmp_path / "two" / "labels")
    assert sorted(tree(tmp_path / "two" / "labels")) == [
        "info.json",
        *[f"{split}/{cat}.parquet" for split in ("trn", "val") for cat in ("ant", "bee", "cow")],
    ]
    report = (tmp_path / "two" / "pseudo_labels.json").read_bytes()
    assert report == (tmp_path / "one" / "pseudo_labels.json").read_bytes()
    metrics = json.loads(report)
    assert all(metrics[split]["emitted"]["evaluated"] > 0 for split in ("trn", "val"))
    assert list(metrics["categories"]) == ["ant", "bee", "cow"]


@pytest.mark.parametrize("script", ["features", "masks", "pseudo_labels"])
def test_a_bad_process_count_is_refused_naming_the_setting(tmp_path, script):
    import importlib

    main = importlib.import_module(f"stages.{script}").main
    args = ["--params", str(ROOT / "params.yaml"), "--dataset", str(tmp_path)]
    args += ["--out", str(tmp_path / "out")]
    if script == "pseudo_labels":
        args += ["--features", str(tmp_path), "--masks", str(tmp_path), "--sphere", str(tmp_path)]
        args += ["--metrics", str(tmp_path / "m.json")]
    for bad in ("two", "0"):
        result = CliRunner().invoke(main, args, env={"DIYSC_GPUS": bad})
        assert result.exit_code == 1, result.output
        assert "Error: DIYSC_GPUS=" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_failing_worker_fails_the_stage_cleanly_and_a_rerun_resumes(tmp_path):
    dataset = make_spair_tree(tmp_path / "dataset", IMAGES)
    segmentation = dataset / "Segmentation" / "cat" / "b1.png"
    kept = segmentation.read_bytes()
    segmentation.unlink()  # only cat's worker (rank 1) fails
    command = [
        sys.executable,
        str(ROOT / "stages" / "masks.py"),
        "--params",
        str(ROOT / "params.yaml"),
    ]
    command += ["--set", "masks.source=dataset"]
    command += ["--dataset", str(dataset), "--out", str(tmp_path / "masks")]
    env = {**os.environ, "DIYSC_GPUS": "2", "DIYSC_DEVICE": "cpu"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "cat/b1.png: segmentation file not found" in proc.stderr, proc.stderr
    # rank 0, waiting for rank 1, fails too or is stopped by the launcher, whichever comes first;
    # when rank 0 sees the failure first, rank 1 may still be shutting down and be stopped
    assert re.search(
        r"Error: masks\.py: [12] of 2 workers failed \(.*rank 1: "
        r"(exit 1|stopped by signal 15 \(SIGTERM\))\)",
        proc.stderr,
    )
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "masks").exists()
    finished = (tmp_path / ".masks.partial" / "bird.safetensors").stat().st_ino  # kept

    segmentation.write_bytes(kept)  # a rerun, with another worker count, reuses rank 0's shard
    run_stage("masks.py", ["--set", "masks.source=dataset", *command[-4:]], 1)
    assert (tmp_path / "masks" / "bird.safetensors").stat().st_ino == finished
    assert sorted(tree(tmp_path / "masks")) == ["bird.safetensors", "cat.safetensors"]


def test_the_workers_see_the_pool_gpus_within_the_visible_ones(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert runtime.visible_devices([2, 0]) == "2,0"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    assert runtime.visible_devices([2, 0]) == "6,4"
    with pytest.raises(runtime.SettingError, match="GPU 3 but CUDA_VISIBLE_DEVICES=4,5,6"):
        runtime.visible_devices([3])


# --- a pool of GPUs shared by concurrent runs ---------------------------------------------------

HOLDER = (
    "import sys\n"
    "from diysc import runtime\n"
    "print(*runtime.claim_gpus(int(sys.argv[1]), poll_s=0.05), flush=True)\n"
    "sys.stdin.read()\n"  # hold until the test closes stdin
)


class Holder:
    """A separate process that claims `count` GPUs of the pool and holds them until released."""

    def __init__(self, locks: Path, pool: str, count: int = 1, visible: str | None = None):
        env = {**os.environ, "DIYSC_GPU_POOL": pool, "DIYSC_GPU_LOCKS": str(locks)}
        env.pop("CUDA_VISIBLE_DEVICES", None)
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )

    def ids(self) -> list[int]:
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read()
        return [int(x) for x in line.split()]

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def test_concurrent_runs_never_share_a_gpu_and_a_dead_holders_gpu_is_freed(tmp_path):
    locks = tmp_path / "locks"
    first, second = Holder(locks, "2,5"), Holder(locks, "2,5")
    held = [first.ids(), second.ids()]
    try:
        assert sorted(held) == [[2], [5]]
        third = Holder(locks, "2,5")  # the pool is taken: it waits
        assert "waiting for 1 free GPU(s) of DIYSC_GPU_POOL [2, 5]" in third.proc.stderr.readline()
        assert third.proc.poll() is None
        first.proc.send_signal(signal.SIGKILL)  # dies without releasing anything itself
        first.proc.wait(timeout=60)
        assert third.ids() == held[0]
        third.release()
    finally:
        for holder in (first, second):
            holder.release()


def test_runs_that_see_the_gpus_in_another_order_still_exclude_each_other(tmp_path):
    """Pool ids count within each run's CUDA_VISIBLE_DEVICES; the lock is the physical GPU's."""
    locks = tmp_path / "locks"
    first = Holder(locks, "1", visible="5,7")  # its GPU 1 is physical GPU 7
    try:
        assert first.ids() == [1]
        second = Holder(locks, "0", visible="7")  # its GPU 0 is physical GPU 7 too: it waits
        ready, _, _ = select.select([second.proc.stdout], [], [], 3.0)
        assert not ready, "a second run took physical GPU 7 while the first held it"
        third = Holder(locks, "0", visible="5,7")  # physical GPU 5 is free
        assert third.ids() == [0]
        first.release()
        assert second.ids() == [0]
        for holder in (second, third):
            holder.release()
    finally:
        first.release()


def test_more_workers_than_visible_gpus_are_refused_before_any_starts():
    launch.check_gpu_count(2, 2)
    with pytest.raises(SettingError, match=r"DIYSC_GPUS=3 but only 2 GPU\(s\) are visible"):
        launch.check_gpu_count(3, 2)


def test_a_multi_gpu_run_takes_its_gpus_together(tmp_path):
    locks = tmp_path / "locks"
    one = Holder(locks, "0,1,2")
    two = Holder(locks, "0,1,2", count=2)
    try:
        assert sorted(one.ids() + two.ids()) == [0, 1, 2]
    finally:
        one.release()
        two.release()


def test_pool_settings_are_checked_naming_the_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("DIYSC_GPU_LOCKS", str(tmp_path))
    for bad in ("a,b", "0,0", "-1", "0;1"):
        monkeypatch.setenv("DIYSC_GPU_POOL", bad)
        with pytest.raises(runtime.SettingError, match="DIYSC_GPU_POOL="):
            runtime.claim_gpus(1)
    monkeypatch.setenv("DIYSC_GPU_POOL", "0,1")
    with pytest.raises(runtime.SettingError, match="DIYSC_GPUS=3 but DIYSC_GPU_POOL has 2"):
        runtime.claim_gpus(3)
    monkeypatch.setenv("DIYSC_DEVICE", "cuda:1")
    with pytest.raises(runtime.SettingError, match="DIYSC_DEVICE=cuda:1 and DIYSC_GPU_POOL"):
        runtime.device()
    monkeypatch.delenv("DIYSC_DEVICE")
    if not torch.cuda.is_available():
        with pytest.raises(runtime.SettingError, match="DIYSC_GPU_POOL is set but .* no CUDA"):
            runtime.device()
    monkeypatch.delenv("DIYSC_GPU_POOL")
    assert runtime.claim_gpus(1) is None  # no pool: nothing to hold
    assert not list(tmp_path.iterdir())


def test_a_worker_computes_on_the_gpu_of_its_local_rank(monkeypatch):
    monkeypatch.delenv("DIYSC_DEVICE", raising=False)
    monkeypatch.setenv("DIYSC_GPU_POOL", "0")  # held by the launcher, not by its workers
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    cuda = torch.cuda.is_available()
    assert runtime.device() == (torch.device("cuda", 1) if cuda else torch.device("cpu"))
    monkeypatch.setenv("DIYSC_DEVICE", "cpu")
    assert runtime.device() == torch.device("cpu")


def test_a_workers_exit_status_reads_as_an_exit_code_or_the_signal_that_stopped_it():
    from diysc.launch import exit_text

    assert exit_text(1) == "exit 1"
    assert exit_text(-15) == "stopped by signal 15 (SIGTERM)"
    assert exit_text(-9) == "stopped by signal 9 (SIGKILL)"
    assert exit_text(-99) == "stopped by signal 99"
