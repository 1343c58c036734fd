"""Dataset loading and writing: ImageFolder, CSV manifest, CIFAR, IDX, .npz and built-in datasets.

``load_dataset(path)`` recognises the format from the path; ``format=`` overrides it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from flare_core.data.builtin import (
    fashion_mnist_available,
    load_builtin,
    load_digits_dataset,
    load_fashion_mnist,
)
from flare_core.data.cifar import load_cifar
from flare_core.data.csv_manifest import load_csv
from flare_core.data.detect import FORMATS, detect_format, resolve_file
from flare_core.data.idx import load_idx
from flare_core.data.imagefolder import load_imagefolder
from flare_core.data.lab import lab_ground_truth, lab_part, lab_poisoned_test
from flare_core.data.npz import load_npz
from flare_core.data.writers import export_subset, save_imagefolder, save_npz
from flare_core.dataset import ImageDataset
from flare_core.errors import DataError
from flare_core.progress import ProgressCallback

logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "detect_format",
    "load_dataset",
    "load_test_set",
    "load_fashion_mnist",
    "load_digits_dataset",
    "fashion_mnist_available",
    "save_npz",
    "save_imagefolder",
    "export_subset",
    "check_num_classes",
    "lab_ground_truth",
    "lab_poisoned_test",
]


def check_num_classes(dataset: ImageDataset, num_classes: int) -> None:
    """DataError when the data has a label the model cannot output (label >= ``num_classes``)."""
    top = int(dataset.labels.max()) if len(dataset) else -1
    if top >= num_classes:
        raise DataError(
            f"The model has {num_classes} outputs but the data has labels up to {top} "
            f"({dataset.num_classes} classes); use a model trained on these classes or the matching dataset."
        )


def _load(path: str | Path, fmt: str, split: str, progress: Optional[ProgressCallback]) -> ImageDataset:
    if fmt == "builtin":
        return load_builtin(str(path), split)
    p = Path(path).expanduser().absolute()
    if not p.exists():
        raise DataError(f"The dataset path {p} does not exist; check the spelling or pass the folder or file to load.")
    if fmt == "lab":
        part = lab_part(p, split)
        return _load(part, detect_format(part), "train", progress)
    p = resolve_file(p, fmt)
    if fmt == "imagefolder":
        return load_imagefolder(p, split=split, progress=progress)
    if fmt == "csv":
        return load_csv(p, progress=progress)
    if fmt == "cifar":
        return load_cifar(p, split=split)
    if fmt == "idx":
        return load_idx(p, split=split)
    return load_npz(p)


def load_dataset(
    path: str | Path,
    format: Optional[str] = None,
    *,
    split: str = "train",
    num_classes: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
) -> ImageDataset:
    """Load a dataset from ``path`` (format recognised from the path unless ``format`` is given).

    ``split`` picks train/test where the input holds both; ``num_classes`` (the model's outputs) is
    checked against the labels. Unreadable image files are skipped and listed in ``skipped``.
    """
    if format is not None:
        format = format.lower()
        if format not in FORMATS + ("builtin",):
            raise DataError(f"Unknown dataset format '{format}'; use one of: {', '.join(FORMATS)}.")
    fmt = format or detect_format(path)
    dataset = _load(path, fmt, split, progress)
    if num_classes is not None:
        check_num_classes(dataset, num_classes)
    return dataset


def load_test_set(path: str | Path, format: Optional[str] = None) -> ImageDataset:
    """A test set: the test split of ``path`` where it holds both (a built-in, CIFAR batches, MNIST IDX files, an
    ImageFolder with train/ and test/ folders), else the whole of it (a folder, CSV or ``.npz`` of test images)."""
    from flare_core.data.imagefolder import has_splits

    fmt = (format or detect_format(path)).lower()
    both = fmt in ("builtin", "cifar", "idx", "lab") or (fmt == "imagefolder" and Path(path).expanduser().is_dir()
                                                   and has_splits(Path(path).expanduser()))
    return load_dataset(path, fmt, split="test" if both else "train")
