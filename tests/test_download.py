"""Archive download (a real HTTP server on 127.0.0.1 and file:// URLs), sha256, safe extraction."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from diysc.data.spair import DatasetError
from diysc.datasets.spair.download import (
    DIGEST_FILE,
    DownloadError,
    download,
    prepare_spair,
    safe_extract,
    sha256_file,
)
from tests.loopback import serve

TINY_COUNTS = {"trn": 0, "val": 0, "test": 2}


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    """Retries without waiting between them (the policy is otherwise the real one)."""
    monkeypatch.setattr("diysc.datasets.spair.download.BACKOFF", 0.0)


def _tiny_spair(root: Path) -> None:
    """Two images and two test pairs of one category, in the official layout."""
    for stem, box in (("2008_000001", [1, 2, 30, 40]), ("2008_000002", [5, 6, 50, 60])):
        kps = {str(i): None for i in range(30)}
        kps["3"] = [10, 20]
        ann = {
            "filename": f"{stem}.jpg",
            "image_width": 64,
            "image_height": 48,
            "image_depth": 3,
            "category": "cow",
            "bndbox": box,
            "kps": kps,
            "azimuth_id": 2,
        }
        (root / "ImageAnnotation" / "cow").mkdir(parents=True, exist_ok=True)
        (root / "ImageAnnotation" / "cow" / f"{stem}.json").write_text(json.dumps(ann))
        (root / "JPEGImages" / "cow").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), (200, 100, 50)).save(root / "JPEGImages" / "cow" / f"{stem}.jpg")
    (root / "PairAnnotation" / "test").mkdir(parents=True)
    for n, (src, trg) in enumerate(
        [("2008_000001", "2008_000002"), ("2008_000002", "2008_000001")]
    ):
        name = f"{n + 1:06d}-{src}-{trg}:cow"
        pair = {
            "pair_id": n + 1,
            "filename": name,
            "src_imname": f"{src}.jpg",
            "trg_imname": f"{trg}.jpg",
            "src_bndbox": [1, 2, 30, 40],
            "trg_bndbox": [5, 6, 50, 60],
            "category": "cow",
            "kps_ids": ["3"],
        }
        (root / "PairAnnotation" / "test" / f"{name}.json").write_text(json.dumps(pair))
    for split in ("trn", "val"):
        (root / "PairAnnotation" / split).mkdir()


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """A `.tar.gz` that unpacks to `SPair-71k/...`, like the official one."""
    src = tmp_path_factory.mktemp("tree") / "SPair-71k"
    _tiny_spair(src)
    out = tmp_path_factory.mktemp("served") / "SPair-71k.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(src, arcname="SPair-71k")
    return out


@pytest.fixture(scope="module")
def server(archive):
    """Serve the archive's folder over HTTP on 127.0.0.1 (an OS-chosen port) from a thread."""

    with serve(archive.parent) as url:
        yield url


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- download -----------------------------------------------------------------------------------


def test_http_download_checks_the_digest(server, archive, tmp_path):
    dest = tmp_path / "dl" / "SPair-71k.tar.gz"
    digest = download(f"{server}/SPair-71k.tar.gz", dest, _digest(archive).upper())
    assert digest == _digest(archive) == sha256_file(dest)
    assert dest.read_bytes() == archive.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["SPair-71k.tar.gz"]


def test_checksum_mismatch_removes_the_partial_download(server, tmp_path):
    dest = tmp_path / "SPair-71k.tar.gz"
    with pytest.raises(DownloadError, match=r"SPair-71k\.tar\.gz: sha256 mismatch: expected 0{64}"):
        download(f"{server}/SPair-71k.tar.gz", dest, "0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_file_url_and_failures_name_the_url(archive, server, tmp_path):
    dest = tmp_path / "copy.tar.gz"
    assert download(archive.as_uri(), dest) == _digest(archive)
    with pytest.raises(DownloadError, match=r"/missing\.tar\.gz: download failed"):
        download(f"{server}/missing.tar.gz", tmp_path / "missing.tar.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.tar.gz"]


# --- safe extraction ----------------------------------------------------------------------------


def _archive_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        good = tarfile.TarInfo("root/ok.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        if member.isfile():
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        else:
            tar.addfile(member)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_member("root/../../evil.txt"), r"'root/\.\./\.\./evil\.txt': path contains '\.\.'"),
        (_member("/etc/evil.txt"), r"'/etc/evil\.txt': absolute path"),
        (_member("root/link", tarfile.SYMTYPE, "../../outside"), r"link leaving the archive root"),
        (_member("root/abs", tarfile.SYMTYPE, "/etc/passwd"), r"link to an absolute path"),
        (_member("root/hard", tarfile.LNKTYPE, "../elsewhere"), r"link leaving the archive root"),
        (_member("root/tty", tarfile.CHRTYPE), r"'root/tty': device, FIFO or other special file"),
        (_member("root/fifo", tarfile.FIFOTYPE), r"device, FIFO"),
    ],
)
def test_unsafe_members_are_refused_before_anything_is_written(tmp_path, member, reason):
    bad = _archive_with(tmp_path, member)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(DownloadError, match=rf"bad\.tar: refusing member .*{reason}"):
        safe_extract(bad, dest)
    assert list(dest.iterdir()) == []


