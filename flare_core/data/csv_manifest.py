"""CSV manifests: a ``path,label`` header, paths relative to the CSV, labels integers or class names."""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from flare_core.data.images import read_images, warn_skipped
from flare_core.dataset import ImageDataset, numbered_class_names
from flare_core.errors import DataError
from flare_core.progress import ProgressCallback

logger = logging.getLogger(__name__)


def read_manifest(csv_path: Path) -> list:
    """[(line number, path string, label string)] from a CSV with ``path`` and ``label`` columns."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"Could not read the CSV manifest {csv_path} ({exc}); save it as UTF-8 text.") from exc
    if not rows:
        raise DataError(f"The CSV manifest {csv_path} is empty; it needs a 'path,label' header and one row per image.")
    header = [h.strip().lower() for h in rows[0]]
    if "path" not in header or "label" not in header:
        raise DataError(f"The CSV manifest {csv_path} must start with a 'path,label' header, found {rows[0]!r}.")
    ip, il = header.index("path"), header.index("label")
    out = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"Line {lineno} of {csv_path} has {len(row)} fields but the header has {len(header)}.")
        p, lab = row[ip].strip(), row[il].strip()
        if not p or not lab:
            raise DataError(f"Line {lineno} of {csv_path} has an empty path or label.")
        out.append((lineno, p, lab))
    return out


def _whole_number(text: str) -> int:
    """'3' -> 3, and '3.0' -> 3 (spreadsheets and pandas write integer labels so); ValueError otherwise."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise
        return int(value)


def _image_path(csv_dir: Path, text: str) -> Path:
    """The absolute path of a manifest row's file: relative to the CSV's folder; a path written on Windows
    (``imgs\\0.png``) is read with ``/`` when no file has the name as written."""
    p = (csv_dir / text).absolute()
    if "\\" in text and not p.exists():
        alt = (csv_dir / text.replace("\\", "/")).absolute()
        if alt.exists():
            return alt
    return p


def parse_labels(raw: list, csv_path: Path) -> tuple:
    """(labels, classes, named): integer labels give classes "0".."max", names give sorted names."""
    try:
        ints = [_whole_number(r) for r in raw]
    except ValueError:
        classes = sorted(set(raw))
        index = {c: k for k, c in enumerate(classes)}
        return np.array([index[r] for r in raw], dtype=np.int64), classes, True
    if min(ints) < 0:
        raise DataError(f"The CSV manifest {csv_path} has negative labels; labels must be 0, 1, ... or class names.")
    return np.array(ints, dtype=np.int64), numbered_class_names(max(ints), f"The CSV manifest {csv_path}"), False


def load_csv(path: str | Path, *, progress: Optional[ProgressCallback] = None) -> ImageDataset:
    """Load the images a CSV manifest lists, in row order; missing or unreadable files are skipped."""
    csv_path = Path(path).absolute()
    rows = read_manifest(csv_path)
    if not rows:
        raise DataError(f"The CSV manifest {csv_path} lists no images; add one 'path,label' row per image.")
    labels_all, classes, named = parse_labels([lab for _, _, lab in rows], csv_path)
    paths = [_image_path(csv_path.parent, p) for _, p, _ in rows]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    present = [i for i, p in enumerate(paths) if p.is_file()]
    skipped = [(str(paths[i]), f"file not found (line {rows[i][0]} of {csv_path.name})") for i in missing]
    images, kept, unreadable = read_images([paths[i] for i in present], progress)
    skipped += unreadable
    warn_skipped(skipped, str(csv_path))
    if images is None:
        raise DataError(f"None of the images listed in {csv_path} could be read; check that the paths are relative to the CSV.")
    order = [present[k] for k in kept]
    labels = labels_all[order]
    if named:
        empty = [classes[k] for k in np.flatnonzero(np.bincount(labels, minlength=len(classes)) == 0)]
        if empty:
            raise DataError(
                f"Class(es) {', '.join(repr(c) for c in empty)} in {csv_path} have no readable images; "
                "fix their paths or remove their rows."
            )
    sources = [str(paths[i]) for i in order]
    logger.info("Loaded %d images in %d classes from %s", len(labels), len(classes), csv_path)
    return ImageDataset(images, labels, classes, sources, format="csv", root=str(csv_path), skipped=skipped)
