"""Arrays with one row per sample, which may not fit in memory: held in RAM up to :func:`ram_limit` bytes each, past
it in a memory-mapped temporary file that disappears with the array (the operating system keeps what fits of it in
RAM). The decoded images use it, and so do the feature pass's outputs (penultimate features, logits, the
per-channel view), so a dataset larger than the machine's memory runs with about one batch in RAM.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from flare_core.errors import DataError
from flare_core.system_memory import memory_available

logger = logging.getLogger(__name__)

#: An array larger than this (in MB) goes to a memory-mapped temporary file instead of RAM; the environment
#: variable ``FLARE_IMAGE_RAM_MB`` overrides it (named for the images, the first arrays it held; the file goes to
#: the temporary folder, ``TMPDIR``).
RAM_LIMIT_MB = 2048

#: ...and by default no more than this share of the memory the process may still take when the array is made
#: (the kernel's MemAvailable, or a container's memory cgroup: in a 1 GB container the limit is about 180 MB).
#: Asked again for every array, so an array made after the images sees the memory they left.
RAM_SHARE = 0.25


def ram_limit() -> int:
    """Bytes one per-sample array may take in RAM; larger ones are memory-mapped. ``FLARE_IMAGE_RAM_MB`` when set,
    else the smaller of :data:`RAM_LIMIT_MB` and :data:`RAM_SHARE` of
    :func:`~flare_core.system_memory.memory_available`."""
    text = os.environ.get("FLARE_IMAGE_RAM_MB", "").strip()
    if not text:
        available = memory_available()
        fixed = RAM_LIMIT_MB * 2**20
        return fixed if available is None else min(fixed, int(available * RAM_SHARE))
    try:
        mb = int(text)
    except ValueError:
        mb = -1
    if mb < 0:
        raise DataError(f"FLARE_IMAGE_RAM_MB must be a whole number of megabytes (0 or more), got {text!r}.")
    return mb * 2**20


def filesystem_type(path: str, mounts: str) -> Optional[str]:
    """The type of the file system ``path`` lies on (``tmpfs``, ``ext4``...), from the text of /proc/mounts: the
    mount point that is the longest prefix of the path; None when no line matches."""
    best, kind = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def _warn_if_in_memory(folder: str, what: str) -> None:
    try:
        mounts = Path("/proc/mounts").read_text()
    except OSError:  # not Linux
        return
    if filesystem_type(os.path.realpath(folder), mounts) in ("tmpfs", "ramfs"):
        logger.warning("The temporary folder %s is held in memory (tmpfs), so the memory-mapped %s still take "
                       "RAM; point TMPDIR at a folder on disk.", folder, what)


def disk_array(shape: tuple, dtype=np.uint8, what: str = "decoded images") -> np.ndarray:
    """An array of ``shape`` and ``dtype`` in a memory-mapped temporary file, which disappears with the array.

    The file's blocks are reserved up front, so a full disk is a one-line DataError here, not a crash while
    writing into the map. ``what`` names the array in that message (plural: "decoded images")."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    folder = tempfile.gettempdir()
    _warn_if_in_memory(folder, what)
    with tempfile.TemporaryFile(dir=folder, prefix="flare-arrays-") as f:
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(f.fileno(), 0, max(nbytes, 1))
            else:  # pragma: no cover - macOS and Windows
                if shutil.disk_usage(folder).free < nbytes:
                    raise OSError(28, "No space left on device")
                f.truncate(max(nbytes, 1))
        except OSError as exc:
            raise DataError(
                f"The {what} need {nbytes / 2**30:.1f} GB of temporary disk space and {folder} has not got it "
                f"({exc.strerror or exc}); free space there, point TMPDIR at a larger disk, or raise "
                "FLARE_IMAGE_RAM_MB to keep them in memory.") from exc
        return np.memmap(f, dtype=dtype, mode="r+", shape=shape)


def sample_array(shape: tuple, dtype, what: str) -> np.ndarray:
    """An uninitialised array of ``shape`` and ``dtype``: in memory, or on disk past :func:`ram_limit`."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes <= ram_limit():
        return np.empty(shape, dtype=dtype)
    logger.info("The %s (%.1f GB) are more than the limit on one array in memory (FLARE_IMAGE_RAM_MB, or a quarter "
                "of the free memory); they are kept in a memory-mapped temporary file.", what, nbytes / 2**30)
    return disk_array(shape, dtype, what)
