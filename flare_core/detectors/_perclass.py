"""Helpers shared by the per-class feature-space baselines (AC, SS, SPECTRE)."""
from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np

from flare_core.detectors import _validation as V
from flare_core.progress import ProgressCallback, ensure_progress


def check_features_labels(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """A finite N x D float matrix and N integer labels (per-class baselines need both)."""
    X = V.check_matrix(X, "X (penultimate features)", min_rows=2, keep_float32=True)  # read with V.class_rows
    if y is None:
        from flare_core.errors import FlareError

        raise FlareError("This detector works class by class and needs the class labels y; pass them to fit.")
    return X, V.check_labels(y, len(X))


def iter_classes(y: np.ndarray, stage: str, progress: Optional[ProgressCallback]) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(class, indices)`` in class order, reporting ``progress(stage, done, total)``."""
    report = ensure_progress(progress)
    classes = np.unique(y)
    for i, c in enumerate(classes):
        report(stage, i, len(classes))
        yield int(c), np.flatnonzero(y == c)
    report(stage, len(classes), len(classes))


def top_fraction_mask(scores: np.ndarray, n_remove: int) -> np.ndarray:
    """Boolean mask of the ``n_remove`` highest scores (ties broken by index, stable)."""
    mask = np.zeros(len(scores), dtype=bool)
    n_remove = int(max(0, min(n_remove, len(scores))))
    if n_remove:
        order = np.argsort(-scores, kind="stable")
        mask[order[:n_remove]] = True
    return mask


def normalise_by_median(scores: np.ndarray) -> np.ndarray:
    """``scores / median(scores)`` (or / mean, or unchanged when those are 0): comparable across classes."""
    scale = float(np.median(scores))
    if scale <= 0:
        scale = float(np.mean(scores))
    return scores / scale if scale > 0 else scores.astype(np.float64)
