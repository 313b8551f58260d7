"""Resume checkpoints of the training stages: only ever the same run, and only while unfinished.

A run is identified by a key (`diysc.provenance.run_key`) over everything that decides its result:
params, seed, the content of every input file, and the code it runs. A training stage keeps one
file, `<checkpoints>/last.pt`, replaced atomically as training advances. When a run starts:

- a checkpoint with the same key resumes it, which gives the weights of an uninterrupted run;
- a checkpoint with another key (other params, inputs or code) is deleted, and training starts
  from scratch;
- a finished run deletes its checkpoint, so rerunning a finished run (`dvc repro -f`) always trains
  from scratch and nothing accumulates. A run that fails (e.g. a NaN loss) keeps its last good
  checkpoint, which the same run resumes.

Checkpoints hold only tensors and plain Python values, and are read with `weights_only=True`: a
planted file cannot run code.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch

from diysc.errors import UserError
from diysc.io import save_torch

CHECKPOINT_NAME = "last.pt"
# Sub-directories named by a 16-hex-digit fingerprint: the layout before run keys, pruned on sight.
_LEGACY_RUN_DIR = re.compile(r"[0-9a-f]{16}")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint of this run exists but cannot be read."""


def checkpoint_path(checkpoints: str | Path) -> Path:
    return Path(checkpoints) / CHECKPOINT_NAME


def load_resumable(checkpoints: str | Path, key: str, map_location: Any = "cpu") -> dict | None:
    """The saved state of run `key` if `<checkpoints>/last.pt` holds it, else None.

    A checkpoint of any other run is deleted (with a message saying so), as are directories of the
    earlier fingerprint layout.
    """
    _prune_legacy(Path(checkpoints))
    path = checkpoint_path(checkpoints)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise CheckpointError(
            f"{path}: cannot read this resume checkpoint ({err}); delete it to train from scratch"
        ) from None
    if not isinstance(state, dict) or state.get("run_key") != key:
        print(
            f"{path}: written by another run (params, inputs or code differ); training from scratch"
        )
        path.unlink()
        return None
    return state


def save_resumable(checkpoints: str | Path, key: str, state: dict[str, Any]) -> Path:
    """Replace `<checkpoints>/last.pt` atomically with `state`, tagged with the run key."""
    path = checkpoint_path(checkpoints)
    save_torch(path, {**state, "run_key": key})
    return path


def finish(checkpoints: str | Path) -> None:
    """The run is complete: its checkpoint is never resumed, so remove it."""
    checkpoint_path(checkpoints).unlink(missing_ok=True)


def _prune_legacy(checkpoints: Path) -> None:
    if not checkpoints.is_dir():
        return
    for entry in checkpoints.iterdir():
        if entry.is_dir() and _LEGACY_RUN_DIR.fullmatch(entry.name):
            if (entry / CHECKPOINT_NAME).is_file():
                shutil.rmtree(entry)
