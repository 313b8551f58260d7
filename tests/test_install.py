"""install.sh: PyTorch's CPU index is named to pip only when it answers (one probe, not a retry
loop per package), and the locks name no index of their own (a user's mirror stays in charge)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.loopback import serve

ROOT = Path(__file__).resolve().parents[1]


def _dry_run(lock: str, index: str) -> str:
    env = {**os.environ, "DIYSC_INSTALL_DRY_RUN": "1", "DIYSC_TORCH_INDEX": index}
    env["PYTHON"] = sys.executable
    result = subprocess.run(
        ["bash", str(ROOT / "install.sh"), lock], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def answering_index(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "index.html").write_text("<html></html>")
    with serve(tmp_path) as url:
        yield url


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the with block ends


def test_an_answering_index_is_given_to_pip(answering_index):
    out = _dry_run("requirements.lock", answering_index)
    assert f"--extra-index-url {answering_index} -r requirements.lock" in out


def test_an_unreachable_index_is_left_out_after_one_probe():
    index = f"http://127.0.0.1:{_closed_port()}"
    out = _dry_run("requirements.lock", index)
    assert "does not answer" in out
    assert "--extra-index-url" not in out


def test_the_cuda_lock_needs_no_probe(answering_index):
    out = _dry_run("requirements-cuda.lock", answering_index)
    assert "index" not in out.replace("-r requirements-cuda.lock", "")


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-cuda.lock"])
def test_the_locks_name_no_index(lock):
    """An index named in the lock is asked about every package (and retried when unreachable),
    and `--index-url` would override a user's configured mirror."""
    options = [line for line in (ROOT / lock).read_text().splitlines() if line.startswith("-")]
    assert options == []
