"""Corpus downloads: resumable HTTP download with MD5 check, and tar extraction that stays put.

    download(url, dest, md5)     dest.part grows (HTTP Range resumes it after an interruption),
                                 is checked against the published MD5, then renamed to dest
    safe_extract(archive, dir)   every member checked before it is written: no absolute path,
                                 no `..`, no link leading outside `dir`, no device file

Both are idempotent. A verified download leaves `dest.md5` (`<md5>  <name>`, as md5sum writes
it) so a second run does not hash a 20 GB file again; a finished extraction leaves
`dir/.<archive name>.extracted`, so an interrupted one (no marker) is simply redone.

Only the standard library is used. Python's own `tarfile` filter "data" (3.12, back-ported to
some 3.10/3.11 releases) is applied too where it exists, as a second line of defence; the
checks here come first so that the error names the member and the reason on every version.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
PROGRESS_EVERY_S = 5.0
# tarfile's own refusals (Python with extraction filters); nothing to catch on older versions.
_FILTER_ERRORS = getattr(tarfile, "FilterError", ())


class DownloadError(ValueError):
    """A download that failed or does not match its published checksum; names URL and file."""


class UnsafeArchiveError(ValueError):
    """A tar member that would be written outside the target folder; names archive and member."""


def md5sum(path: str | Path) -> str:
    """Hex MD5 of a file, read 1 MB at a time."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def download(
    url: str,
    dest: str | Path,
    md5: str | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Fetch `url` to `dest` unless a (verified) `dest` is already there; returns `dest`.

    Bytes go to `dest.part`; when the connection breaks, or on a later run, the download resumes
    from the end of `dest.part` with an HTTP Range request (a server that ignores Range sends
    the whole file again, which is detected and handled). A complete file whose MD5 differs
    from `md5` is renamed to `dest.bad` (resuming it could only reproduce the same bytes) and
    DownloadError names both sums.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        if md5 is not None:
            _verify(dest, md5, url)
        return dest
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, timeout, progress)
            break
        except (urllib.error.URLError, HTTPException, OSError) as err:
            if isinstance(err, urllib.error.HTTPError) and err.code < 500:
                raise DownloadError(
                    f"cannot download {url}: HTTP {err.code} {err.reason}"
                ) from None
            if attempt == retries:
                raise DownloadError(
                    f"cannot download {url} to {dest} after {retries + 1} attempts: {err}; "
                    f"run again to resume from the {part.stat().st_size if part.exists() else 0} "
                    f"bytes in {part}"
                ) from None
            log.warning("download of %s interrupted (%s); resuming", url, err)
            time.sleep(min(2.0**attempt, 30.0))
    if md5 is not None:
        _verify(part, md5, url, final=dest)
    os.replace(part, dest)
    return dest


def _fetch(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of `url` to `part`; raises if the connection ends early."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left after `have` bytes: the .part is complete
            return
        raise
    with response:
        if have and response.status == 206:
            start = _content_range_start(response.headers.get("Content-Range"), url)
            if start != have:
                raise DownloadError(f"{url}: asked to resume at byte {have}, got byte {start}")
            mode = "ab"
        else:  # 200: a fresh download, or a server that ignores Range sending everything
            have, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, mode) as out:
            received = _copy(response, out, have, total, part.name if progress else None)
    if total is not None and received < total:
        raise ConnectionError(f"connection closed after {received} of {total} bytes")


def _content_range_start(header: str | None, url: str) -> int:
    # "bytes 100-999/1000"
    try:
        return int(header.split()[1].split("-")[0])  # type: ignore[union-attr]
    except (AttributeError, IndexError, ValueError):
        raise DownloadError(f"{url}: bad Content-Range header {header!r}") from None


