"""Reading ``.npz`` archives of a run without pickle, checking what each member declares before reading it.

An archive member declares its shape and dtype in a small header; a compressed member
can declare gigabytes and hold a few megabytes (an "npz bomb"). The header is read
first and the member is refused when its size cannot be right: object dtypes (pickle),
a stored member larger than its bytes in the file, or a compressed member inflating
past :data:`MAX_INFLATE_RATIO` times its compressed size (plus :data:`INFLATE_ALLOWANCE`).
The writer of this project stores members uncompressed, so its files always pass.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Collection

import numpy as np
from numpy.lib import format as npformat

#: A deflated member may expand to this many times its compressed size (weights compress ~1.1x) ...
MAX_INFLATE_RATIO = 50
#: ... plus this many bytes (small all-zero arrays compress far better than that).
INFLATE_ALLOWANCE = 32 * 2 ** 20


class NpzError(ValueError):
    """An archive or one of its members cannot be read safely; the message says which and why."""


@dataclass(frozen=True)
class Member:
    """What one archive member declares: its array's shape and dtype, and its sizes in the zip."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    stored_bytes: int
    compressed: bool

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.float64)) * self.dtype.itemsize


def _key(info: zipfile.ZipInfo) -> str:
    return info.filename[:-4] if info.filename.endswith(".npy") else info.filename


def _read_header(f: IO[bytes], info: zipfile.ZipInfo) -> tuple[Member, bool]:
    """The member's declaration from its open stream (left at the array data), and its Fortran order."""
    key = _key(info)
    try:
        version = npformat.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(f)
        else:
            raise NpzError(f"member {key!r}: unsupported .npy format version {version}")
    except NpzError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise NpzError(f"member {key!r}: unreadable header ({type(e).__name__}: {e})") from None
    return Member(key, tuple(int(s) for s in shape), np.dtype(dtype), info.compress_size,
                  info.compress_type != zipfile.ZIP_STORED), bool(fortran)


def _open_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, size: int) -> IO[bytes]:
    if info.compress_size > size:
        raise NpzError(f"member {info.filename!r} claims more bytes than the file has: truncated or forged")
    return zf.open(info)


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, size: int) -> np.ndarray:
    """One member's array, its header checked before its data is read (one pass over the member)."""
    with _open_member(zf, info, size) as f:
        m, fortran = _read_header(f, info)
        check_member(m)
        buf = bytearray(m.nbytes)  # writable, as np.load's arrays are
        view, done = memoryview(buf), 0
        while done < len(buf):
            n = f.readinto(view[done:])
            if not n:
                raise NpzError(f"member {m.key!r} ends after {done} of its {m.nbytes} bytes: truncated")
            done += n
    return np.frombuffer(buf, m.dtype).reshape(m.shape, order="F" if fortran else "C")


def check_member(m: Member) -> None:
    """Raise NpzError when the member cannot be what it declares (or would need pickle)."""
    if m.dtype.hasobject:
        raise NpzError(f"member {m.key!r} is an object array: reading it would need pickle; refused")
    if m.compressed:
        limit = MAX_INFLATE_RATIO * m.stored_bytes + INFLATE_ALLOWANCE
        if m.nbytes > limit:
            raise NpzError(f"member {m.key!r} declares {m.nbytes / 2**20:.0f} MB {m.dtype} {m.shape} from "
                           f"{m.stored_bytes / 2**20:.1f} MB compressed (more than {MAX_INFLATE_RATIO}x): "
                           "refused as a likely decompression bomb; save it uncompressed (np.savez)")
    elif m.nbytes > m.stored_bytes:
        raise NpzError(f"member {m.key!r} declares {m.nbytes} bytes {m.dtype} {m.shape} but holds "
                       f"{m.stored_bytes}: truncated or forged")


def _zip(path: str | os.PathLike) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, ValueError) as e:
        raise NpzError(f"not an npz archive ({type(e).__name__}: {e})") from None


def members(path: str | os.PathLike) -> dict[str, Member]:
    """Every member's declared shape and dtype, checked (no array data is read)."""
    size = os.stat(path).st_size
    with _zip(path) as zf:
        out = {}
        for info in zf.infolist():
            with _open_member(zf, info, size) as f:
                m, _fortran = _read_header(f, info)
            check_member(m)
            out[m.key] = m
        return out


def read_npz(path: str | os.PathLike, names: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of ``path`` (only those in ``names``, if given), each checked by its header before
    its data is read.

    Raises NpzError (damage or a refused member), FileNotFoundError, or OSError.
    """
    path = Path(path)
    try:
        size = os.stat(path).st_size
        with _zip(path) as zf:
            return {_key(info): _read_member(zf, info, size) for info in zf.infolist()
                    if names is None or _key(info) in names}
    except (NpzError, FileNotFoundError):
        raise
    except (ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise NpzError(f"unreadable or truncated ({type(e).__name__}: {e})") from None
