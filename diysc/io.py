"""Atomic output writing and sharded tensor storage.

Every artifact a stage writes goes through `atomic_path`: the data lands in a temporary sibling and
is renamed into place only when complete, so an interrupted stage never leaves a half-written file.
Tensor caches are per-category safetensors shards (one key per image), opened memory-mapped; a
missing, truncated or garbage shard, or a missing key, is a `ShardError` naming the file and key.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from diysc.errors import UserError

_FOLDED = "diysc.metadata"  # the one key that holds several metadata entries as sorted JSON


class ShardError(UserError, ValueError):
    """A tensor shard is missing, unreadable or lacks a key; the message names the file and key."""


class OutputError(UserError, OSError):
    """An output could not be written (disk full, quota, I/O error); the message names it."""


class ShardKeyError(ShardError, KeyError):
    """A key absent from a shard (a `KeyError`, so mapping-style callers keep working)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed to `path`, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        with _naming(path):
            yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to `path`; on success it replaces `path` whole.

    An existing `path` that could not be removed (a folder in it is not writable) is an error
    before anything changes; otherwise it is swapped out by a rename, then deleted.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with _naming(path):
            yield tmp
        if path.is_dir() and not path.is_symlink():
            _check_removable(path)
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)  # fails on an existing file: nothing is replaced
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """An OS error that names no file (a full disk, a quota, an I/O error) while writing `path`
    becomes an `OutputError` naming it."""
    try:
        yield
    except OSError as err:
        if err.filename is not None or isinstance(err, UserError):
            raise
        raise OutputError(f"{path}: cannot write it: {err.strerror or err}") from err


def _check_removable(root: Path) -> None:
    for folder, _dirs, _files in os.walk(root):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "folder is not writable, cannot replace it", folder)


def json_text(data: Any) -> str:
    """The project's JSON output format (indented, keys in insertion order)."""
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(data))


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_torch(path: str | Path, obj: Any) -> None:
    """`torch.save` atomically, with bytes that depend only on `obj`.

    Saving to a file names the zip archive's records after the file, which would be the random
    temporary name; through a buffer the name is fixed, so identical weights give identical bytes
    (and DVC sees no change).
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def save_shard(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write a safetensors shard atomically (tensors made contiguous, on the CPU); a tensor with a
    NaN or an infinity is refused, naming the file and the key."""
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    for key, tensor in plain.items():
        check_finite(tensor, path, key)
    metadata = dict(metadata or {})
    if len(metadata) > 1:  # safetensors writes several keys in a random order: fold them into one
        metadata = {_FOLDED: json.dumps(metadata, sort_keys=True)}
    with atomic_path(path) as tmp:
        try:
            save_file(plain, str(tmp), metadata=metadata)
        except SafetensorError as err:  # its I/O errors (a full disk) are not OSErrors
            if "I/O error" not in str(err):
                raise
            raise OutputError(f"{path}: cannot write it: {err}") from None


def check_finite(tensor: torch.Tensor, path: str | Path, key: str) -> None:
    """Refuse a floating-point tensor holding NaN or infinity, naming the file and the key."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ShardError(
            f"{path}: tensor {key!r} has {bad} non-finite value(s) (NaN or infinity) of "
            f"{tensor.numel()}"
        )


class Shard:
    """A memory-mapped, read-only view of one safetensors shard."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ShardError(f"{self.path}: shard not found")
        try:
            self._file = safe_open(str(self.path), framework="pt", device="cpu")
        except Exception as err:  # safetensors raises its own error type for a corrupt header
            raise ShardError(
                f"{self.path}: not a readable safetensors file (truncated or corrupt: {err})"
            ) from None
        self._keys = frozenset(self._file.keys())

    def keys(self) -> list[str]:
        return list(self._file.keys())

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self:
            raise ShardKeyError(f"{self.path}: no tensor {key!r}")
        try:
            return self._file.get_tensor(key)
        except Exception as err:  # safetensors raises its own error type
            raise ShardError(f"{self.path}: cannot read tensor {key!r} ({err})") from None

    def metadata(self) -> dict[str, str]:
        metadata = dict(self._file.metadata() or {})
        return json.loads(metadata[_FOLDED]) if _FOLDED in metadata else metadata
