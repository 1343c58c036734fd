"""``.npz`` arrays: ``x`` (N, H, W[, C]) uint8 and ``y`` labels; optional ``classes`` and ``sources``.

The images are read into memory up to :func:`~flare_core.large_arrays.ram_limit`; past it they stay on disk (:mod:`.npy_member`)."""
from __future__ import annotations

import logging
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from flare_core.data.npy_member import NpyMember, map_member, npy_member, stream_member
from flare_core.dataset import ImageDataset, numbered_class_names
from flare_core.errors import DataError
from flare_core.large_arrays import disk_array, ram_limit

logger = logging.getLogger(__name__)

_X_KEYS = ("x", "images")
_Y_KEYS = ("y", "labels")


@contextmanager
def open_npz(path: Path) -> Iterator[tuple]:
    """``(archive, raw)``: the .npz as numpy's lazy ``NpzFile`` (members read on access, never with pickle) and
    the file handle under it; every way the file can fail to be an archive is a one-line DataError."""
    try:
        with open(path, "rb") as raw:  # our own handle, closed even when numpy fails half-way
            head = raw.read(6)
            raw.seek(0)
            if not head.startswith((b"PK", b"\x93NUMPY")):  # neither a zip (.npz) nor a single array (.npy)
                raise DataError(f"{path} is not an .npz file (numpy's zip of arrays); check that it is complete and "
                                "was saved with numpy.savez(path, x=..., y=...).")
            archive = np.load(raw, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise DataError(f"{path} is a single array, not an .npz archive; save it with numpy.savez(path, x=..., y=...).")
            with archive:
                yield archive, raw
    except DataError:
        raise
    except ValueError as exc:  # pickled content (object arrays, or not numpy data at all) is refused
        raise DataError(
            f"{path} is not a plain .npz of numeric or string arrays ({exc}); object arrays are refused for safety."
        ) from exc
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"Could not read {path} as an .npz file ({exc}); it may be truncated.") from exc


def _pick_name(names, keys: tuple, path: Path, what: str) -> str:
    for k in keys:
        if k in names:
            return k
    raise DataError(f"{path} has no '{keys[0]}' array ({what}); found {sorted(names) or 'nothing'}.")


def _channel_first(shape: tuple) -> bool:
    return len(shape) == 4 and shape[-1] not in (1, 3) and shape[1] in (1, 3)


def _channel_last(rows: np.ndarray) -> np.ndarray:
    return rows.transpose(0, 2, 3, 1)


def _as_stored(rows: np.ndarray) -> np.ndarray:
    return rows


def _check_image_header(member: NpyMember, path: Path) -> None:
    if member.dtype != np.uint8:
        raise DataError(f"'x' in {path} has dtype {member.dtype}; convert it to uint8 values 0..255.")
    shape = member.shape
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3) and not _channel_first(shape)):
        raise DataError(f"'x' in {path} has shape {shape}; expected (N, H, W) or (N, H, W, 1|3).")


def _large_images(archive, path: Path, member: NpyMember) -> np.ndarray:
    """The images of a member past :func:`~flare_core.large_arrays.ram_limit`: mapped read-only from the file, or streamed to disk."""
    gb = member.nbytes / 2**30
    if member.fortran_order:
        raise DataError(f"'x' in {path} ({gb:.1f} GB, more than the limit on images in memory) is stored in Fortran order, which "
                        "cannot be read a block at a time; save it with numpy.savez(path, x=np.ascontiguousarray(x), "
                        "...) or raise FLARE_IMAGE_RAM_MB to read it into memory.")
    if member.data_offset is not None and not _channel_first(member.shape):
        logger.info("The images in %s (%.1f GB) are more than the limit on images in memory; they are read memory-mapped from "
                    "the file itself (read-only).", path, gb)
        return map_member(str(path), member)
    return _stream_images(archive, path, member)


def _stream_images(archive, path: Path, member: NpyMember) -> np.ndarray:
    shape = member.shape
    if _channel_first(shape):
        shape = (shape[0], shape[2], shape[3], shape[1])
    gb = member.nbytes / 2**30
    logger.info("The images in %s (%.1f GB) are more than the limit on images in memory and %s; they are read a block at a time "
                "into a memory-mapped temporary file.", path, gb,
                "stored channel-first" if _channel_first(member.shape) else "compressed")
    out = disk_array(shape)
    return stream_member(archive.zip, member, out, _channel_last if _channel_first(member.shape) else _as_stored)


def _read_images(archive, raw, path: Path, key: str) -> np.ndarray:
    """``x`` as (N, H, W[, C]) uint8, validated from its header: in memory up to :func:`~flare_core.large_arrays.ram_limit`, else on
    disk (see :mod:`.npy_member`); images stored channel-first are transposed a block at a time, never held twice."""
    member = npy_member(archive.zip, raw, key + ".npy")
    _check_image_header(member, path)
    channel_first = _channel_first(member.shape)
    if channel_first:
        logger.info("'x' in %s looks channel-first %s; transposing to (N, H, W, C).", path, member.shape)
    if member.nbytes > ram_limit():
        return _large_images(archive, path, member)
    if channel_first and not member.fortran_order:
        n, c, h, w = member.shape
        return stream_member(archive.zip, member, np.empty((n, h, w, c), dtype=np.uint8), _channel_last)
    x = archive[key]  # C order as stored, or a Fortran-order array made C-order here
    return np.ascontiguousarray(_channel_last(x) if channel_first else x)


def check_labels(y: np.ndarray, n: int, path: Path) -> np.ndarray:
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"'y' in {path} has shape {y.shape}; expected ({n},), one label per image.")
    if y.dtype.kind not in "iu":
        raise DataError(f"'y' in {path} has dtype {y.dtype}; labels must be integers 0..K-1.")
    if n and y.min() < 0:
        raise DataError(f"'y' in {path} has negative labels; labels must be integers 0..K-1.")
    return y.astype(np.int64)


def load_npz(path: str | Path) -> ImageDataset:
    """Load an .npz dataset with ``allow_pickle=False``; images past :func:`~flare_core.large_arrays.ram_limit` stay on disk
    (memory-mapped from the file itself when stored uncompressed; see :mod:`.npy_member`)."""
    path = Path(path).absolute()
    with open_npz(path) as (archive, raw):
        names = set(archive.files)
        x_name = _pick_name(names, _X_KEYS, path, "the images")
        y = archive[_pick_name(names, _Y_KEYS, path, "the labels")]
        x = _read_images(archive, raw, path, x_name)
        classes = np.asarray(archive["classes"]).reshape(-1) if "classes" in names else None
        sources = np.asarray(archive["sources"]).reshape(-1) if "sources" in names else None
    y = check_labels(y, len(x), path)
    if len(y) == 0:
        raise DataError(f"{path} holds no images.")
    if classes is not None:
        classes = [str(c) for c in classes]
        if int(y.max()) >= len(classes):
            raise DataError(f"{path} names {len(classes)} classes but has labels up to {int(y.max())}.")
    else:
        classes = numbered_class_names(int(y.max()), str(path))
    if sources is not None:
        sources = [str(s) for s in sources]
        if len(sources) != len(y):
            raise DataError(f"{path} has {len(sources)} sources for {len(y)} images; they must match one to one.")
    else:
        sources = [f"{path}#{i}" for i in range(len(y))]
    logger.info("Loaded %d images in %d classes from %s", len(y), len(classes), path)
    return ImageDataset(x, y, classes, sources, format="npz", root=str(path))