def _copy(source: BinaryIO, out: BinaryIO, have: int, total: int | None, label: str | None) -> int:
    """Copy until EOF, logging progress (at most every 5 s) when `label` is given."""
    started = last = time.monotonic()
    received = have
    while block := source.read(CHUNK_BYTES):
        out.write(block)
        received += len(block)
        now = time.monotonic()
        if label and now - last >= PROGRESS_EVERY_S:
            last = now
            rate = (received - have) / max(now - started, 1e-6)
            share = f" of {total / 1e6:.1f} MB ({100 * received / total:.1f}%)" if total else ""
            log.info("%s: %.1f MB%s, %.1f MB/s", label, received / 1e6, share, rate / 1e6)
    return received


def _verify(path: Path, md5: str, url: str, final: Path | None = None) -> None:
    """Check `path` against `md5` (reusing `<final>.md5` when it records that sum)."""
    final = final or path
    record = final.with_name(final.name + ".md5")
    expected = md5.lower()
    if final == path and record.is_file() and record.read_text().split()[:1] == [expected]:
        return
    actual = md5sum(path)
    if actual != expected:
        bad = final.with_name(final.name + ".bad")
        os.replace(path, bad)
        raise DownloadError(
            f"MD5 mismatch for {final.name} from {url}: expected {expected}, got {actual}; "
            f"the file was moved to {bad} (delete it and run again to download afresh)"
        )
    record.write_text(f"{actual}  {final.name}\n")


# --------------------------------------------------------------------------------------------
# Extraction


def safe_extract(archive: str | Path, target: str | Path) -> Path:
    """Extract a tar (plain, .gz, .bz2, .xz) into `target`, refusing unsafe members.

    Refused, with UnsafeArchiveError naming the member: absolute paths, `..` components, any
    member whose real path (existing links followed) leaves `target`, symbolic or hard links
    pointing outside `target`, device files and FIFOs. Members are checked one by one as the
    archive streams past, so nothing is ever written outside `target`; a refused archive
    leaves no marker, so what it did write inside `target` is never taken as complete.
    """
    archive, target = Path(archive), Path(target)
    marker = target / f".{archive.name}.extracted"
    if marker.is_file():
        return target
    if not archive.is_file():
        raise FileNotFoundError(f"archive not found: {archive}")
    target.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(target)
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                check_member(member, root, archive)
                if hasattr(tarfile, "data_filter"):
                    tar.extract(member, root, filter="data")
                else:  # pragma: no cover - Python without extraction filters
                    tar.extract(member, root)
    except _FILTER_ERRORS as err:  # only where our checks let something through
        raise UnsafeArchiveError(f"{archive}: refused member: {err}") from None
    except tarfile.TarError as err:
        raise UnsafeArchiveError(f"{archive} is not a readable tar archive: {err}") from None
    marker.write_text(f"{archive.name} {archive.stat().st_size}\n")
    return target


def check_member(member: tarfile.TarInfo, root: str, archive: Path) -> None:
    """UnsafeArchiveError naming `member` if extracting it under `root` could write elsewhere."""
    name = member.name

    def refuse(reason: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"{archive}: refused member {name!r}: {reason}")

    if name.startswith(("/", "\\")) or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        raise refuse("absolute path")
    if ".." in name.replace("\\", "/").split("/"):
        raise refuse("'..' in its path")
    if member.isdev() or member.isfifo():
        raise refuse("device file or FIFO")
    path = os.path.realpath(os.path.join(root, name))
    if not _inside(path, root):
        raise refuse(f"resolves to {path}, outside {root}")
    if member.issym():
        if os.path.isabs(member.linkname):
            raise refuse(f"symbolic link to the absolute path {member.linkname!r}")
        pointee = os.path.realpath(os.path.join(os.path.dirname(path), member.linkname))
        if not _inside(pointee, root):
            raise refuse(f"symbolic link to {member.linkname!r}, outside {root}")
    if member.islnk():
        pointee = os.path.realpath(os.path.join(root, member.linkname))
        if os.path.isabs(member.linkname) or not _inside(pointee, root):
            raise refuse(f"hard link to {member.linkname!r}, outside {root}")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
