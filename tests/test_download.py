"""asr.corpora.download against a real HTTP server on 127.0.0.1: MD5 checks, resumption, safe tar."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from asr.corpora.download import DownloadError, UnsafeArchiveError, download, md5sum, safe_extract

PAYLOAD = bytes(range(256)) * 4000  # 1 MB minus a bit: several read blocks
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


class CorpusServer(ThreadingHTTPServer):
    """Serves `files`; honours `Range` when `ranges` is on; can cut the first reply short."""

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files = files
        self.ranges = True
        self.cut_first_reply_at: int | None = None
        self.requests: list[str | None] = []  # the Range header of each request

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: CorpusServer

    def do_GET(self) -> None:
        data = self.server.files.get(self.path)
        header = self.headers.get("Range")
        self.server.requests.append(header)
        if data is None:
            self.send_error(404)
            return
        start = int(header.split("=")[1].split("-")[0]) if header and self.server.ranges else 0
        if start >= len(data) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut, self.server.cut_first_reply_at = self.server.cut_first_reply_at, None
        self.wfile.write(body if cut is None else body[:cut])  # then the connection closes

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[CorpusServer]:
    srv = CorpusServer({"/corpus.bin": PAYLOAD})
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_download_writes_the_file_and_records_its_md5(server: CorpusServer, tmp_path: Path):
    dest = download(f"{server.url}/corpus.bin", tmp_path / "corpus.bin", md5=PAYLOAD_MD5)
    assert dest.read_bytes() == PAYLOAD
    assert (tmp_path / "corpus.bin.md5").read_text() == f"{PAYLOAD_MD5}  corpus.bin\n"
    assert not (tmp_path / "corpus.bin.part").exists()
    assert server.requests == [None]


def test_checksum_mismatch_names_the_file_and_both_sums(server: CorpusServer, tmp_path: Path):
    wrong = "0" * 32
    with pytest.raises(DownloadError) as err:
        download(f"{server.url}/corpus.bin", tmp_path / "corpus.bin", md5=wrong)
    message = str(err.value)
    assert "corpus.bin" in message and wrong in message and PAYLOAD_MD5 in message
    assert not (tmp_path / "corpus.bin").exists()  # never left as if complete
    assert not (tmp_path / "corpus.bin.part").exists()  # nor resumed into the same bytes
    assert (tmp_path / "corpus.bin.bad").read_bytes() == PAYLOAD


def test_partial_file_is_resumed_with_a_range_request(server: CorpusServer, tmp_path: Path):
    (tmp_path / "corpus.bin.part").write_bytes(PAYLOAD[:300_000])
    dest = download(f"{server.url}/corpus.bin", tmp_path / "corpus.bin", md5=PAYLOAD_MD5)
    assert server.requests == ["bytes=300000-"]
    assert md5sum(dest) == PAYLOAD_MD5


def test_connection_cut_midway_is_resumed(server: CorpusServer, tmp_path: Path):
    server.cut_first_reply_at = 123_457
    dest = download(f"{server.url}/corpus.bin", tmp_path / "corpus.bin", md5=PAYLOAD_MD5)
    assert server.requests == [None, "bytes=123457-"]
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_file_is_finished_without_new_bytes(server: CorpusServer, tmp_path: Path):
    (tmp_path / "corpus.bin.part").write_bytes(PAYLOAD)  # interrupted between download and MD5
    dest = download(f"{server.url}/corpus.bin", tmp_path / "corpus.bin", md5=PAYLOAD_MD5)
    assert server.requests == [f"bytes={len(PAYLOAD)}-"]  # answered 416: nothing left
    assert dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_zero(server: CorpusServer, tmp_path: Path):
    server.ranges = False
    (tmp_path / "corpus.bin.part").write_bytes(b"stale bytes from somewhere else")
    dest = download(f"{server.url}/corpus.bin", tmp_path / "corpus.bin", md5=PAYLOAD_MD5)
    assert dest.read_bytes() == PAYLOAD


def test_verified_file_is_not_fetched_again(server: CorpusServer, tmp_path: Path):
    url, dest = f"{server.url}/corpus.bin", tmp_path / "corpus.bin"
    download(url, dest, md5=PAYLOAD_MD5)
    download(url, dest, md5=PAYLOAD_MD5)
    assert len(server.requests) == 1


def test_missing_file_on_the_server_names_the_url(server: CorpusServer, tmp_path: Path):
    with pytest.raises(DownloadError, match="nothing.bin: HTTP 404"):
        download(f"{server.url}/nothing.bin", tmp_path / "nothing.bin", retries=0)


# --------------------------------------------------------------------------------------------
# safe_extract


def make_tar(path: Path, members: list[tuple[str, str, str | bytes]]) -> Path:
    """members: (kind, name, content or link target); kind "file", "dir", "sym", "lnk", "chr"."""
    with tarfile.open(path, "w:gz") as tar:
        for kind, name, value in members:
            info = tarfile.TarInfo(name)
            data = None
            if kind == "file":
                data = value.encode() if isinstance(value, str) else value
                info.size = len(data)
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind in ("sym", "lnk"):
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = str(value)
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_safe_extract_writes_members_and_a_marker_once(tmp_path: Path):
    archive = make_tar(
        tmp_path / "good.tar.gz",
        [
            ("dir", "corpus", ""),
            ("file", "corpus/a.txt", "alpha"),
            ("file", "corpus/sub/b.txt", "beta"),
            ("sym", "corpus/alias.txt", "sub/b.txt"),  # a link inside the target is fine
        ],
    )
    target = tmp_path / "out"
    safe_extract(archive, target)
    assert (target / "corpus/a.txt").read_text() == "alpha"
    assert (target / "corpus/alias.txt").read_text() == "beta"
    assert (target / ".good.tar.gz.extracted").is_file()
    (target / "corpus/a.txt").unlink()
    safe_extract(archive, target)  # the marker says done: nothing is extracted again
    assert not (target / "corpus/a.txt").exists()


UNSAFE = {
    "dotdot": [("file", "corpus/../../evil.txt", "x")],
    "absolute": [("file", "ABS/evil.txt", "x")],
    "symlink_out": [("sym", "corpus/link", "../../outside"), ("file", "corpus/link/evil.txt", "x")],
    "symlink_absolute": [("sym", "corpus/link", "/etc")],
    "symlink_chain": [("sym", "corpus/up", ".."), ("sym", "corpus/up/esc", "..")],
    "hardlink_out": [("lnk", "corpus/hard", "../outside/secret.txt")],
    "device": [("chr", "corpus/null", "")],
}
REFUSED = {
    "dotdot": "corpus/../../evil.txt",
    "absolute": "evil.txt",
    "symlink_out": "corpus/link",
    "symlink_absolute": "corpus/link",
    "symlink_chain": "corpus/up/esc",
    "hardlink_out": "corpus/hard",
    "device": "corpus/null",
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_member_is_refused_by_name_and_nothing_lands_outside(tmp_path: Path, case: str):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    members = [
        (kind, name.replace("ABS", str(outside)), value) for kind, name, value in UNSAFE[case]
    ]
    archive = make_tar(tmp_path / "bad.tar.gz", [("file", "corpus/ok.txt", "ok"), *members])
    target = tmp_path / "work" / "out"
    before = sorted(p for p in tmp_path.rglob("*") if "work" not in p.parts)
    with pytest.raises(UnsafeArchiveError) as err:
        safe_extract(archive, target)
    assert REFUSED[case] in str(err.value) and "bad.tar.gz" in str(err.value)
    after = sorted(p for p in tmp_path.rglob("*") if "work" not in p.parts)
    assert after == before  # nothing created outside the target folder
    assert sorted(os.listdir(tmp_path / "work")) == ["out"]
    assert (outside / "secret.txt").read_text() == "secret"
    assert not (target / ".bad.tar.gz.extracted").exists()
