"""What a run ran on: key package versions, the PyTorch build, CPU/GPU model, thread counts.

The description goes to MLflow with every tracked run (tags `env.*` and an `environment.json`
artifact), not into the DVC metrics: it differs per machine, and the metrics must not. `lock_drift`
compares the installed packages with the pinned lock (`requirements.lock`, or
`requirements-cuda.lock` for CUDA builds), which `diysc info` reports.
"""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

KEY_PACKAGES = (
    "torch",
    "numpy",
    "pillow",
    "transformers",
    "diffusers",
    "safetensors",
    "pandas",
    "dvc",
    "mlflow",
    "hydra-core",
)
LOCK_FILES = {"cpu": "requirements.lock", "cuda": "requirements-cuda.lock"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's marketing name where the OS tells it (Linux, macOS), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):  # x86 / arm64 Linux
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict[str, str]:
    """Flat {name: value} of the environment; every value a string (MLflow tags)."""
    import torch

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": str(os.cpu_count()),
        "torch.build": torch.__version__,
        "torch.cuda": str(torch.version.cuda),
        "torch.intra_op_threads": str(torch.get_num_threads()),
        "torch.inter_op_threads": str(torch.get_num_interop_threads()),
        "gpu": ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        or "none",
        "diysc_threads": os.environ.get("DIYSC_THREADS", ""),
    }
    for dist in KEY_PACKAGES:
        env[f"version.{dist}"] = _version(dist) or "not installed"
    return env


def lock_path(root: Path | None = None) -> Path:
    """The lock that fits the installed PyTorch build (a CUDA build: the CUDA lock)."""
    import torch

    root = Path(root) if root else Path(__file__).resolve().parent.parent
    return root / LOCK_FILES["cuda" if torch.version.cuda else "cpu"]


def read_lock(path: Path) -> dict[str, str]:
    """{canonical name: pinned version} of a pip-compile / uv lock file."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def _same(locked: str, installed: str) -> bool:
    try:
        return Version(locked) == Version(installed)
    except InvalidVersion:
        return locked == installed


def lock_drift(path: Path) -> list[tuple[str, str, str]]:
    """(package, locked, installed or 'missing') for every pin the environment does not match."""
    drift = []
    for name, locked in sorted(read_lock(path).items()):
        installed = _version(name)
        if installed is None:
            drift.append((name, locked, "missing"))
        elif not _same(locked, installed):
            drift.append((name, locked, installed))
    return drift
