"""Fetch and unpack a dataset archive: progress bar, sha256, safe and atomic extraction.

`download(url, dest, sha256)` streams `url` (http, https or file) into a temporary file beside
`dest` with a tqdm bar, hashes it on the way and renames it into place only when it is complete
(Content-Length, digest, or an archive readable to its end) and its digest matches; on a mismatch
or an interruption nothing is left behind; a broken connection is retried with backoff.
`cached_download` records a complete download's digest beside it and verifies a cached copy before
reuse, moving a failing copy aside rather than deleting it. `safe_extract` writes only regular files
and directories and refuses any other member (links, devices, FIFOs) and any name that could write
outside the target (absolute, `..`), naming the member.

`prepare_spair(out, ...)` builds the `data` stage's output for the real SPair-71k: from the official
URL, or from a local archive or an already-extracted directory (offline users), checks the layout
and records the archive's digest in `out/archive.sha256` (`sha256sum -c` format).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import requests
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import MaxRetryError
from urllib3.util import Retry

from diysc import runtime
from diysc.data.spair import SPAIR_CATEGORIES, SPAIR_PAIR_COUNTS, DatasetError, SPairDataset
from diysc.errors import UserError
from diysc.io import atomic_dir, atomic_path, write_text

DIGEST_FILE = "archive.sha256"
CHUNK = 1 << 20
RETRIES = 5  # attempts after the first, for connection errors, 5xx/429 and broken bodies
BACKOFF = 2.0  # seconds; doubles after each further failure (urllib3 Retry backoff_factor)
RETRY_STATUS = (429, 500, 502, 503, 504)


class DownloadError(UserError, RuntimeError):
    """A download, checksum or archive problem; the message names the URL, file or member."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(
    url: str,
    dest: str | Path,
    sha256: str = "",
    timeout: float = 60.0,
    retries: int | None = None,
    backoff: float | None = None,
    verify: Callable[[Path], None] | None = None,
) -> str:
    """Stream `url` to `dest` atomically; check `sha256` when given. Returns the hex digest.

    The file appears at `dest` only when complete: its size equals the Content-Length (if the
    server sent one) and its digest equals `sha256` (if given); when neither proves it complete,
    `verify(tmp)` must accept it. A connection error, a retryable HTTP status or a body cut short
    is retried `retries` times (default `RETRIES`) with exponential backoff (`BACKOFF`; urllib3's
    `Retry` policy); the final error names the URL. A partial file is never kept.
    """
    dest = Path(dest)
    retries = RETRIES if retries is None else retries
    backoff = BACKOFF if backoff is None else backoff
    if urllib.parse.urlparse(url).scheme == "file":
        source = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        try:
            with open(source, "rb") as response, atomic_path(dest) as tmp:
                digest = _stream(response, tmp, None, url, dest.name)
                _check_complete(tmp, None, digest, sha256, url, verify)
        except OSError as err:
            raise DownloadError(f"{url}: download failed ({err})") from None
        return digest
    policy = Retry(
        total=retries,
        backoff_factor=backoff,
        status_forcelist=RETRY_STATUS,
        allowed_methods=frozenset({"GET"}),
    )
    with requests.Session() as session:
        session.mount("http://", HTTPAdapter(max_retries=policy))
        session.mount("https://", HTTPAdapter(max_retries=policy))
        while True:
            try:
                with session.get(url, stream=True, timeout=timeout) as response:
                    response.raise_for_status()
                    total = response.headers.get("Content-Length")
                    expected = int(total) if total and total.isdigit() else None
                    with atomic_path(dest) as tmp:
                        digest = _stream(response.raw, tmp, expected, url, dest.name)
                        _check_complete(tmp, expected, digest, sha256, url, verify)
                return digest
            except IncompleteDownload as err:
                # The session's adapter retried connection errors and statuses already; a body
                # that broke off counts against a copy of the same policy, then waits.
                try:
                    policy = policy.increment(method="GET", url=url, error=err)
                except MaxRetryError:
                    raise DownloadError(
                        f"{url}: download failed after {retries} retries ({_reason(err)})"
                    ) from None
                print(f"warning: {url}: {_reason(err)}; retrying", file=sys.stderr)
                policy.sleep()
            except requests.RequestException as err:  # 404, retries used up, a bad URL
                raise DownloadError(f"{url}: download failed ({_reason(err)})") from None
            except OSError as err:
                raise DownloadError(f"{url}: download failed ({err})") from None


