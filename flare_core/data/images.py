"""Decode image files with Pillow into one (N, H, W, C) uint8 array, skipping unreadable files.

One pass, each file opened once: the first readable image sets the array's size and colour, and every image
of that size is decoded straight into its row. The few that differ (another size, colour in a grayscale array)
are kept aside and placed at the end, resized to the most common size (or the array is remade at that size or in
colour, from the pixels already decoded). So a load holds the pixels once, not a list of images and then their
stack. An array larger than :func:`image_ram_limit` bytes is a memory-mapped temporary file (removed when the
array is freed), so image-file datasets larger than the machine's memory load, and the operating system keeps
what fits of them in RAM.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from flare_core.errors import DataError
from flare_core.progress import ProgressCallback, ensure_progress

logger = logging.getLogger(__name__)

GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# Files that are never images and are not worth reporting.
_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini"})


def image_extensions() -> frozenset:
    """Lower-case file extensions (with dot) that Pillow can open."""
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def is_candidate_file(path: Path) -> bool:
    """False for hidden files and OS junk that should be ignored without a report."""
    return not path.name.startswith(".") and path.name.lower() not in _JUNK_NAMES


def decode_image(path: str | Path) -> np.ndarray:
    """Read one image as (H, W) uint8 when grayscale, else (H, W, 3) uint8; raises on bad files."""
    with Image.open(path) as img:
        img.load()
        mode = img.mode
        if mode in _SIXTEEN_BIT:
            arr = np.asarray(img, dtype=np.uint16) >> 8
            return arr.astype(np.uint8)
        if mode in GRAYSCALE_MODES:
            return np.asarray(img.convert("L"), dtype=np.uint8)
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def most_common_size(sizes: Sequence[tuple]) -> tuple:
    """The (H, W) that most of ``sizes`` share; ties go to the size seen first."""
    return Counter(sizes).most_common(1)[0][0]


def resize(arr: np.ndarray, size: tuple) -> np.ndarray:
    """Resize an (H, W[, 3]) uint8 array to (h, w) = size with bilinear filtering."""
    h, w = size
    return np.asarray(Image.fromarray(arr).resize((w, h), Image.BILINEAR), dtype=np.uint8)


#: Decoded images larger than this (in MB) go to a memory-mapped temporary file instead of RAM; the environment
#: variable ``FLARE_IMAGE_RAM_MB`` overrides it (the file goes to the temporary folder, ``TMPDIR``).
IMAGE_RAM_MB = 2048


def image_ram_limit() -> int:
    """Bytes of decoded images held in RAM; larger datasets are memory-mapped (``FLARE_IMAGE_RAM_MB``)."""
    text = os.environ.get("FLARE_IMAGE_RAM_MB", "").strip()
    if not text:
        return IMAGE_RAM_MB * 2**20
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


def _warn_if_in_memory(folder: str) -> None:
    try:
        mounts = Path("/proc/mounts").read_text()
    except OSError:  # not Linux
        return
    if filesystem_type(os.path.realpath(folder), mounts) in ("tmpfs", "ramfs"):
        logger.warning("The temporary folder %s is held in memory (tmpfs), so the memory-mapped images still take "
                       "RAM; point TMPDIR at a folder on disk.", folder)


def disk_array(shape: tuple) -> np.ndarray:
    """A uint8 array of ``shape`` in a memory-mapped temporary file, which disappears with the array.

    The file's blocks are reserved up front, so a full disk is a one-line DataError here, not a crash while
    writing pixels into the map."""
    nbytes = int(np.prod(shape))
    folder = tempfile.gettempdir()
    _warn_if_in_memory(folder)
    with tempfile.TemporaryFile(dir=folder, prefix="flare-images-") as f:
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(f.fileno(), 0, nbytes)
            else:  # pragma: no cover - macOS and Windows
                if shutil.disk_usage(folder).free < nbytes:
                    raise OSError(28, "No space left on device")
                f.truncate(nbytes)
        except OSError as exc:
            raise DataError(
                f"The decoded images need {nbytes / 2**30:.1f} GB of temporary disk space and {folder} has not got it "
                f"({exc.strerror or exc}); free space there, point TMPDIR at a larger disk, or raise "
                "FLARE_IMAGE_RAM_MB to keep them in memory.") from exc
        return np.memmap(f, dtype=np.uint8, mode="r+", shape=shape)


def image_array(shape: tuple) -> np.ndarray:
    """An uninitialised uint8 array of ``shape``: in memory, or on disk past :func:`image_ram_limit`."""
    nbytes = int(np.prod(shape))
    if nbytes <= image_ram_limit():
        return np.empty(shape, dtype=np.uint8)
    logger.info("The decoded images (%.1f GB) are larger than FLARE_IMAGE_RAM_MB; they are kept in a "
                "memory-mapped temporary file.", nbytes / 2**30)
    return disk_array(shape)


def _unreadable(path: Path, exc: Exception) -> str:
    reason = f"{type(exc).__name__}: {exc}"
    logger.debug("Skipping unreadable image %s (%s)", path, reason)
    return reason


#: images a decoding task takes at a time (one task per thread at once)
DECODE_CHUNK = 256


#: images smaller than this (pixels) decode in one thread: for them Python's per-file work, which holds the GIL,
#: outweighs the decoding (measured on 2 cores: 32x32 JPEGs 20 % slower in two threads, 64x64 even, 160x160
#: 1.4x faster and 256x256 1.3-1.8x)
THREADED_MIN_PIXELS = 128 * 128


def decode_threads(pixels: int) -> int:
    """Threads that decode images of ``pixels`` pixels at once: the machine's cores, at most 8 (Pillow decodes
    without the GIL), or 1 for images under :data:`THREADED_MIN_PIXELS`."""
    if pixels < THREADED_MIN_PIXELS:
        return 1
    return max(1, min(8, os.cpu_count() or 1))


def _fits(a: np.ndarray, out: np.ndarray) -> bool:
    return a.shape[:2] == out.shape[1:3] and not (a.ndim == 3 and out.shape[3] == 1)


def _decode_chunk(out: np.ndarray, paths: Sequence[Path], start: int) -> tuple:
    """Decode ``paths[start:start + DECODE_CHUNK]`` into the same rows of ``out``; returns ({row: reason} of the
    files that failed, {row: image} of those that do not fit ``out``: another size, or colour in grayscale)."""
    failed, odd = {}, {}
    for j in range(start, min(start + DECODE_CHUNK, len(paths))):
        try:
            a = decode_image(paths[j])
        except Exception as exc:  # one bad file must never stop the whole load
            failed[j] = _unreadable(paths[j], exc)
            continue
        if _fits(a, out):
            out[j] = a[..., None] if a.ndim == 2 else a
        else:
            odd[j] = a
    return failed, odd


def _as_pixels(row: np.ndarray) -> np.ndarray:
    """An (H, W, C) row as the (H, W) or (H, W, 3) array :func:`resize` takes."""
    return row[..., 0] if row.shape[-1] == 1 else row


def _remake(out: np.ndarray, rows: Sequence[int], size: tuple, channels: int) -> np.ndarray:
    """``out`` remade at ``size`` and ``channels`` (grayscale repeated into colour), for ``rows``; others unset."""
    new = image_array((len(out), *size, channels))
    if tuple(out.shape[1:3]) == tuple(size):
        for start in range(0, len(out), 4096):  # a block at a time: no whole temporary copy
            new[start:start + 4096] = out[start:start + 4096]
    else:
        for j in rows:
            new[j] = np.reshape(resize(_as_pixels(out[j]), size), (*size, -1))
    return new


def read_images(paths: Sequence[Path], progress: Optional[ProgressCallback] = None, *,
                threads: Optional[int] = None) -> tuple:
    """Decode ``paths`` in order into one (n, H, W, C) uint8 array: (images, or None when none could be read,
    kept positions into ``paths``, (path, reason) of every file skipped, in path order).

    C is 1 when every image is grayscale, else 3 (grayscale images are repeated over the channels). Images of
    another size than the most common one (ties: the one seen first) are resized to it, with a warning. The array
    is in memory, or in a memory-mapped temporary file when larger than :func:`image_ram_limit`. ``threads``
    decode at once (default :func:`decode_threads` of the first image's size); the result does not depend on how
    many."""
    from concurrent.futures import ThreadPoolExecutor

    progress = ensure_progress(progress)
    paths = list(paths)
    failed, first = {}, None
    for i, p in enumerate(paths):  # the first readable image sets the array's size and colour
        try:
            first = decode_image(p)
            break
        except Exception as exc:
            failed[i] = _unreadable(p, exc)
    if first is None:
        return None, [], [(str(paths[i]), r) for i, r in sorted(failed.items())]
    out = image_array((len(paths), *first.shape[:2], 3 if first.ndim == 3 else 1))
    odd: dict = {}
    with ThreadPoolExecutor(max_workers=threads or decode_threads(first.shape[0] * first.shape[1])) as pool:
        starts = range(0, len(paths), DECODE_CHUNK)
        for k, (bad, other) in enumerate(pool.map(lambda st: _decode_chunk(out, paths, st), starts)):
            failed.update(bad)
            odd.update(other)
            progress("load images", min((k + 1) * DECODE_CHUNK, len(paths)), len(paths))
    kept = [j for j in range(len(paths)) if j not in failed]
    if not kept:
        return None, [], [(str(paths[i]), r) for i, r in sorted(failed.items())]
    shape_of = {j: odd[j].shape[:2] if j in odd else tuple(out.shape[1:3]) for j in kept}
    size = most_common_size(list(shape_of.values()))
    channels = 3 if out.shape[3] == 3 or any(a.ndim == 3 for a in odd.values()) else 1
    if size != tuple(out.shape[1:3]) or channels != out.shape[3]:
        out = _remake(out, [j for j in kept if j not in odd], size, channels)
    for j, a in odd.items():
        out[j] = np.reshape(resize(a, size) if a.shape[:2] != size else a, (*size, -1))
    resized = [str(paths[j]) for j in kept if shape_of[j] != size]
    if resized:
        logger.warning("%d of %d images are not %dx%d (the most common size) and were resized, e.g. %s.",
                       len(resized), len(kept), size[0], size[1], resized[0])
    for n, j in enumerate(kept):  # close up the rows of files that failed (none, usually)
        if n != j:
            out[n] = out[j]
    skipped = [(str(paths[i]), r) for i, r in sorted(failed.items())]
    return (out if len(kept) == len(out) else out[:len(kept)]), kept, skipped


def warn_skipped(skipped: Sequence[tuple], where: str) -> None:
    """Log one warning that summarises the files that could not be read."""
    if skipped:
        logger.warning(
            "Skipped %d unreadable file(s) in %s, e.g. %s (%s).", len(skipped), where, skipped[0][0], skipped[0][1]
        )
