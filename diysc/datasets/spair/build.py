"""The `data` stage of SPair-71k: the official archive (`download`) or a local sample (`local`).

`source: official` downloads the archive unless a local copy is given (`--source PATH` or the
environment variable `DIYSC_SPAIR_ARCHIVE`: a `.tar.gz` archive or an extracted directory) and
checks the full dataset's counts; `source: local` builds the dataset from the small directory
`local.path` (no download, no full-dataset count check; its files are not tracked by DVC).
"""

from __future__ import annotations

import os
from pathlib import Path

from diysc.config.schema import ParamsError, SPairParams
from diysc.datasets.spair.download import download_path, prepare_spair
from diysc.datasets.spair.local import prepare_local
from diysc.prerequisite import Prerequisite
from diysc.probe import answer

ARCHIVE_ENV = "DIYSC_SPAIR_ARCHIVE"


def build(out: Path, params: SPairParams, source: Path | None) -> dict[str, int]:
    if params.source == "local":
        if source is not None:
            raise ParamsError("--source applies to datasets.spair.source=official only")
        return prepare_local(out, params.local)
    return prepare_spair(out, params.url, params.sha256, _local_copy(source))


def prerequisites(params: SPairParams, source: Path | None) -> list[Prerequisite]:
    if params.source == "local":
        return [_local_directory(params.local.path)]
    return [_archive(params.url, _local_copy(source))]


def _local_copy(source: Path | None) -> Path | None:
    return source or (Path(os.environ[ARCHIVE_ENV]) if os.environ.get(ARCHIVE_ENV) else None)


def _archive(url: str, local: Path | None) -> Prerequisite:
    how = (
        f"download SPair-71k ({url}) on a machine with internet access and set "
        f"{ARCHIVE_ENV}=/path/to/SPair-71k.tar.gz (the archive or the extracted folder)"
    )
    if local:
        if local.exists():
            return Prerequisite("SPair-71k", f"local copy {local}", how)
        return Prerequisite(f"SPair-71k ({ARCHIVE_ENV}={local} does not exist)", "", how)
    cached = download_path(url)
    if cached.is_file():
        return Prerequisite("SPair-71k", f"downloaded before, {cached}", how)
    reason = answer(url)
    if reason is None:
        return Prerequisite("SPair-71k", f"{url} answers", how)
    return Prerequisite(f"SPair-71k ({url}: {reason})", "", how)


def _local_directory(path: str) -> Prerequisite:
    key = "datasets.spair.local.path"
    how = f"point {key} at a directory in SPair-71k layout (ImageAnnotation/, JPEGImages/, ...)"
    if (Path(path) / "ImageAnnotation").is_dir():
        return Prerequisite(f"{key}={path}", f"local directory {path}", how)
    if Path(path).is_dir():
        return Prerequisite(f"{key}={path} (no ImageAnnotation/ in it)", "", how)
    return Prerequisite(f"{key}={path} (no such directory)", "", how)