class IncompleteDownload(Exception):
    """The body ended before its Content-Length (retried, then reported naming the URL)."""


def _stream(response: BinaryIO, tmp: Path, total: int | None, url: str, name: str) -> str:
    """Copy `response` into `tmp` with a progress bar; returns the sha256. A body that breaks off
    (urllib3 enforces a Content-Length) is an `IncompleteDownload`."""
    digest = hashlib.sha256()
    size = 0
    with (
        open(tmp, "wb") as f,
        tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {name}") as bar,
    ):
        try:
            for block in iter(lambda: response.read(CHUNK), b""):
                f.write(block)
                digest.update(block)
                size += len(block)
                bar.update(len(block))
        except (Urllib3HTTPError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
            raise IncompleteDownload(f"body cut short after {size} bytes ({err})") from None
    if total is not None and size != total:
        raise IncompleteDownload(f"got {size} bytes of {total}")
    return digest.hexdigest()


def _check_complete(
    tmp: Path,
    total: int | None,
    digest: str,
    sha256: str,
    url: str,
    verify: Callable[[Path], None] | None,
) -> None:
    check_digest(digest, sha256, url)
    if total is None and not sha256 and verify is not None:
        try:
            verify(tmp)  # nothing else proves the file complete
        except DownloadError as err:
            raise DownloadError(
                f"{url}: {str(err).removeprefix(f'{tmp}: ')}; the download was not kept (the "
                "server sent no Content-Length and datasets.spair.sha256 is empty)"
            ) from None


def _reason(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


def check_archive_complete(path: Path) -> None:
    """Read every member of a tar archive to its end: a truncated download fails here."""
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile():
                    data = tar.extractfile(member)
                    while data is not None and data.read(CHUNK):
                        pass
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise DownloadError(f"{path}: incomplete or corrupt archive ({_reason(err)})") from None


def check_digest(actual: str, expected: str, source: str | Path) -> None:
    if expected and actual.lower() != expected.lower():
        raise DownloadError(
            f"{source}: sha256 mismatch: expected {expected.lower()}, got {actual} "
            "(the new file was not kept; check 'datasets.spair.sha256' or the source)"
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
        return _link_reason(path, member)
    return None


def _link_reason(path: PurePosixPath, member: tarfile.TarInfo) -> str:
    """Why a link member is refused: where it points if outside the root, else that it is one."""
    target = PurePosixPath(member.linkname)
    if target.is_absolute():
        return f"link to an absolute path ({member.linkname})"
    base = path.parent if member.issym() else PurePosixPath()  # hard links are root-relative
    depth = 0
    for part in (base / target).parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return f"link leaving the archive root ({member.linkname})"
    return f"link to {member.linkname!r} (links are not extracted; SPair-71k has none)"


# Python releases whose tarfile "data" filter has the CVE-2025-4517 fix (chained symlinks that
# overflow PATH_MAX fooled its realpath check): 3.9.23, 3.10.18, 3.11.13, 3.12.11, 3.13.4, 3.14.
FIXED_DATA_FILTER = {(3, 9): 23, (3, 10): 18, (3, 11): 13, (3, 12): 11, (3, 13): 4}


def has_fixed_data_filter(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> bool:
    """Whether this Python's `tarfile` extraction filter `"data"` is the fixed implementation."""
    major_minor, micro = tuple(version[:2]), version[2]
    if major_minor in FIXED_DATA_FILTER:
        return micro >= FIXED_DATA_FILTER[major_minor]
    return major_minor >= (3, 14)


def safe_extract(archive: str | Path, dest: str | Path) -> None:
    """Extract a tar archive (any compression) into the existing, empty directory `dest`.

    Every member is checked before anything is written; one unsafe member rejects the archive.
    Only regular files and directories are extracted (SPair-71k has no links): a link member is
    refused, so no chain of links can lead a later member outside `dest`. The writing itself is
    the standard library's with the `"data"` filter where this Python has the fixed filter, else
    `write_members`, which creates each file and directory itself under `dest`.
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
            if has_fixed_data_filter():
                tar.extractall(dest, members=bar, filter="data")
            else:
                write_members(tar, bar, dest)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DownloadError(f"{archive}: cannot extract ({err})") from None


def write_members(tar: tarfile.TarFile, members: Iterable[tarfile.TarInfo], dest: Path) -> None:
    """Create the archive's directories and regular files under `dest`, nothing else.

    Safe by construction: members have been checked to be plain files or directories with
    relative names free of `..`, and since no link is ever created under `dest`, every path
    written is the lexical join of `dest` and the member's name. A file is opened with
    O_NOFOLLOW and O_EXCL (an existing entry is replaced, never written through).
    """
    for member in members:
        if not (member.isfile() or member.isdir()):  # checked by the caller; never written
            raise DownloadError(f"refusing member {member.name!r}: not a file or directory")
        parts = [p for p in PurePosixPath(member.name).parts if p not in ("", ".")]
        if not parts:
            continue
        target = dest.joinpath(*parts)
        if member.isdir():
            target.mkdir(mode=0o755, parents=True, exist_ok=True)
            continue
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if target.is_file():
            target.unlink()  # a repeated member: the later copy wins, as with tar
        source = tar.extractfile(member)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with source, os.fdopen(os.open(target, flags, 0o644), "wb") as out:
            shutil.copyfileobj(source, out, CHUNK)


def record_path(archive: Path) -> Path:
    """Where the digest of a complete download is recorded: `<archive>.sha256`, beside it."""
    return archive.with_name(f"{archive.name}.sha256")


def cached_download(url: str, archive: Path, sha256: str = "") -> str:
    """`archive` from the cache if it is verified, else downloaded from `url`; returns its digest.

    A completed download's digest is recorded in `<archive>.sha256`. A cached copy is reused when
    its digest equals `sha256` (if given) and the recorded one; a copy without a record (an older
    cache) is reused when every member reads to the end, and is then recorded. A copy that fails
    is never deleted: it is moved aside to `<archive>.<digest>.rejected` with the reason printed, so
    a typo in `datasets.spair.sha256` loses nothing (offline, the message says how to restore it).
    """
    record = record_path(archive)
    aside: Path | None = None
    if archive.is_file():
        digest = sha256_file(archive)
        recorded = _read_record(record)
        reason = None
        if sha256 and digest != sha256.lower():
            reason = f"its sha256 {digest} is not datasets.spair.sha256 {sha256.lower()}"
        elif recorded and digest != recorded:
            reason = f"its sha256 {digest} is not the {recorded} recorded when it was downloaded"
        elif not recorded:
            try:
                check_archive_complete(archive)
            except DownloadError as err:
                reason = str(err).removeprefix(f"{archive}: ")
        if reason is None:
            if not recorded:
                write_text(record, f"{digest}  {archive.name}\n")
            return digest
        aside = archive.with_name(f"{archive.name}.{digest[:16]}.rejected")
        os.replace(archive, aside)
        record.unlink(missing_ok=True)
        print(
            f"warning: cached {archive} not used: {reason}; moved to {aside}, downloading again",
            file=sys.stderr,
        )
    try:
        digest = download(url, archive, sha256, verify=check_archive_complete)
    except DownloadError as err:
        if aside is None:
            raise
        raise DownloadError(
            f"{err}. The previously cached copy is kept as {aside}: if it is the right file "
            f"(e.g. datasets.spair.sha256 has a typo), move it back to {archive} and set "
            f"datasets.spair.sha256 to its digest {sha256_file(aside)}"
        ) from None
    write_text(record, f"{digest}  {archive.name}\n")
    return digest


def _read_record(record: Path) -> str | None:
    """The digest in a `sha256sum`-format record, or None when absent or unreadable."""
    try:
        text = record.read_text().split()
    except OSError:
        return None
    digest = text[0].lower() if text else ""
    return digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) else None


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


def download_path(url: str, cache: str | Path | None = None) -> Path:
    """Where the archive at `url` is downloaded to (and found again): `<DIYSC_CACHE>/downloads`."""
    cache = Path(cache) if cache else runtime.cache_dir() / "downloads"
    return cache / (Path(urllib.parse.urlparse(url).path).name or "SPair-71k.tar.gz")


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
    downloaded from `url` into `cache` (default: `<DIYSC_CACHE>/downloads`, see `cached_download`).
    `out` appears only once the tree is complete and its layout checks; an archive's digest is
    written to `out/archive.sha256` (and printed), so an empty `sha256` records it rather than
    checking it.
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
        archive = download_path(url, cache)
        digest = cached_download(url, archive, sha256)
    with atomic_dir(out) as tmp:
        if archive is not None:
            safe_extract(archive, tmp)
            _hoist(find_spair_root(tmp), tmp)
        else:
            if sha256:
                print(
                    f"warning: {local} is a directory; "
                    "'datasets.spair.sha256' applies to archives only"
                )
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
