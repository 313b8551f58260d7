"""A directory of per-category tensor shards (`<root>/<cat>.safetensors`, keyed by image stem)."""

from __future__ import annotations

from pathlib import Path

from diysc.errors import UserError
from diysc.io import Shard


class CategoryShards:
    """Reader of such a directory; each category's shard is opened on first use. Missing files
    raise `error` (a `UserError`) naming the file and what it should hold (`what`)."""

    def __init__(self, root: str | Path, what: str, error: type[UserError]):
        self.root, self.what, self.error = Path(root), what, error
        if not self.root.is_dir():
            raise error(f"{self.root}: {what} directory not found")
        self._shards: dict[str, Shard] = {}

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(sorted(p.stem for p in self.root.glob("*.safetensors")))

    def shard(self, category: str) -> Shard:
        if category not in self._shards:
            path = self.root / f"{category}.safetensors"
            if not path.is_file():
                raise self.error(f"{path}: no {self.what} for category {category!r}")
            self._shards[category] = Shard(path)
        return self._shards[category]
