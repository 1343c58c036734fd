"""Decode image files with Pillow into one (N, H, W, C) uint8 array, skipping unreadable files.

One pass, each file opened once: the first readable image sets the array's size and colour, and every image
of that size is decoded straight into its row. The few that differ (another size, colour in a grayscale array)
are kept aside and placed at the end, resized to the most common size (or the array is remade at that size or in
colour, from the pixels already decoded). So a load holds the pixels once, not a list of images and then their
stack. An array larger than :func:`~flare_core.large_arrays.ram_limit` bytes is a memory-mapped temporary file (removed when the
array is freed), so image-file datasets larger than the machine's memory load, and the operating system keeps
what fits of them in RAM.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from flare_core.progress import ProgressCallback, ensure_progress
from flare_core.large_arrays import sample_array

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


def most_common_size(sizes) -> tuple:
    """The (H, W) that most of ``sizes`` (a sequence, or a Counter of them) share; ties go to the size seen first."""
    counts = sizes if isinstance(sizes, Counter) else Counter(sizes)
    return max(counts, key=counts.__getitem__)


def resize(arr: np.ndarray, size: tuple) -> np.ndarray:
    """Resize an (H, W[, 3]) uint8 array to (h, w) = size with bilinear filtering."""
    h, w = size
    return np.asarray(Image.fromarray(arr).resize((w, h), Image.BILINEAR), dtype=np.uint8)


def image_array(shape: tuple) -> np.ndarray:
    """An uninitialised uint8 array of ``shape``: in memory, or on disk past :func:`~flare_core.large_arrays.ram_limit`."""
    return sample_array(shape, np.uint8, "decoded images")


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


#: bytes of decoded images that do not fit the array (another size) kept aside before the load reads every file's
#: header for the most common size and resizes the rest as it decodes them (datasets of mixed sizes)
ASIDE_BYTES = 256 * 2**20


def probe_size(path: Path) -> Optional[tuple]:
    """(height, width) of an image file from its header, without decoding it; None when it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except Exception:
        return None


def _fits(a: np.ndarray, out: np.ndarray) -> bool:
    return a.shape[:2] == out.shape[1:3] and not (a.ndim == 3 and out.shape[3] == 1)


def _decode_chunk(out: np.ndarray, paths: Sequence[Path], start: int, resize_all: bool) -> tuple:
    """Decode ``paths[start:start + DECODE_CHUNK]`` into the same rows of ``out``; returns ({row: reason} of the
    files that failed, {row: image} of those that do not fit ``out``, rows resized). With ``resize_all`` an image
    of another size is resized into its row; else it is returned aside, as is a colour image in a grayscale
    ``out`` (resized first with ``resize_all``)."""
    size = tuple(out.shape[1:3])
    failed, aside, resized = {}, {}, []
    for j in range(start, min(start + DECODE_CHUNK, len(paths))):
        try:
            a = decode_image(paths[j])
        except Exception as exc:  # one bad file must never stop the whole load
            failed[j] = _unreadable(paths[j], exc)
            continue
        if resize_all and a.shape[:2] != size:
            a = resize(a, size)
            resized.append(j)
        if _fits(a, out):
            out[j] = a[..., None] if a.ndim == 2 else a
        else:
            aside[j] = a
    return failed, aside, resized


def _as_pixels(row: np.ndarray) -> np.ndarray:
    """An (H, W, C) row as the (H, W) or (H, W, 3) array :func:`resize` takes."""
    return row[..., 0] if row.shape[-1] == 1 else row


def _remake(out: np.ndarray, rows: Sequence[int], size: tuple, channels: int) -> np.ndarray:
    """``out`` remade at ``size`` and ``channels`` (grayscale repeated into colour), for ``rows``; others unset."""
    new = image_array((len(out), *size, channels))
    for j in rows:
        a = out[j] if tuple(out.shape[1:3]) == tuple(size) else resize(_as_pixels(out[j]), size)
        new[j] = np.reshape(a, (*size, -1))
    return new


