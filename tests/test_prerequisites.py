"""`dvc exp run -S preset=paper` offline: every missing prerequisite named in seconds, by the data
stage and by `diysc check`."""

from __future__ import annotations

import http.server
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from diysc import prerequisites
from diysc.config.compose import compose
from diysc.config.overrides import params_from_dict
from diysc.datasets.spair.build import ARCHIVE_ENV
from diysc.probe import answer

ROOT = Path(__file__).resolve().parents[1]
CLOSED_PORT_URL = "http://127.0.0.1:9/SPair-71k.tar.gz"  # discard port: nothing listens


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No dataset copy, no download cache, no GPU chosen; the hub is off (conftest's HF_HUB_OFFLINE)."""
    monkeypatch.delenv(ARCHIVE_ENV, raising=False)
    monkeypatch.delenv("DIYSC_DEVICE", raising=False)
    monkeypatch.setenv("DIYSC_CACHE", str(tmp_path / "cache"))


def paper(*overrides: str):
    return params_from_dict(
        compose(
            ROOT / "conf", ["preset=paper", f"datasets.spair.url={CLOSED_PORT_URL}", *overrides]
        )
    )


def test_paper_offline_names_every_missing_thing_and_its_fix_in_seconds(offline):
    start = time.perf_counter()
    with pytest.raises(prerequisites.PrerequisitesError) as caught:
        prerequisites.require(paper(), in_experiment=True)
    assert time.perf_counter() - start < 10
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("preset 'paper' cannot run here, missing: (1) SPair-71k")
    assert f"set {ARCHIVE_ENV}=/path/to/SPair-71k.tar.gz" in message
    for param in (
        "features.backbones.dino.model",
        "features.backbones.sd.model",
        "masks.sam_model",
    ):
        assert f"-S {param}=/models/" in message
    assert "(5) a CUDA GPU (torch sees none)" in message and "DIYSC_DEVICE=cpu" in message
    assert "`git checkout params.yaml` (or `diysc compose-params`)" in message


def test_local_copies_satisfy_the_paper_preset(offline, tmp_path, monkeypatch):
    archive = tmp_path / "SPair-71k.tar.gz"
    archive.write_bytes(b"")
    monkeypatch.setenv(ARCHIVE_ENV, str(archive))
    monkeypatch.setenv("DIYSC_DEVICE", "cpu")
    models = {name: tmp_path / name for name in ("dino", "sd", "sam")}
    for folder in models.values():
        folder.mkdir()
    params = paper(
        f"features.backbones.dino.model={models['dino']}",
        f"features.backbones.sd.model={models['sd']}",
        f"masks.sam_model={models['sam']}",
    )
    found = prerequisites.check(params)
    assert [p.ok for p in found] == [True] * 5, found
    assert found[0].found == f"local copy {archive}"
    prerequisites.require(params)
    monkeypatch.setenv(ARCHIVE_ENV, str(tmp_path / "nowhere.tar.gz"))
    with pytest.raises(prerequisites.PrerequisitesError, match="nowhere.tar.gz does not exist"):
        prerequisites.require(params)


def test_the_tiny_preset_needs_nothing_and_probes_nothing(offline):
    tiny = params_from_dict(compose(ROOT / "conf"))  # no SPair-71k entry: no URL to probe
    start = time.perf_counter()
    assert prerequisites.check(tiny) == []
    assert time.perf_counter() - start < 1


def test_a_server_answers_or_names_its_status(tmp_path):
    (tmp_path / "here.tar.gz").write_bytes(b"x")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert answer(f"{base}/here.tar.gz") is None
        assert answer(f"{base}/gone.tar.gz") == "HTTP 404"
    finally:
        server.shutdown()
        server.server_close()
    assert answer(CLOSED_PORT_URL).startswith("no answer")


def test_the_data_stage_fails_first_with_the_message(offline, tmp_path, monkeypatch):
    from stages.data import main

    monkeypatch.setenv("DVC_EXP_NAME", "paper-offline")
    # The paper preset's SPair-71k entry with the tiny preset's backbones but a real DINOv2, in a
    # params file beside a copy of the pipeline that declares the stage `data@spair`.
    overrides = ["preset=paper", f"datasets.spair.url={CLOSED_PORT_URL}", "masks.source=dataset"]
    overrides += ["features.backbones.dino.model=facebook/dinov2-base"]
    overrides += ["features.backbones.sd.model=tiny"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(compose(ROOT / "conf", overrides)))
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    args = ["--params", str(tmp_path / "params.yaml"), "--dataset-name", "spair"]
    args += ["--out", str(tmp_path / "dataset")]
    start = time.perf_counter()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert line.startswith("Error: preset 'paper' cannot run here, missing: (1) SPair-71k")
    assert "features.backbones.dino.model=facebook/dinov2-base" in line
    assert "git checkout params.yaml" in line
    assert "features.backbones.sd" not in line  # the tiny params' stand-in is generated locally
    assert not (tmp_path / "dataset").exists() and time.perf_counter() - start < 10


def test_diysc_check_lists_each_prerequisite(offline):
    from diysc.cli import main

    tiny = CliRunner().invoke(main, ["check", "--params", str(ROOT / "params.yaml")])
    assert tiny.exit_code == 0, tiny.output
    assert tiny.output.endswith("everything this configuration needs is here\n")
    conf = ["--conf", str(ROOT / "conf")]
    result = CliRunner().invoke(
        main, ["check", *conf, "-S", "preset=paper", "-S", f"datasets.spair.url={CLOSED_PORT_URL}"]
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert (
        lines[0]
        == f"preset 'paper' from {ROOT / 'conf'}/ with preset=paper datasets.spair.url={CLOSED_PORT_URL}:"
    )
    assert [line.split()[0] for line in lines[1:6]] == ["MISSING"] * 5
    assert (
        lines[-1] == "Error: 5 of 5 prerequisites missing (listed above with how to provide each)"
    )


def test_check_loops_over_the_configured_backbones(offline):
    """A CLIP backbone beside the paper's: its real weights are named; an unknown name fails."""
    clip = "+features.backbones.clip={model: openai/clip-vit-base-patch16, size: 224}"
    found = prerequisites.check(paper(clip))
    models = [p.what for p in found if "model=" in p.what]
    assert [m.split(" ")[0] for m in models] == [
        "features.backbones.sd.model=stable-diffusion-v1-5/stable-diffusion-v1-5",
        "features.backbones.dino.model=facebook/dinov2-base",
        "features.backbones.clip.model=openai/clip-vit-base-patch16",
        "masks.sam_model=facebook/sam-vit-huge",
    ]
    assert all(not p.ok for p in found if "model=" in p.what)  # offline: none is here
    tiny_clip = (
        "+features.backbones.clip={model: tiny, size: 224}"  # built locally: nothing to find
    )
    assert len(prerequisites.check(paper(tiny_clip))) == len(found) - 1
    from diysc.backbones.registry import UnknownBackbone

    with pytest.raises(UnknownBackbone, match="backbone 'vgg' is not registered"):
        prerequisites.check(paper("+features.backbones.vgg={model: x, size: 224}"))


def test_a_gpu_pool_is_checked_without_taking_a_gpu(offline, tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("DIYSC_GPU_POOL", "0,1")
    monkeypatch.setenv("DIYSC_GPU_LOCKS", str(tmp_path / "locks"))
    gpu = [p for p in prerequisites.check(paper()) if "GPU" in p.what]
    assert [p.what for p in gpu] == ["a CUDA GPU of the pool"]
    assert gpu[0].ok == torch.cuda.is_available()
    assert not (tmp_path / "locks").exists()  # no GPU taken
