"""Write datasets: .npz, PNG ImageFolder, and the kept samples of a dataset in its own layout.

Every writer is atomic (temporary file or folder beside the target, then ``os.replace``) and never
modifies the source data: output inside the source folder, or over it, is refused.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from flare_core.atomic import atomic_dir, atomic_path, check_replaceable
from flare_core.dataset import ImageDataset
from flare_core.errors import DataError
from flare_core.large_arrays import ram_limit
from flare_core.progress import ProgressCallback, ensure_progress

logger = logging.getLogger(__name__)

FILE_LAYOUTS = ("imagefolder", "csv")
ARRAY_LAYOUTS = ("npz", "idx", "cifar", "builtin")
MANIFEST_NAME = "manifest.csv"
NPZ_NAME = "data.npz"
#: written into every export (a hidden file, which image-folder loaders skip): what FLARE wrote, so that
#: ``overwrite`` replaces an earlier export and nothing else
EXPORT_MARKER = ".flare-export.json"


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def source_folder(dataset: ImageDataset) -> Optional[Path]:
    """The folder the dataset's files live in, or None for built-in data / array files."""
    if not dataset.root or dataset.root.startswith("builtin:"):
        return None
    root = _real(dataset.root)
    if root.is_dir():
        return root
    return root.parent if dataset.format in ("csv", "idx", "cifar") else None  # a loose .npz is not a folder


def _source_files(dataset: ImageDataset) -> list:
    files = [_real(dataset.root)] if dataset.root and not dataset.root.startswith("builtin:") else []
    if dataset.format in FILE_LAYOUTS:
        files += [_real(s) for s in dataset.sources]
    return files


def check_no_overlap(dataset: ImageDataset, out: Path, *, other_inputs: Optional[Mapping[str, Optional[str]]] = None
                     ) -> None:
    """DataError when writing (or replacing) the folder ``out`` could touch an input: ``out`` lies inside the
    dataset's folder, or holds the dataset or one of ``other_inputs`` (name -> path, e.g. the model file)."""
    real_out = _real(out)
    folder = source_folder(dataset)
    if folder is not None and real_out.is_relative_to(folder):
        raise DataError(f"The output folder {out} is inside the dataset folder {folder}; choose a folder outside it so "
                        "the source data stays untouched.")
    for f in _source_files(dataset):
        if f.is_relative_to(real_out):
            raise DataError(f"The output folder {out} contains the source data ({f}); choose another folder.")
    for name, path in (other_inputs or {}).items():
        if path and not str(path).startswith("builtin:") and _real(path).is_relative_to(real_out):
            raise DataError(f"The output folder {out} contains the {name} ({_real(path)}); choose another folder.")


def check_target(dataset: ImageDataset, out: Path, *, overwrite: bool) -> None:
    """DataError when writing the export ``out`` could touch the source data or replace a folder that is not an
    earlier export (which holds :data:`EXPORT_MARKER`)."""
    check_no_overlap(dataset, out)
    check_replaceable(out, overwrite=overwrite, marker=EXPORT_MARKER, what="export", error=DataError,
                      hint="pass overwrite=True (CLI: --overwrite)")


def class_dir_names(classes: Sequence[str]) -> list:
    """Folder names for class names: path separators become '_', no hidden or empty names; DataError on clashes."""
    names = []
    for k, c in enumerate(classes):
        name = str(c).replace("/", "_").replace("\\", "_").replace("\0", "_").strip()
        if name in ("", ".", ".."):
            name = f"class_{k}"
        if name.startswith("."):
            name = "_" + name[1:]
        names.append(name)
    if len(set(names)) != len(names):
        raise DataError(f"Class names {list(classes)} do not map to distinct folder names; rename the classes.")
    return names


def check_indices(indices, n: int) -> np.ndarray:
    """Validate sample indices (or a boolean mask of length n) and return them as int64."""
    idx = np.asarray(indices)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise DataError(f"A keep mask must have one entry per sample ({n}), got shape {idx.shape}.")
        idx = np.flatnonzero(idx)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise DataError("Sample indices must be a 1-D list of integers.")
    idx = idx.astype(np.int64)
    if idx.size == 0:
        raise DataError("There are no samples to export; keep at least one sample.")
    if idx.min() < 0 or idx.max() >= n:
        raise DataError(f"Sample indices must be in 0..{n - 1}, got {int(idx.min())}..{int(idx.max())}.")
    if len(np.unique(idx)) != len(idx):
        raise DataError("Sample indices contain duplicates; give each sample once.")
    return idx


def _write_npz(dataset: ImageDataset, path: Path) -> None:
    """x, y, classes and sources into the new file ``path``, streamed (never a second copy of the images in memory).

    Compressed, except images past ``FLARE_IMAGE_RAM_MB``: those are stored uncompressed, so that loading the file
    again maps them from it instead of reading them whole (:mod:`flare_core.data.npy_member`)."""
    large = dataset.images.nbytes > ram_limit()
    if large:
        logger.info("Writing the %.1f GB of images uncompressed, so that they load again memory-mapped.",
                    dataset.images.nbytes / 2**30)
    with open(path, "wb") as f:
        (np.savez if large else np.savez_compressed)(
            f,
            x=dataset.images,
            y=dataset.labels.astype(np.int64),
            classes=np.array([str(c) for c in dataset.classes], dtype=str),
            sources=np.array([str(s) for s in dataset.sources], dtype=str),
        )