def test_links_even_inside_the_root_are_refused(tmp_path):
    """Only files and directories are extracted: no link, so no chain of links can escape."""
    ok = _archive_with(tmp_path, _member("root/sub/link", tarfile.SYMTYPE, "../ok.txt"))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(DownloadError, match=r"'root/sub/link': link to '\.\./ok\.txt' \(links are"):
        safe_extract(ok, dest)
    assert list(dest.iterdir()) == []


def test_a_truncated_archive_is_an_error_naming_it(archive, tmp_path):
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    (tmp_path / "out").mkdir()
    with pytest.raises(DownloadError, match=r"cut\.tar\.gz: cannot extract"):
        safe_extract(cut, tmp_path / "out")


# --- prepare_spair ------------------------------------------------------------------------------


def test_prepare_from_http_records_the_digest(server, archive, tmp_path, capsys):
    out = tmp_path / "data" / "dataset"
    counts = prepare_spair(
        out,
        f"{server}/SPair-71k.tar.gz",
        "",
        cache=tmp_path / "cache",
        expected_pairs=TINY_COUNTS,
        expected_categories=("cow",),
    )
    assert counts == TINY_COUNTS
    assert (out / "ImageAnnotation" / "cow" / "2008_000001.json").is_file()  # SPair-71k/ hoisted
    digest = _digest(archive)
    assert (out / DIGEST_FILE).read_text() == f"{digest}  SPair-71k.tar.gz\n"
    assert f"sha256 {digest}" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["dataset"]  # no temporaries left
    # the cached archive is reused: no server needed the second time
    again = prepare_spair(
        out,
        "http://127.0.0.1:9/SPair-71k.tar.gz",
        digest,
        cache=tmp_path / "cache",
        expected_pairs=TINY_COUNTS,
        expected_categories=("cow",),
    )
    assert again == TINY_COUNTS


def test_official_counts_reject_a_wrong_tree_and_keep_the_old_output(archive, tmp_path):
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "keep.txt").write_text("previous output")
    with pytest.raises(
        DatasetError, match=r"dataset: categories \['cow'\] differ from the expected"
    ):
        prepare_spair(out, "unused", local=archive)
    assert (out / "keep.txt").read_text() == "previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def test_local_archive_digest_is_checked_and_directories_are_copied(archive, tmp_path):
    with pytest.raises(DownloadError, match=r"SPair-71k\.tar\.gz: sha256 mismatch"):
        prepare_spair(tmp_path / "a", "unused", "f" * 64, local=archive, expected_pairs=TINY_COUNTS)
    assert not (tmp_path / "a").exists()
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    safe_extract(archive, extracted)
    counts = prepare_spair(
        tmp_path / "b",
        "unused",
        local=extracted / "SPair-71k",
        expected_pairs=TINY_COUNTS,
        expected_categories=("cow",),
    )
    assert counts == TINY_COUNTS and not (tmp_path / "b" / DIGEST_FILE).exists()
    with pytest.raises(DownloadError, match=r"nowhere: local SPair-71k source not found"):
        prepare_spair(tmp_path / "c", "unused", local=tmp_path / "nowhere")


# --- cut-short, flaky and mismatching downloads ------------------------------------------------------


