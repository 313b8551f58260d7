"""The suite's policy: any skipped test fails the run, except `gpu` tests without CUDA."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CONFTEST = Path(__file__).with_name("conftest.py")


def _pytest(tmp_path: Path, source: str, *options: str) -> subprocess.CompletedProcess:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_example.py").write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options, str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("workers", [["-n", "0"], ["-n", "2"]], ids=["one", "xdist"])
def test_a_skipped_test_fails_the_run_and_is_named(tmp_path, workers):
    result = _pytest(
        tmp_path,
        "import pytest\n\ndef test_ok():\n    pass\n\n"
        "def test_missing_data():\n    pytest.skip('no data')\n",
        *workers,
    )
    assert result.returncode == 1, result.stdout
    assert "1 passed, 1 skipped" in result.stdout
    assert "test_example.py::test_missing_data" in result.stdout.split("skipped tests fail")[1]


def test_only_gpu_tests_may_skip_without_cuda(tmp_path):
    result = _pytest(
        tmp_path,
        "import pytest\nimport torch\n\ndef test_ok():\n    pass\n\n"
        "@pytest.mark.gpu\ndef test_on_cuda():\n    assert torch.cuda.is_available()\n",
    )
    assert result.returncode == 0, result.stdout
    expected = "2 passed" if torch.cuda.is_available() else "1 passed, 1 skipped"
    assert expected in result.stdout
