"""Recognise a dataset's format from its path."""
from __future__ import annotations

from pathlib import Path

from flare_core.data.builtin import BUILTIN_PREFIX
from flare_core.data.cifar import is_cifar_folder
from flare_core.data.idx import is_idx_path
from flare_core.data.images import image_extensions, is_candidate_file
from flare_core.data.imagefolder import looks_like_imagefolder
from flare_core.data.lab import is_lab_folder
from flare_core.errors import DataError

FORMATS = ("imagefolder", "csv", "cifar", "idx", "npz", "lab")
SUPPORTED = (
    "an ImageFolder tree (root/<class>/<image>), a CSV manifest (path,label), a CIFAR python batch folder, "
    "MNIST IDX files, an .npz with x and y, a backdoor-lab folder (flare attack's output), "
    "or builtin:fashion-mnist / builtin:digits"
)
MANIFEST_NAME = "manifest.csv"
_CIFAR_FILE_NAMES = {"test_batch", "train", "test"} | {f"data_batch_{i}" for i in range(1, 6)}


def unrecognised(path: Path) -> DataError:
    return DataError(
        f"Could not recognise the dataset format of {path}; supported are {SUPPORTED}; "
        f"choose the format explicitly (CLI: --format {'|'.join(FORMATS)}; the dashboard's Format box)."
    )


def detect_file(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix == ".csv":
        return "csv"
    if is_idx_path(path):
        return "idx"
    if path.name in _CIFAR_FILE_NAMES and is_cifar_folder(path.parent):
        return "cifar"
    raise unrecognised(path)


def _unlabelled_images(path: Path) -> DataError:
    return DataError(
        f"{path} holds image files but no class folders, so the images have no labels; put each class's images "
        "in a folder named after the class (root/<class name>/<image>), or list them in a manifest.csv "
        "(path,label)."
    )


def detect_dir(path: Path) -> str:
    if is_lab_folder(path):
        return "lab"
    if is_cifar_folder(path):
        return "cifar"
    if is_idx_path(path):
        return "idx"
    if (path / MANIFEST_NAME).is_file():
        return "csv"
    if looks_like_imagefolder(path):
        return "imagefolder"
    csvs = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".csv"]
    if len(csvs) == 1:
        return "csv"
    npzs = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".npz"]
    if len(npzs) == 1:
        return "npz"
    exts = image_extensions()
    if any(p.is_file() and is_candidate_file(p) and p.suffix.lower() in exts for p in path.iterdir()):
        raise _unlabelled_images(path)
    raise unrecognised(path)


def detect_format(path: str | Path) -> str:
    """'builtin', 'imagefolder', 'csv', 'cifar', 'idx' or 'npz'; DataError when missing or unrecognised."""
    if str(path).lower().startswith(BUILTIN_PREFIX):
        return "builtin"
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"The dataset path {p} does not exist; check the spelling or pass the folder or file to load.")
    return detect_file(p) if p.is_file() else detect_dir(p)


def resolve_file(path: Path, fmt: str) -> Path:
    """For 'csv'/'npz' given a folder, the single CSV (or manifest.csv) / .npz inside it."""
    if not path.is_dir() or fmt not in ("csv", "npz"):
        return path
    if fmt == "csv" and (path / MANIFEST_NAME).is_file():
        return path / MANIFEST_NAME
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == f".{fmt}")
    if len(found) != 1:
        raise DataError(f"{path} holds {len(found)} .{fmt} files; pass the one to load.")
    return found[0]
