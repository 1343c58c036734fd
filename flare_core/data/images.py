"""Decode image files with Pillow into one (N, H, W, C) uint8 array, skipping unreadable files."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

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


def most_common_size(arrays: Sequence[np.ndarray]) -> tuple:
    """(H, W) shared by most arrays; ties go to the size seen first."""
    return Counter(a.shape[:2] for a in arrays).most_common(1)[0][0]


def resize(arr: np.ndarray, size: tuple) -> np.ndarray:
    """Resize an (H, W[, 3]) uint8 array to (h, w) = size with bilinear filtering."""
    h, w = size
    return np.asarray(Image.fromarray(arr).resize((w, h), Image.BILINEAR), dtype=np.uint8)


def stack_images(arrays: Sequence[np.ndarray], sources: Sequence[str]) -> np.ndarray:
    """Stack decoded images into (N, H, W, C): common mode ('L' if all grayscale) and the most common size."""
    colour = any(a.ndim == 3 for a in arrays)
    size = most_common_size(arrays)
    resized = [s for a, s in zip(arrays, sources) if a.shape[:2] != size]
    if resized:
        logger.warning(
            "%d of %d images are not %dx%d (the most common size) and were resized, e.g. %s.",
            len(resized), len(arrays), size[0], size[1], resized[0],
        )
    channels = 3 if colour else 1
    out = np.empty((len(arrays), size[0], size[1], channels), dtype=np.uint8)
    for i, a in enumerate(arrays):
        if a.shape[:2] != size:
            a = resize(a, size)
        out[i] = a[..., None] if a.ndim == 2 else a
    return out


def read_images(
    paths: Sequence[Path], progress: Optional[ProgressCallback] = None
) -> tuple:
    """Decode ``paths`` in order; returns (arrays, kept positions, skipped (path, reason) list)."""
    progress = ensure_progress(progress)
    arrays, kept, skipped = [], [], []
    total = len(paths)
    for i, p in enumerate(paths):
        try:
            arrays.append(decode_image(p))
            kept.append(i)
        except Exception as exc:  # one bad file must never stop the whole load
            reason = f"{type(exc).__name__}: {exc}"
            logger.debug("Skipping unreadable image %s (%s)", p, reason)
            skipped.append((str(p), reason))
        if (i + 1) % 256 == 0 or i + 1 == total:
            progress("load images", i + 1, total)
    return arrays, kept, skipped


def warn_skipped(skipped: Sequence[tuple], where: str) -> None:
    """Log one warning that summarises the files that could not be read."""
    if skipped:
        logger.warning(
            "Skipped %d unreadable file(s) in %s, e.g. %s (%s).", len(skipped), where, skipped[0][0], skipped[0][1]
        )
