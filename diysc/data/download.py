"""Fetch and unpack a dataset archive: progress bar, sha256, safe and atomic extraction.

`download(url, dest, sha256)` streams `url` (http, https or file) into a temporary file beside
`dest` with a tqdm bar, hashes it on the way and renames it into place only when it is complete and
its digest matches; on a mismatch or an interruption nothing is left behind. `safe_extract` refuses
any archive member that could write outside the target (absolute names, `..`, links leaving the
root) or that is not a plain file, directory or link (devices, FIFOs), naming the member.

`prepare_spair(out, ...)` builds the `data` stage's output for the real SPair-71k: from the official
URL, or from a local archive or an already-extracted directory (offline users), checks the layout and
records the archive's digest in `out/archive.sha256` (`sha256sum -c` format).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from diysc import runtime
from diysc.data.spair import SPAIR_CATEGORIES, SPAIR_PAIR_COUNTS, DatasetError, SPairDataset
from diysc.io import atomic_dir, atomic_path, write_text

DIGEST_FILE = "archive.sha256"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download, checksum or archive problem; the message names the URL, file or member."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: str | Path, sha256: str = "", timeout: float = 60.0) -> str:
    """Stream `url` to `dest` atomically; check `sha256` when given. Returns the hex digest."""
    dest = Path(dest)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(dest) as tmp:
            total = response.headers.get("Content-Length")
            with (
                open(tmp, "wb") as f,
                tqdm(
                    total=int(total) if total else None,
                    unit="B",
                    unit_scale=True,
                    desc=f"downloading {dest.name}",
                ) as bar,
            ):
                for block in iter(lambda: response.read(CHUNK), b""):
                    f.write(block)
                    digest.update(block)
                    bar.update(len(block))
            if total and tmp.stat().st_size != int(total):
                raise DownloadError(
                    f"{url}: got {tmp.stat().st_size} bytes of {total}; "
                    "the partial download was removed"
                )
            check_digest(digest.hexdigest(), sha256, url)
    except (urllib.error.URLError, OSError) as err:  # nothing of the partial file is kept
        raise DownloadError(f"{url}: download failed ({err})") from None
    return digest.hexdigest()


def check_digest(actual: str, expected: str, source: str | Path) -> None:
    if expected and actual.lower() != expected.lower():
        raise DownloadError(
            f"{source}: sha256 mismatch: expected {expected.lower()}, got {actual} "
            "(the file was not kept; check 'data.sha256' or the source)"
        )


def unsafe_member(member: tarfile.TarInfo) -> str | None:
    """Why extracting `member` could escape the target or create a special file, else None."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith("\\") or re.match(r"[A-Za-z]:", member.name):
        return "absolute path"
    if ".." in path.parts:
        return "path contains '..'"
    if member.isdev() or not (
        member.isfile() or member.isdir() or member.issym() or member.islnk()
    ):
        return "device, FIFO or other special file"
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        base = path.parent if member.issym() else PurePosixPath()  # hard links are root-relative
        depth = 0
        for part in (base / target).parts if not target.is_absolute() else ("/",):
            if part == "/":
                return f"link to an absolute path ({member.linkname})"
            depth += -1 if part == ".." else 0 if part == "." else 1
            if depth < 0:
                return f"link leaving the archive root ({member.linkname})"
    return None


def safe_extract(archive: str | Path, dest: str | Path) -> None:
    """Extract a tar archive (any compression) into the existing directory `dest`.

    Every member is checked before anything is written; one unsafe member rejects the archive.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                reason = unsafe_member(member)
                if reason:
                    raise DownloadError(f"{archive}: refusing member {member.name!r}: {reason}")
            bar = tqdm(members, desc=f"extracting {archive.name}", unit="file")
            tar.extractall(dest, members=bar, filter="data")  # the stdlib's own guard, as well
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DownloadError(f"{archive}: cannot extract ({err})") from None


def find_spair_root(folder: Path) -> Path:
    """`folder` itself or its single sub-folder (the archive's `SPair-71k/`) holding the tree."""
    if (folder / "ImageAnnotation").is_dir():
        return folder
    children = [p for p in folder.iterdir() if p.is_dir()]
    if len(children) == 1 and (children[0] / "ImageAnnotation").is_dir():
        return children[0]
    raise DatasetError(
        f"{folder}: no SPair-71k tree (ImageAnnotation/) at the top or one level down"
    )


def prepare_spair(
    out: str | Path,
    url: str,
    sha256: str = "",
    local: str | Path | None = None,
    cache: str | Path | None = None,
    expected_pairs: dict[str, int] | None = SPAIR_PAIR_COUNTS,
    expected_categories: tuple[str, ...] | None = SPAIR_CATEGORIES,
) -> dict[str, int]:
    """Make `out` the SPair-71k root; returns the pair counts per split.

    Source: `local` (a `.tar[.gz]` archive or an extracted directory) if given, else the archive
    downloaded from `url` into `cache` (default: `<DIYSC_CACHE>/downloads`; reused when already
    there and matching `sha256`). `out`
    appears only once the tree is complete and its layout checks; an archive's digest is written to
    `out/archive.sha256` (and printed), so an empty `sha256` records it rather than checking it.
    """
    out = Path(out)
    archive, digest = None, None
    if local is not None:
        local = Path(local)
        if not local.exists():
            raise DownloadError(f"{local}: local SPair-71k source not found")
        if local.is_file():
            archive = local
            digest = sha256_file(local)
            check_digest(digest, sha256, local)
    else:
        cache = Path(cache) if cache else runtime.cache_dir() / "downloads"
        archive = cache / (Path(urllib.parse.urlparse(url).path).name or "SPair-71k.tar.gz")
        if archive.is_file():
            digest = sha256_file(archive)
            if sha256 and digest != sha256.lower():
                archive.unlink()  # a stale or corrupt copy: fetch again
        if not archive.is_file():
            digest = download(url, archive, sha256)
    with atomic_dir(out) as tmp:
        if archive is not None:
            safe_extract(archive, tmp)
            _hoist(find_spair_root(tmp), tmp)
        else:
            if sha256:
                print(f"warning: {local} is a directory; 'data.sha256' applies to archives only")
            shutil.copytree(find_spair_root(local), tmp, dirs_exist_ok=True)
        try:
            counts = SPairDataset(tmp).check_layout(expected_pairs, expected_categories)
        except DatasetError as err:  # name the output, not its temporary twin
            raise DatasetError(str(err).replace(str(tmp), str(out))) from None
        if digest is not None:
            write_text(tmp / DIGEST_FILE, f"{digest}  {archive.name}\n")
            print(f"sha256 {digest}  {archive.name}")
    return counts


def _hoist(root: Path, top: Path) -> None:
    """Move the contents of `root` (a folder inside `top`) up into `top`."""
    if root == top:
        return
    staged = root.rename(top / f".{root.name}.hoist")
    for child in staged.iterdir():
        os.replace(child, top / child.name)
    staged.rmdir()
