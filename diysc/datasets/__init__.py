"""The pipeline's datasets: one package per dataset, named as its entry under `datasets` in params.

A dataset `<name>` is its params class (`diysc.config.DATASETS`), its entry in a preset, and the
package `diysc.datasets.<name>`:

- the package itself (`__init__.py`) is its reader: `open_dataset(root)` gives the reader the stages
  after `data` read it with;
- its module `build` writes the dataset tree: `build(out, params, source)` (`source`: a local copy
  of what the dataset would download, or None) returns the pair counts per split, and
  `prerequisites(params, source)` names what building it needs (`diysc.prerequisites`).

They are loaded by name, so no stage script's static import closure holds a dataset's code: each
stage that runs per dataset lists that dataset's code among its dvc.yaml deps instead (the package
folder for `data`, its `__init__.py` for the stages that read it), and an edit of one dataset's code
reruns only that dataset's stages.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any


def reader(name: str) -> ModuleType:
    """The reader module of dataset `name` (`diysc.datasets.<name>`)."""
    return importlib.import_module(f"{__name__}.{name}")


def builder(name: str) -> ModuleType:
    """The module that builds dataset `name` (`diysc.datasets.<name>.build`)."""
    return importlib.import_module(f"{__name__}.{name}.build")


def open_dataset(name: str, root: str | Path) -> Any:
    """Dataset `name`'s tree at `root`, through its reader."""
    return reader(name).open_dataset(root)
