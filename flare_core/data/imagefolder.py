"""ImageFolder trees: root/<class>/<image>, classes sorted by name, samples by relative path."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from flare_core.data.images import image_extensions, is_candidate_file, read_images, warn_skipped
from flare_core.dataset import ImageDataset
from flare_core.errors import DataError
from flare_core.progress import ProgressCallback

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "test", "val", "valid", "validation")


#: folders that archivers add beside the data and that never hold a class (macOS's zip adds ``__MACOSX``)
NOT_CLASSES = ("__MACOSX",)


def _class_dirs(root: Path) -> list:
    return sorted((d for d in root.iterdir()
                   if d.is_dir() and not d.name.startswith(".") and d.name not in NOT_CLASSES), key=lambda d: d.name)


def _has_files(folder: Path) -> bool:
    return any(p.is_file() and is_candidate_file(p) for p in folder.rglob("*"))


def looks_like_imagefolder(root: Path) -> bool:
    """True when ``root`` holds at least one sub-folder that contains files."""
    return root.is_dir() and any(_has_files(d) for d in _class_dirs(root))


def has_splits(root: Path) -> bool:
    """True when ``root`` holds train/ and test/ (or val/) folders that are ImageFolders themselves."""
    names = {d.name.lower(): d for d in _class_dirs(root)}
    if "train" not in names or not ({"test", "val", "valid", "validation"} & names.keys()):
        return False
    return all(looks_like_imagefolder(d) for n, d in names.items() if n in SPLIT_NAMES)


def resolve_split(root: Path, split: str) -> Path:
    """The folder to load: ``root/<split>`` when ``root`` holds split folders, else ``root``."""
    if not has_splits(root):
        if split != "train":
            logger.warning("%s has no train/test split folders; split '%s' is ignored and the whole tree is loaded.", root, split)
        return root
    names = {d.name.lower(): d for d in _class_dirs(root)}
    if split.lower() in names:
        return names[split.lower()]
    available = ", ".join(sorted(n for n in names if n in SPLIT_NAMES))
    raise DataError(f"{root} has no '{split}' split folder; choose one of: {available}.")


def list_samples(root: Path) -> tuple:
    """(classes, [(class index, path)] sorted by relative path, [(path, reason)] for non-image files)."""
    exts = image_extensions()
    classes, samples, ignored = [], [], []
    ignored += [(str(p), "not inside a class folder (root/<class name>/<image>)")
                for p in sorted(root.iterdir()) if p.is_file() and is_candidate_file(p) and p.suffix.lower() in exts]
    for label, d in enumerate(_class_dirs(root)):
        classes.append(d.name)
        for p in sorted(d.rglob("*"), key=lambda q: q.relative_to(root).as_posix()):
            if not p.is_file() or not is_candidate_file(p):
                continue
            if p.suffix.lower() in exts:
                samples.append((label, p))
            else:
                ignored.append((str(p), f"not an image file type ('{p.suffix or 'no extension'}')"))
    return classes, samples, ignored


def load_imagefolder(
    path: str | Path, *, split: str = "train", progress: Optional[ProgressCallback] = None
) -> ImageDataset:
    """Load an ImageFolder tree; unreadable files are skipped and listed in ``skipped``."""
    top = Path(path).absolute()
    if not top.is_dir():
        raise DataError(f"{top} is not a folder; an ImageFolder dataset is a folder of class folders.")
    root = resolve_split(top, split)
    classes, samples, ignored = list_samples(root)
    if not classes:
        raise DataError(f"{root} has no class folders; expected root/<class name>/<image files>.")
    images, kept, skipped = read_images([p for _, p in samples], progress)
    skipped = ignored + skipped
    warn_skipped(skipped, str(root))
    if images is None:
        raise DataError(f"No readable images were found in {root}; expected root/<class name>/<image files>.")
    labels = np.array([samples[i][0] for i in kept], dtype=np.int64)
    counts = np.bincount(labels, minlength=len(classes))
    empty = [classes[k] for k in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(
            f"Class folder(s) {', '.join(repr(c) for c in empty)} in {root} contain no readable images; "
            "add images or remove the folder."
        )
    sources = [str(samples[i][1]) for i in kept]
    logger.info("Loaded %d images in %d classes from %s", len(labels), len(classes), root)
    return ImageDataset(images, labels, classes, sources, format="imagefolder", root=str(top), skipped=skipped)
