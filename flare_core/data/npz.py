"""``.npz`` arrays: ``x`` (N, H, W[, C]) uint8 and ``y`` labels; optional ``classes`` and ``sources``."""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from flare_core.dataset import ImageDataset, numbered_class_names
from flare_core.errors import DataError

logger = logging.getLogger(__name__)

_X_KEYS = ("x", "images")
_Y_KEYS = ("y", "labels")


def _pick(arrays: dict, keys: tuple, path: Path, what: str) -> np.ndarray:
    for k in keys:
        if k in arrays:
            return arrays[k]
    raise DataError(f"{path} has no '{keys[0]}' array ({what}); found {sorted(arrays) or 'nothing'}.")


def read_npz(path: Path) -> dict:
    """All arrays of an .npz file, loaded without pickle."""
    try:
        with open(path, "rb") as f:  # our own handle, closed even when numpy fails half-way
            head = f.read(6)
            f.seek(0)
            if not head.startswith((b"PK", b"\x93NUMPY")):  # neither a zip (.npz) nor a single array (.npy)
                raise DataError(f"{path} is not an .npz file (numpy's zip of arrays); check that it is complete and "
                                "was saved with numpy.savez(path, x=..., y=...).")
            z = np.load(f, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise DataError(f"{path} is a single array, not an .npz archive; save it with numpy.savez(path, x=..., y=...).")
            with z:
                return {k: z[k] for k in z.files}
    except DataError:
        raise
    except ValueError as exc:  # pickled content (object arrays, or not numpy data at all) is refused
        raise DataError(
            f"{path} is not a plain .npz of numeric or string arrays ({exc}); object arrays are refused for safety."
        ) from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"Could not read {path} as an .npz file ({exc}); it may be truncated.") from exc


def check_images(x: np.ndarray, path: Path) -> np.ndarray:
    """Validate ``x`` and return it as (N, H, W, C) uint8 (channel-first input is transposed)."""
    if x.dtype != np.uint8:
        raise DataError(f"'x' in {path} has dtype {x.dtype}; convert it to uint8 values 0..255.")
    if x.ndim == 4 and x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):
        logger.info("'x' in %s looks channel-first %s; transposing to (N, H, W, C).", path, x.shape)
        x = x.transpose(0, 2, 3, 1)
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
        raise DataError(f"'x' in {path} has shape {x.shape}; expected (N, H, W) or (N, H, W, 1|3).")
    return np.ascontiguousarray(x)


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
    """Load an .npz dataset with ``allow_pickle=False``."""
    path = Path(path).absolute()
    arrays = read_npz(path)
    x = check_images(_pick(arrays, _X_KEYS, path, "the images"), path)
    y = check_labels(_pick(arrays, _Y_KEYS, path, "the labels"), len(x), path)
    if len(y) == 0:
        raise DataError(f"{path} holds no images.")
    if "classes" in arrays:
        classes = [str(c) for c in np.asarray(arrays["classes"]).reshape(-1)]
        if int(y.max()) >= len(classes):
            raise DataError(f"{path} names {len(classes)} classes but has labels up to {int(y.max())}.")
    else:
        classes = numbered_class_names(int(y.max()), str(path))
    if "sources" in arrays:
        sources = [str(s) for s in np.asarray(arrays["sources"]).reshape(-1)]
        if len(sources) != len(y):
            raise DataError(f"{path} has {len(sources)} sources for {len(y)} images; they must match one to one.")
    else:
        sources = [f"{path}#{i}" for i in range(len(y))]
    logger.info("Loaded %d images in %d classes from %s", len(y), len(classes), path)
    return ImageDataset(x, y, classes, sources, format="npz", root=str(path))
