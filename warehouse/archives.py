"""Reading other people's archives (zip, tar, gzip) with bounds: a member whose declared or streamed size
passes a cap is refused with a clear error, members are streamed, never read whole unbounded, and member
names never become paths outside the folder they are extracted to."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

# Defaults for callers with no setting of their own: far above any real member (GBIF's largest DwC-A
# occurrence.txt is tens of GB; a backbone's Taxon.tsv about 2 GB), far below a disk-filling bomb.
MAX_MEMBER_BYTES = 64 * 2**30
MAX_TOTAL_BYTES = 256 * 2**30
_CHUNK = 1 << 20


class ArchiveError(ValueError):
    """An archive refused: a member over its cap, or a member name that would leave the target folder."""


def copy_capped(src: BinaryIO, dst: BinaryIO, cap: int, what: str) -> int:
    """Copy a stream in chunks, refusing it past `cap` bytes; returns the size."""
    size = 0
    while chunk := src.read(_CHUNK):
        size += len(chunk)
        if size > cap:
            raise ArchiveError(f"{what}: more than {cap} bytes when unpacked; refused")
        dst.write(chunk)
    return size


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, max_bytes: int = MAX_MEMBER_BYTES) -> str:
    """A tar member's text (UTF-8, bad bytes replaced), refused past `max_bytes`, declared or read."""
    return read_member_bytes(tar, member, max_bytes).decode("utf-8", errors="replace")


def read_member_bytes(
    tar: tarfile.TarFile, member: tarfile.TarInfo, max_bytes: int = MAX_MEMBER_BYTES
) -> bytes:
    if member.size > max_bytes:
        raise ArchiveError(f"{member.name}: declares {member.size} bytes, over the cap of {max_bytes}")
    fh = tar.extractfile(member)
    if fh is None:
        return b""
    data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ArchiveError(f"{member.name}: more than {max_bytes} bytes; refused")
    return data


def _safe_name(name: str) -> PurePosixPath:
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".", "/")]
    if not parts or any(p == ".." for p in parts):
        raise ArchiveError(f"member name {name!r} leaves the folder it is extracted to; refused")
    return PurePosixPath(*parts)


def extract_zip_member(
    zf: zipfile.ZipFile, name: str, target: Path, max_bytes: int = MAX_MEMBER_BYTES
) -> Path:
    """Stream one member of `zf` to `target/<name>`, refusing it past `max_bytes` (declared or unpacked)."""
    info = zf.getinfo(name)
    if info.file_size > max_bytes:
        raise ArchiveError(f"{name}: declares {info.file_size} bytes, over the cap of {max_bytes}")
    dest = target / _safe_name(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as src, open(dest, "wb") as dst:
        copy_capped(src, dst, max_bytes, name)
    return dest


def extract_zip(
    zf: zipfile.ZipFile,
    target: Path,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> None:
    """Every regular member of `zf` under `target`, each within `max_member_bytes` and all within
    `max_total_bytes` (declared sizes are checked before anything is written)."""
    infos = [i for i in zf.infolist() if not i.is_dir()]
    declared = sum(i.file_size for i in infos)
    if declared > max_total_bytes:
        raise ArchiveError(f"archive declares {declared} bytes in all, over the cap of {max_total_bytes}")
    target.mkdir(parents=True, exist_ok=True)
    for info in infos:
        extract_zip_member(zf, info.filename, target, max_member_bytes)
