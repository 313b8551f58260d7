"""Resumable per-category shards: a stage interrupted after some categories keeps them.

Finished shards of a running stage accumulate in `.<out name>.partial/` beside the output; each
carries a fingerprint of what decided its content (params, the bytes of its input files, and the
code that computed it), so a rerun after an interruption redoes only the missing or stale ones.
When all are done they are published together: the output directory appears whole or not at all.
Several processes may fill one work directory (each shard is written atomically by one of them);
one publishes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from diysc.errors import UserError
from diysc.io import Shard, atomic_dir, save_shard, write_json


class PartialShardsError(UserError, RuntimeError):
    """A shard to publish is missing or stale; the message names it."""


class PartialShards:
    """Shards built in `.<out name>.partial/` beside `out`, then published together, atomically."""

    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir)
        self.work = self.out.parent / f".{self.out.name}.partial"

    def done(self, rel: str, fingerprint: str) -> bool:
        path = self.work / rel
        if not path.is_file():
            return False
        try:
            return Shard(path).metadata().get("fingerprint") == fingerprint
        except Exception:  # an unreadable leftover is simply recomputed
            return False

    def save(self, rel: str, tensors: dict[str, torch.Tensor], fingerprint: str) -> None:
        save_shard(self.work / rel, tensors, metadata={"fingerprint": fingerprint})

    def publish(
        self,
        rels: Iterable[str | Path],
        json_files: dict[str, object],
        fingerprints: dict[str, str] | None = None,
    ) -> None:
        """Hard-link the finished shards into a fresh `out` (replaced whole), then drop the work dir.

        `fingerprints` ({rel: fingerprint}): first check that each of those shards is done, as when
        other processes wrote them."""
        for rel, key in (fingerprints or {}).items():
            if not self.done(rel, key):
                raise PartialShardsError(f"{self.work / rel}: missing or stale, nothing published")
        with atomic_dir(self.out) as tmp:
            for rel in rels:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(self.work / rel, tmp / rel)
                except OSError:  # a filesystem without hard links
                    shutil.copy2(self.work / rel, tmp / rel)
            for name, data in json_files.items():
                write_json(tmp / name, data)
        shutil.rmtree(self.work, ignore_errors=True)


def fingerprint(params: dict, files: Sequence[Path], code: str = "") -> str:
    """sha256 of the params, of every file's name and bytes (a changed image invalidates a shard)
    and of the code digest (`diysc.provenance.code_digest`) of the module that computes it."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode() + code.encode())
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
