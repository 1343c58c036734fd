"""CIFAR-10/100 "python version" batch folders, read with a pickle loader that only rebuilds numpy arrays."""
from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path

import numpy as np

from flare_core.dataset import ImageDataset, numbered_class_names
from flare_core.errors import DataError

logger = logging.getLogger(__name__)

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

# The only globals a CIFAR batch needs: rebuilding plain numpy arrays.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}

CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST = ["test_batch"]
CIFAR10_META = "batches.meta"
CIFAR100_META = "meta"


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except the numpy array constructors in ``_ALLOWED``."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load global '{module}.{name}'") from None


def safe_unpickle(path: Path):
    """Load a pickle that may only contain builtins and numpy arrays; DataError for anything else."""
    try:
        data = path.read_bytes()
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except OSError as exc:
        raise DataError(f"Could not read {path} ({exc}).") from exc
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, TypeError ... from a bad or hostile file
        raise DataError(
            f"{path} is not a plain CIFAR batch file and was refused ({type(exc).__name__}: {exc}); "
            "use the original CIFAR 'python version' files."
        ) from exc


def _get(d: dict, *keys: str):
    """The value under the first key present, as bytes (Python 2 pickles) or str."""
    for k in keys:
        for key in (k.encode(), k):
            if key in d:
                return d[key]
    return None


def _names(values) -> list:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def layout(folder: Path, split: str) -> tuple:
    """(batch files for ``split``, meta file or None) for a CIFAR-10 or CIFAR-100 folder."""
    if split not in ("train", "test"):
        raise DataError(f"Unknown split '{split}' for a CIFAR folder; use 'train' or 'test'.")
    if (folder / "data_batch_1").is_file() or (folder / "test_batch").is_file():
        names = CIFAR10_TRAIN if split == "train" else CIFAR10_TEST
        meta = folder / CIFAR10_META
    else:
        names = [split]
        meta = folder / CIFAR100_META
    files = [folder / n for n in names if (folder / n).is_file()]
    if not files:
        raise DataError(f"{folder} has no CIFAR '{split}' batch files (expected {', '.join(names)}).")
    return files, (meta if meta.is_file() else None)


def is_cifar_folder(folder: Path) -> bool:
    """True for a CIFAR-10 (data_batch_*, test_batch, batches.meta) or CIFAR-100 (meta + train/test) folder."""
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    return bool(names & {"data_batch_1", "test_batch", CIFAR10_META}) or (
        (folder / CIFAR100_META).is_file() and any((folder / n).is_file() for n in ("train", "test"))
    )


def read_batch(path: Path) -> tuple:
    """(images (n, 32, 32, 3) uint8, labels (n,) int64) of one batch file."""
    d = safe_unpickle(path)
    if not isinstance(d, dict):
        raise DataError(f"{path} is not a CIFAR batch (expected a dict with 'data' and 'labels').")
    data = _get(d, "data")
    labels = _get(d, "labels", "fine_labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"{path} is not a CIFAR batch (expected a dict with 'data' and 'labels').")
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{path} is malformed: expected an (N, 3072) uint8 'data' array and N labels.")
    if labels.dtype.kind not in "iu" or (len(labels) and labels.min() < 0):
        raise DataError(f"{path} is malformed: labels must be non-negative integers.")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def read_class_names(meta: Path | None) -> list | None:
    if meta is None:
        return None
    d = safe_unpickle(meta)
    names = _get(d, "label_names", "fine_label_names") if isinstance(d, dict) else None
    return _names(names) if names is not None else None


def load_cifar(path: str | Path, *, split: str = "train") -> ImageDataset:
    """Load a CIFAR-10 or CIFAR-100 python-version folder (``split`` 'train' or 'test')."""
    folder = Path(path).absolute()
    if folder.is_file():
        files = [folder]  # one batch file: its folder's meta file names the classes
        meta = next((m for m in (folder.parent / CIFAR10_META, folder.parent / CIFAR100_META) if m.is_file()), None)
    else:
        files, meta = layout(folder, split)
    images, labels, sources = [], [], []
    for f in files:
        x, y = read_batch(f)
        images.append(x)
        labels.append(y)
        sources += [f"{f}#{i}" for i in range(len(y))]
    images, labels = np.concatenate(images), np.concatenate(labels)
    if len(labels) == 0:
        raise DataError(f"The CIFAR files in {folder} hold no images.")
    classes = read_class_names(meta) or numbered_class_names(int(labels.max()), str(folder))
    if labels.max() >= len(classes):
        raise DataError(f"{folder} has labels up to {labels.max()} but its meta file names only {len(classes)} classes.")
    logger.info("Loaded %d CIFAR images in %d classes from %s", len(labels), len(classes), folder)
    return ImageDataset(images, labels, classes, sources, format="cifar", root=str(folder))
