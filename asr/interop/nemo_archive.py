"""Reading a `.nemo` file, which may come from anyone, in memory and within size caps.

A `.nemo` file is a tar (plain, gzip, bzip2 or xz) of `model_config.yaml`, `model_weights.ckpt`
(a state dict) and the SentencePiece tokenizer. `read_nemo` returns its members by name without
extracting anything: every member must be a plain file or folder with a safe relative name
(`asr.corpora.download.check_member`) and fit the size caps (MAX_MEMBER_BYTES, MAX_TOTAL_BYTES,
MAX_MEMBERS), checked before reading: a gzip bomb stops at its tar header. `read_weights` loads
the weights member with `torch.load(weights_only=True)`, so no pickled code runs. What the
members mean is `asr.interop.nemo`'s business; its users know these caps by the names the
messages give them, `asr.interop.nemo.MAX_...` (re-exported there).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import pickle
import re
import tarfile
import zlib
from pathlib import Path

import torch

from asr.checkpoint import BundleError
from asr.corpora.download import UnsafeArchiveError, check_member

CONFIG_MEMBER = "model_config.yaml"
WEIGHTS_MEMBER = "model_weights.ckpt"
# Caps on what a .nemo file may make us hold in memory: a large Conformer-CTC .nemo is ~0.5 GB,
# nearly all of it the weights member; a gzip bomb of a few MB can declare 50 GB.
MAX_MEMBER_BYTES = 4 << 30
MAX_TOTAL_BYTES = 6 << 30
MAX_MEMBERS = 1000  # NeMo writes fewer than ten; each member costs memory however small
# What tarfile's "r:*" reads, by magic number (NeMo writes gzip or plain tar).
DECOMPRESSORS = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ\x00": lzma.open}


class NemoImportError(BundleError):
    """A `.nemo` file this importer cannot or will not read; the message names the file."""


def read_nemo(
    path: Path,
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_members: int = MAX_MEMBERS,
) -> dict[str, bytes]:
    """The members of a `.nemo` tar by name (leading "./" removed), checked, read in memory.

    A member whose tar header declares more than `max_member_bytes`, or that would bring the
    uncompressed archive over `max_total_bytes`, fails before it is read (a gzip bomb is a few
    megabytes on disk and declares its true, uncompressed sizes); every byte decompressed is
    counted against `max_total_bytes` too, tarfile's own reads of headers included.
    """
    if not path.is_file():
        raise FileNotFoundError(f"NeMo model file not found: {path}")
    members: dict[str, bytes] = {}
    try:
        with (
            _Bounded(path, max_member_bytes, max_total_bytes) as stream,
            tarfile.open(fileobj=stream, mode="r:") as tar,
        ):
            for count, member in enumerate(tar, start=1):
                if count > max_members:
                    raise NemoImportError(
                        f"{path} has more than {max_members} members "
                        f"(asr.interop.nemo.MAX_MEMBERS): {member.name!r} is number {count}"
                    )
                check_member(member, "/nemo-archive", path)
                if not (member.isfile() or member.isdir()):
                    raise UnsafeArchiveError(
                        f"{path}: refused member {member.name!r}: not a plain file or folder"
                    )
                if member.isfile():
                    stream.check_member(member)
                    data = tar.extractfile(member)
                    name = re.sub(r"^(\./)+", "", member.name)
                    members[name] = data.read() if data is not None else b""
    except UnsafeArchiveError as err:
        raise NemoImportError(str(err)) from None
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as err:
        raise NemoImportError(
            f"{path} is not a readable .nemo archive (truncated or not a tar): {err}"
        ) from None
    for required in (CONFIG_MEMBER, WEIGHTS_MEMBER):
        if required not in members:
            raise NemoImportError(f"{path} is not a NeMo model: it has no {required}")
    return members


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("kiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


class _Bounded:
    """A `.nemo` file, decompressed as it is read, that refuses to read or seek past its limits
    before decompressing anything: tarfile reads an extended (pax) header or a long name whole,
    whatever size it declares, before read_nemo sees a member."""

    def __init__(self, path: Path, max_member_bytes: int, max_total_bytes: int) -> None:
        with open(path, "rb") as f:
            magic = f.read(6)
        opener = next((o for m, o in DECOMPRESSORS.items() if magic.startswith(m)), open)
        self.raw = opener(path, "rb")
        self.path = path
        self.max_member_bytes = max_member_bytes
        self.max_total_bytes = max_total_bytes

    def __enter__(self) -> _Bounded:
        return self

    def __exit__(self, *exc: object) -> None:
        self.raw.close()

    def check_member(self, member: tarfile.TarInfo) -> None:
        """NemoImportError naming `member`, before it is read, if its size (declared in its
        header: the uncompressed size) is over a limit, or would bring the archive over one."""
        total = self.raw.tell() + member.size  # the tar headers count too
        if member.size > self.max_member_bytes:
            raise NemoImportError(
                f"{self.path}: member {member.name!r} is {_size(member.size)} uncompressed, over "
                f"the limit of {_size(self.max_member_bytes)} per member "
                f"(asr.interop.nemo.MAX_MEMBER_BYTES)"
            )
        if total > self.max_total_bytes:
            raise NemoImportError(
                f"{self.path}: member {member.name!r} ({_size(member.size)}) brings the archive "
                f"to {_size(total)} uncompressed, over the limit of "
                f"{_size(self.max_total_bytes)} for a whole archive "
                f"(asr.interop.nemo.MAX_TOTAL_BYTES)"
            )

    def read(self, size: int) -> bytes:
        if size > self.max_member_bytes:
            raise NemoImportError(
                f"{self.path}: a tar header of {_size(size)}, over the limit of "
                f"{_size(self.max_member_bytes)} per member (asr.interop.nemo.MAX_MEMBER_BYTES)"
            )
        self._reach(self.raw.tell() + size)
        return self.raw.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._reach(offset if whence == io.SEEK_SET else self.raw.tell() + offset)
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def _reach(self, end: int) -> None:
        if end > self.max_total_bytes:
            raise NemoImportError(
                f"{self.path} is over {_size(self.max_total_bytes)} uncompressed, the limit for "
                f"a whole archive (asr.interop.nemo.MAX_TOTAL_BYTES)"
            )


def read_weights(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    """The state dict in `data` (the WEIGHTS_MEMBER of `path`), loaded without running any
    pickled code; NemoImportError if it would need to, or is not a dict of tensors."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise NemoImportError(
            f"refusing to load {path}: its {WEIGHTS_MEMBER} is not a plain tensor file (it "
            f"would need to run pickled code, which is never done): {str(err).splitlines()[0]}"
        ) from None
    except Exception as err:
        raise NemoImportError(f"{path}: its {WEIGHTS_MEMBER} is unreadable ({err!r})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NemoImportError(f"{path}: its {WEIGHTS_MEMBER} is not a state dict of tensors")
    return state