class _Faulty(http.server.BaseHTTPRequestHandler):
    """Serves `payload` whole at /ok/..., and broken in the ways real servers break elsewhere."""

    payload = b""
    hits: dict[str, int] = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        route = self.path.split("/")[1]
        self.hits[route] = self.hits.get(route, 0) + 1
        first = self.hits[route] == 1
        half = self.payload[: len(self.payload) // 2]
        if route == "ok" or (route in ("flaky", "busy") and not first):
            self._send(self.payload, {"Content-Length": str(len(self.payload))})
        elif route == "busy":
            self.send_error(503)
        elif route == "nolength":  # no Content-Length, connection closed half-way
            self._send(half, {})
        elif route in ("chunked", "flaky"):  # a chunked body broken off without its last chunk
            self._send(b"%x\r\n%s\r\n" % (len(half), half), {"Transfer-Encoding": "chunked"})
        else:
            self.send_error(404)
        self.close_connection = True

    def _send(self, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def faulty(archive):
    """A server on 127.0.0.1 with a fresh request count per test."""
    handler = type("Handler", (_Faulty,), {"payload": archive.read_bytes(), "hits": {}})
    with serve(handler=handler) as url:
        yield url, handler.hits


def _prepare(url: str, cache: Path, out: Path, sha256: str = "") -> dict[str, int]:
    return prepare_spair(
        out, url, sha256, cache=cache, expected_pairs=TINY_COUNTS, expected_categories=("cow",)
    )


def test_a_cut_short_download_without_length_or_digest_is_never_cached(faulty, tmp_path):
    url, _ = faulty
    cache = tmp_path / "cache"
    with pytest.raises(
        DownloadError, match=rf"{url}/nolength/SPair-71k\.tar\.gz: incomplete or corrupt archive"
    ):
        _prepare(f"{url}/nolength/SPair-71k.tar.gz", cache, tmp_path / "out")
    assert not cache.exists() or list(cache.iterdir()) == []
    assert not (tmp_path / "out").exists()


def test_a_broken_chunked_body_is_retried_then_named(faulty, tmp_path):
    url, hits = faulty
    with pytest.raises(DownloadError, match=rf"{url}/chunked/x\.tar\.gz: download failed after 2 "):
        download(f"{url}/chunked/x.tar.gz", tmp_path / "x.tar.gz", retries=2)
    assert hits["chunked"] == 3 and list(tmp_path.iterdir()) == []


def test_a_flaky_server_is_retried_to_a_complete_download(faulty, archive, tmp_path):
    url, hits = faulty
    for route in ("flaky", "busy"):  # a broken body, then a 503, each followed by success
        dest = tmp_path / route / "SPair-71k.tar.gz"
        assert download(f"{url}/{route}/SPair-71k.tar.gz", dest) == _digest(archive)
        assert dest.read_bytes() == archive.read_bytes() and hits[route] == 2


def test_a_complete_download_is_recorded_and_verified_before_reuse(faulty, archive, tmp_path):
    url, hits = faulty
    cache = tmp_path / "cache"
    _prepare(f"{url}/ok/SPair-71k.tar.gz", cache, tmp_path / "out")
    cached, record = cache / "SPair-71k.tar.gz", cache / "SPair-71k.tar.gz.sha256"
    assert record.read_text() == f"{_digest(archive)}  SPair-71k.tar.gz\n"
    _prepare(f"{url}/ok/SPair-71k.tar.gz", cache, tmp_path / "out")
    assert hits["ok"] == 1  # reused
    damaged = bytearray(cached.read_bytes())
    damaged[100] ^= 0xFF
    cached.write_bytes(bytes(damaged))
    _prepare(f"{url}/ok/SPair-71k.tar.gz", cache, tmp_path / "out")
    assert hits["ok"] == 2 and cached.read_bytes() == archive.read_bytes()  # fetched again
    [aside] = cache.glob("*.rejected")
    assert aside.read_bytes() == bytes(damaged)  # moved aside, not deleted


def test_an_unrecorded_cached_archive_is_checked_before_use(faulty, archive, tmp_path):
    url, hits = faulty
    cache = tmp_path / "cache"
    cache.mkdir()
    cut = archive.read_bytes()[: archive.stat().st_size // 2]
    (cache / "SPair-71k.tar.gz").write_bytes(cut)  # what an older version cached after a cut
    _prepare(f"{url}/ok/SPair-71k.tar.gz", cache, tmp_path / "out")
    assert hits["ok"] == 1
    assert (cache / "SPair-71k.tar.gz").read_bytes() == archive.read_bytes()
    [aside] = cache.glob("*.rejected")
    assert aside.read_bytes() == cut


def test_a_sha256_typo_never_deletes_the_cached_archive(server, archive, tmp_path):
    cache = tmp_path / "cache"
    _prepare(f"{server}/SPair-71k.tar.gz", cache, tmp_path / "out")
    offline = f"http://127.0.0.1:{_closed_port()}/SPair-71k.tar.gz"
    typo = "0" * 64
    with pytest.raises(DownloadError) as raised:
        _prepare(offline, cache, tmp_path / "out", typo)
    [aside] = cache.glob("*.rejected")
    assert aside.read_bytes() == archive.read_bytes()
    message = str(raised.value)
    assert f"{offline}: download failed" in message
    assert (
        f"kept as {aside}" in message and f"move it back to {cache / 'SPair-71k.tar.gz'}" in message
    )
    assert _digest(archive) in message
    assert (tmp_path / "out" / DIGEST_FILE).is_file()  # the previous output is untouched


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