def save_npz(dataset: ImageDataset, path: str | Path) -> Path:
    """Write x, y, classes and sources to ``path`` atomically; refuses to overwrite the source data."""
    path = Path(path).expanduser().absolute()
    if any(_real(path) == f for f in _source_files(dataset)):
        raise DataError(f"{path} is the dataset's own source file; write to another path.")
    with atomic_path(path, suffix=".npz") as tmp:
        _write_npz(dataset, tmp)
    logger.info("Wrote %d samples to %s", len(dataset), path)
    return path


def _write_marker(folder: Path, dataset: ImageDataset, n: int) -> None:
    """``folder/EXPORT_MARKER``: that FLARE wrote this folder, from which dataset, how many samples."""
    info = {"written_by": "FLARE Workbench", "source": dataset.root, "format": dataset.format, "samples": int(n),
            "of": len(dataset)}
    (folder / EXPORT_MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _write_png(image: np.ndarray, path: Path) -> None:
    arr = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(np.ascontiguousarray(arr)).save(path, format="PNG")  # 2-D -> L, (H, W, 3) -> RGB


def save_imagefolder(
    dataset: ImageDataset, out_dir: str | Path, *, overwrite: bool = False, progress: Optional[ProgressCallback] = None
) -> Path:
    """Write every image as lossless PNG ``out_dir/<class>/<index:06d>.png`` (atomic; index = position)."""
    out = Path(out_dir).expanduser().absolute()
    check_target(dataset, out, overwrite=overwrite)
    names = class_dir_names(dataset.classes)
    if sorted(names) != names:
        logger.warning(
            "Class folders sort differently from the class order %s; reloading %s gives different label numbers.",
            dataset.classes, out,
        )
    progress = ensure_progress(progress)
    with atomic_dir(out, overwrite=overwrite, marker=EXPORT_MARKER, what="export") as tmp:
        _write_marker(tmp, dataset, len(dataset))
        for k in np.unique(dataset.labels):
            (tmp / names[k]).mkdir()
        for i, (img, label) in enumerate(zip(dataset.images, dataset.labels)):
            _write_png(img, tmp / names[label] / f"{i:06d}.png")
            if (i + 1) % 256 == 0 or i + 1 == len(dataset):
                progress("write images", i + 1, len(dataset))
    logger.info("Wrote %d PNG images to %s", len(dataset), out)
    return out


def unique_name(name: str, used: set) -> str:
    """``name``, or ``stem_1.ext``, ``stem_2.ext``... the first not in ``used`` (which is updated)."""
    candidate, n = name, 0
    stem, suffix = os.path.splitext(name)
    while candidate in used:
        n += 1
        candidate = f"{stem}_{n}{suffix}"
    used.add(candidate)
    return candidate


def _copy_files(dataset: ImageDataset, idx: np.ndarray, tmp: Path, progress: ProgressCallback) -> list:
    """Copy the kept source files byte for byte into tmp/<class>/<name>; returns (relative path, class) rows."""
    names = class_dir_names(dataset.classes)
    used: dict = {}
    rows = []
    for j, i in enumerate(idx):
        src = Path(dataset.sources[i])
        if not src.is_file():
            raise DataError(f"The source file {src} no longer exists; reload the dataset before exporting.")
        label = int(dataset.labels[i])
        folder = tmp / names[label]
        folder.mkdir(exist_ok=True)
        name = unique_name(src.name, used.setdefault(label, set()))
        shutil.copyfile(src, folder / name)
        rows.append((f"{names[label]}/{name}", str(dataset.classes[label])))
        if (j + 1) % 256 == 0 or j + 1 == len(idx):
            progress("export", j + 1, len(idx))
    return rows


def _write_manifest(rows: list, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)


def _warn_dropped_classes(dataset: ImageDataset, idx: np.ndarray) -> None:
    counts = np.bincount(dataset.labels[idx], minlength=dataset.num_classes)
    gone = [dataset.classes[k] for k in np.flatnonzero(counts == 0)]
    if gone:
        logger.warning("No samples of class(es) %s are kept; the exported data has fewer classes.", gone)


def export_subset(
    dataset: ImageDataset,
    indices,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> Path:
    """Write the samples ``indices`` (or a boolean keep mask) to ``out_dir`` in the input's own layout.

    'imagefolder' and 'csv' inputs: byte-for-byte copies of the original files in out_dir/<class>/<file name>
    (clashing names get a ``_1``, ``_2``... suffix), plus out_dir/manifest.csv for 'csv'. Array inputs:
    out_dir/data.npz. Returns the path to load the result from: out_dir, out_dir/manifest.csv or
    out_dir/data.npz. Atomic; refuses output inside the source folder or over a non-empty folder.
    """
    out = Path(out_dir).expanduser().absolute()
    if dataset.format not in FILE_LAYOUTS + ARRAY_LAYOUTS:
        raise DataError(f"Cannot export a dataset of unknown format '{dataset.format}'.")
    idx = check_indices(indices, len(dataset))
    check_target(dataset, out, overwrite=overwrite)
    _warn_dropped_classes(dataset, idx)
    progress = ensure_progress(progress)
    with atomic_dir(out, overwrite=overwrite, marker=EXPORT_MARKER, what="export") as tmp:
        _write_marker(tmp, dataset, len(idx))
        if dataset.format in FILE_LAYOUTS:
            rows = _copy_files(dataset, idx, tmp, progress)
            if dataset.format == "csv":
                _write_manifest(rows, tmp / MANIFEST_NAME)
        else:
            _write_npz(dataset.subset(idx), tmp / NPZ_NAME)
            progress("export", len(idx), len(idx))
    logger.info("Exported %d of %d samples to %s", len(idx), len(dataset), out)
    if dataset.format == "imagefolder":
        return out
    return out / (MANIFEST_NAME if dataset.format == "csv" else NPZ_NAME)
