"""One array of an ``.npz`` archive read without ever holding it twice, and without holding it at all when large.

``numpy.load`` reads an archive's member whole into memory (its ``mmap_mode`` does not apply to archives), so a
dataset larger than memory could not load. Here the member's ``.npy`` header is read first (shape, dtype, order;
no data). Then, for a large member:

* stored uncompressed (``numpy.savez``, the usual case): the array is memory-mapped **read-only straight from the
  file**, at the byte where the member's data starts (the zip's local header, then the ``.npy`` header). Nothing is
  copied; the system pages in what is read and drops it again under pressure;
* compressed (``numpy.savez_compressed``), or stored in another layout: it is decompressed a block of rows at a time
  into an array the caller gives (a memory-mapped temporary file, :func:`flare_core.large_arrays.disk_array`).

Pure functions over an open :class:`zipfile.ZipFile` and the archive's own file handle; no pickle is ever read
(object dtypes are refused from the header).
"""
from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass
from typing import BinaryIO, Callable, Optional

import numpy as np

#: A zip local file header (PKWARE APPNOTE 4.3.7): signature, version, flags, method, time, date, CRC-32,
#: compressed size, size, file name length, extra field length; the name, the extra field, then the data follow.
LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
LOCAL_SIGNATURE = 0x04034B50

#: bytes a streamed read takes at a time
STREAM_BYTES = 8 * 2**20


@dataclass(frozen=True)
class NpyMember:
    """The header of one ``.npy`` member of an archive: ``name`` (with ``.npy``), ``shape``, ``dtype``,
    ``fortran_order``, and ``data_offset``, the byte in the archive file where the array's data starts when the
    member is stored uncompressed and unencrypted (None otherwise: it can only be read through the zip)."""

    name: str
    shape: tuple
    dtype: np.dtype
    fortran_order: bool
    data_offset: Optional[int]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _read_header(f: BinaryIO) -> tuple:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f".npy format version {version[0]}.{version[1]} is not read here (1.0 and 2.0 are)")


def npy_member(archive: zipfile.ZipFile, raw: BinaryIO, name: str) -> NpyMember:
    """The header of member ``name`` of ``archive`` (``raw``: the archive's file, opened for reading).

    ValueError for a member that is no ``.npy`` array or holds Python objects (which only pickle could read)."""
    info = archive.getinfo(name)
    with archive.open(info) as f:
        shape, fortran_order, dtype = _read_header(f)
        header_bytes = f.tell()
    if dtype.hasobject:
        raise ValueError(f"member {name} holds Python objects, which are read only by unpickling")
    offset = None
    if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
        raw.seek(info.header_offset)
        head = raw.read(LOCAL_HEADER.size)
        if len(head) == LOCAL_HEADER.size:
            fields = LOCAL_HEADER.unpack(head)
            if fields[0] == LOCAL_SIGNATURE:
                offset = info.header_offset + LOCAL_HEADER.size + fields[9] + fields[10] + header_bytes
    return NpyMember(name, tuple(int(n) for n in shape), np.dtype(dtype), bool(fortran_order), offset)


def map_member(path: str, member: NpyMember) -> np.memmap:
    """The member's array memory-mapped read-only from the archive file at ``path`` (``data_offset`` must be set).

    EOFError when the file is shorter than the array (a truncated archive)."""
    if member.data_offset is None:
        raise ValueError(f"member {member.name} is compressed or encrypted and cannot be mapped")
    size = os.path.getsize(path)
    if size < member.data_offset + member.nbytes:
        raise EOFError(f"member {member.name} ends after {max(0, size - member.data_offset):,} of {member.nbytes:,} "
                       "bytes")
    return np.memmap(path, dtype=member.dtype, mode="r", offset=member.data_offset, shape=member.shape,
                     order="F" if member.fortran_order else "C")


def stream_member(archive: zipfile.ZipFile, member: NpyMember, out: np.ndarray,
                  convert: Callable[[np.ndarray], np.ndarray] = lambda rows: rows,
                  block_bytes: Optional[int] = None) -> np.ndarray:
    """Decompress a C-order member a block of rows at a time into ``out`` (``out[i:j] = convert(rows i..j-1)``;
    blocks of ``block_bytes``, default :data:`STREAM_BYTES`).

    ``convert`` maps a block of rows as stored to rows of ``out`` (a transpose, say). ValueError for a
    Fortran-order member (its rows are not contiguous); EOFError for one that ends early (a truncated archive)."""
    if member.fortran_order:
        raise ValueError(f"member {member.name} is stored in Fortran (column) order, which cannot be read a row at a "
                         "time")
    n = member.shape[0] if member.shape else 1
    row_bytes = member.nbytes // max(n, 1)
    rows_per_block = max(1, min(n, (block_bytes or STREAM_BYTES) // max(row_bytes, 1)))
    buffer = bytearray(rows_per_block * row_bytes)
    with archive.open(member.name) as f:
        _read_header(f)
        for start in range(0, n, rows_per_block):
            count = min(rows_per_block, n - start)
            view = memoryview(buffer)[:count * row_bytes]
            got = 0
            while got < len(view):
                k = f.readinto(view[got:])
                if not k:
                    raise EOFError(f"member {member.name} ends after {start * row_bytes + got:,} of "
                                     f"{member.nbytes:,} bytes")
                got += k
            rows = np.frombuffer(view, dtype=member.dtype).reshape((count, *member.shape[1:]))
            out[start:start + count] = convert(rows)
    return out
