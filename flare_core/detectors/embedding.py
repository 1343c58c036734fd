"""2-D embeddings: UMAP, with a PCA fallback for sets too small for a neighbour graph."""
from __future__ import annotations

import logging
import warnings
from typing import Optional

import numpy as np

logger = logging.getLogger(__name__)

#: Below this many samples a neighbour graph is meaningless; PCA is used instead.
MIN_UMAP_SAMPLES = 10


def pca_2d(X: np.ndarray) -> np.ndarray:
    """Coordinates on the first two principal axes (zero-padded when fewer exist)."""
    X = np.asarray(X, dtype=np.float64)
    out = np.zeros((len(X), 2))
    if len(X) < 2:
        return out
    centred = X - X.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    k = min(2, int((s > 1e-12 * max(s.max(), 1e-300)).sum()))
    out[:, :k] = u[:, :k] * s[:k]
    return out


def umap_2d(X: np.ndarray, *, n_neighbors: int = 40, min_dist: float = 0.0, random_state: Optional[int] = 0,
            n_epochs: Optional[int] = None) -> tuple[np.ndarray, str]:
    """Embed ``X`` in 2-D with UMAP (euclidean); returns ``(embedding, method)``.

    ``method`` is 'umap', or 'pca' when there are fewer than 10 samples, or 'constant' when all rows
    are identical (zeros).  ``n_neighbors`` is lowered to ``n - 1`` for small sets.  With a
    ``random_state`` UMAP runs single-threaded and is deterministic.
    """
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    if n == 0 or np.ptp(X, axis=0).max() == 0:
        return np.zeros((n, 2)), "constant"
    if n < MIN_UMAP_SAMPLES:
        return pca_2d(X), "pca"
    import umap  # imported lazily: slow import (numba)

    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=int(min(n_neighbors, n - 1)),
        min_dist=float(min_dist),
        metric="euclidean",
        random_state=random_state,
        n_epochs=n_epochs,
        init="spectral" if n >= 50 else "random",
        n_jobs=1 if random_state is not None else -1,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs.*")
        warnings.filterwarnings("ignore", message=".*[Ss]pectral initialisation failed.*")
        warnings.filterwarnings("ignore", message=".*disconnected.*")
        emb = reducer.fit_transform(X)
    return np.asarray(emb, dtype=np.float64), "umap"
