"""The `data` stage of the synthetic dataset: render it (`generator.generate`), check its layout."""

from __future__ import annotations

from pathlib import Path

from diysc.config.schema import ParamsError, SyntheticParams
from diysc.data.spair import SPairDataset
from diysc.datasets.synthetic.generator import generate


def build(out: Path, params: SyntheticParams, source: Path | None) -> dict[str, int]:
    if source is not None:
        raise ParamsError("--source: the synthetic dataset is rendered, it has no source to give")
    generate(out, params)
    return SPairDataset(out).check_layout()


def prerequisites(params: SyntheticParams, source: Path | None) -> list:
    return []  # rendered here from its params: nothing to provide