class _Decoding:
    """The state of one :func:`read_images`: the array, the rows decoded into it, the images aside."""

    def __init__(self, paths: list, first: np.ndarray, failed: dict):
        self.paths, self.failed = paths, failed
        self.out = image_array((len(paths), *first.shape[:2], 3 if first.ndim == 3 else 1))
        self.first_size = tuple(first.shape[:2])
        self.inside: list = []  # rows decoded into ``out`` at its size (or resized into it)
        self.aside: dict = {}
        self.resized: set = set()  # rows whose image was resized
        self.resize_all = False

    def add(self, failed: dict, aside: dict, resized: list, rows: range) -> None:
        """One chunk's results (:func:`_decode_chunk`)."""
        self.failed.update(failed)
        self.aside.update(aside)
        self.resized.update(resized)
        self.inside += [j for j in rows if j not in failed and j not in aside]

    def settle(self) -> None:
        """Between windows (no thread is writing): a colour image makes the array colour from then on, and too
        much put aside fixes the size from the files' headers."""
        if self.out.shape[3] == 1 and any(a.ndim == 3 for a in self.aside.values()):
            self.out = _remake(self.out, self.inside, self.out.shape[1:3], 3)
            self._place_fitting()
        if not self.resize_all and sum(a.nbytes for a in self.aside.values()) > ASIDE_BYTES:
            self._fix_size()

    def _place_fitting(self) -> None:
        for j in [j for j, a in self.aside.items() if _fits(a, self.out)]:
            a = self.aside.pop(j)
            self.out[j] = a[..., None] if a.ndim == 2 else a
            self.inside.append(j)

    def _fix_size(self) -> None:
        """Mixed sizes: the most common size from every readable file's header; what is decoded is remade at it,
        and the rest is resized as it is decoded."""
        sizes = [probe_size(p) for p in self.paths]
        size = most_common_size([s for s in sizes if s is not None])
        if size != tuple(self.out.shape[1:3]):
            self.resized.update(self.inside)
            self.out = _remake(self.out, self.inside, size, self.out.shape[3])
        self._finish_aside(size)
        self.resize_all = True

    def _finish_aside(self, size: tuple) -> None:
        for j, a in sorted(self.aside.items()):
            if a.shape[:2] != size:
                a = resize(a, size)
                self.resized.add(j)
            self.out[j] = np.reshape(a, (*size, -1))
            self.inside.append(j)
        self.aside.clear()

    def finish(self) -> tuple:
        """(images, kept rows, resized rows) once every chunk is in."""
        kept = [j for j in range(len(self.paths)) if j not in self.failed]
        if not kept:
            return None, [], []
        if not self.resize_all:  # the most common size of the images decoded (ties: the one seen first)
            sizes = Counter({tuple(self.out.shape[1:3]): len(kept) - len(self.aside)})
            sizes.update(self.aside[j].shape[:2] for j in sorted(self.aside))
            size = most_common_size(sizes)
            if size != tuple(self.out.shape[1:3]):
                self.resized.update(self.inside)
                self.out = _remake(self.out, self.inside, size, self.out.shape[3])
            self._finish_aside(size)
        out = self.out
        for n, j in enumerate(kept):  # close up the rows of files that failed (none, usually)
            if n != j:
                out[n] = out[j]
        return (out if len(kept) == len(out) else out[:len(kept)]), kept, sorted(self.resized)


def read_images(paths: Sequence[Path], progress: Optional[ProgressCallback] = None, *,
                threads: Optional[int] = None) -> tuple:
    """Decode ``paths`` in order into one (n, H, W, C) uint8 array: (images, or None when none could be read,
    kept positions into ``paths``, (path, reason) of every file skipped, in path order).

    C is 1 when every image is grayscale, else 3 (grayscale images are repeated over the channels). Images of
    another size than the most common one (ties: the one seen first) are resized to it, with a warning. The array
    is in memory, or in a memory-mapped temporary file when larger than :func:`~flare_core.large_arrays.ram_limit`. ``threads``
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
    state = _Decoding(paths, first, failed)
    threads = threads or decode_threads(first.shape[0] * first.shape[1])
    window = DECODE_CHUNK * threads * 4  # files decoded between two looks at what was put aside
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for w in range(0, len(paths), window):
            rows = range(w, min(w + window, len(paths)))
            starts = range(rows.start, rows.stop, DECODE_CHUNK)
            out, resize_all = state.out, state.resize_all
            results = list(pool.map(lambda st: _decode_chunk(out, paths, st, resize_all), starts))
            for st, result in zip(starts, results):  # every chunk of the window is done: nothing writes now
                state.add(*result, range(st, min(st + DECODE_CHUNK, len(paths))))
            state.settle()
            progress("load images", rows.stop, len(paths))
    images, kept, resized = state.finish()
    skipped = [(str(paths[i]), r) for i, r in sorted(failed.items())]
    if images is None:
        return None, [], skipped
    if resized:
        h, w = images.shape[1:3]
        logger.warning("%d of %d images are not %dx%d (the most common size) and were resized, e.g. %s.",
                       len(resized), len(kept), h, w, paths[resized[0]])
    return images, kept, skipped


def warn_skipped(skipped: Sequence[tuple], where: str) -> None:
    """Log one warning that summarises the files that could not be read."""
    if skipped:
        logger.warning(
            "Skipped %d unreadable file(s) in %s, e.g. %s (%s).", len(skipped), where, skipped[0][0], skipped[0][1]
        )
