"""Shared fixtures. Area-specific fixtures live in the test modules that use them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Real data the tests need lives in the repository, so the suite runs with no skip in any clone:
# a 12-image SPair-71k sample with its official annotations, and the authors' CC0 DINO-only adapter.
FIXTURES = ROOT / "tests" / "fixtures"
SPAIR_SAMPLE = FIXTURES / "spair_sample"
OFFICIAL_DINO_ADAPTER = FIXTURES / "official_adapters" / "dino_spair_768.pth"

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# --- no silent skips ------------------------------------------------------------------------------
# A skipped test is a failed run, except a test marked `gpu` on a machine without CUDA: a clone
# holds everything else the suite needs.


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped (only these) without one")
    config.stash[_SKIPPED] = []


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


def pytest_report_teststatus(report, config):
    if report.skipped and "gpu" not in report.keywords and not hasattr(report, "wasxfail"):
        config.stash[_SKIPPED].append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    skipped = session.config.stash[_SKIPPED]
    if skipped and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = config.stash[_SKIPPED]
    if skipped:
        terminalreporter.section("skipped tests fail the run (only `gpu` tests may skip)", red=True)
        for nodeid in skipped:
            terminalreporter.line(nodeid)


_SKIPPED = pytest.StashKey[list]()


# --- two workers (pytest-xdist, `-n 2` in pyproject.toml) --------------------------------------

# they share `pipeline`
PIPELINE_MODULES = ("tests/test_e2e.py", "tests/test_reruns.py", "tests/test_clip_backbone.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Each test module to one worker, so its module-scoped fixtures are built once; the modules
    that share the pipeline run (tests/pipeline.py) to the same worker, in order."""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "pipeline run" if module in PIPELINE_MODULES else module

    return ByModule(config, log)


@pytest.fixture(scope="session")
def spair_sample() -> Path:
    assert SPAIR_SAMPLE.is_dir(), f"{SPAIR_SAMPLE}: test fixture missing from the checkout"
    return SPAIR_SAMPLE


@pytest.fixture(scope="session")
def official_dino_adapter() -> Path:
    assert OFFICIAL_DINO_ADAPTER.is_file(), f"{OFFICIAL_DINO_ADAPTER}: test fixture missing"
    return OFFICIAL_DINO_ADAPTER


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory) -> None:
    """Nothing outside the repository and pytest's temporary directories: not a user's
    `~/.cache/diysc` (stale tiny backbones there would decide results)."""
    os.environ["DIYSC_CACHE"] = str(tmp_path_factory.mktemp("diysc-session-cache"))


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """A per-session cache for generated tiny backbones (DIYSC_CACHE)."""
    path = tmp_path_factory.mktemp("diysc-cache")
    os.environ["DIYSC_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """The README's main job, run once in a fresh clone (tests/pipeline.py); the modules that use
    it run on one worker (`pytest_xdist_make_scheduler`), so it is built once."""
    from tests.pipeline import build

    # A path with spaces: the README's commands must work in any clone. Not non-ASCII here: DVC's
    # queue (test_e2e) cannot start an experiment under such a path (it writes the temporary
    # repository's git config as ASCII; README). CI runs the suite from a non-ASCII clone, and
    # tests/test_verify.py runs a pipeline under one.
    where = tmp_path_factory.mktemp("pipeline") / "dir with spaces"
    where.mkdir(parents=True)
    return build(where)
