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


def exact_knn(X: np.ndarray, k: int) -> tuple:
    """``(indices, distances, None)`` of every row's ``k`` nearest rows (itself first), for UMAP's
    ``precomputed_knn``.

    Why not UMAP's own NNDescent: its numba kernels are compiled in every fresh process (not cached to
    disk), which was ~45 % of a whole ``flare purify`` run on 60k samples (benchmarks/results/profile/);
    scikit-learn's tree/brute-force search needs no compilation, is exact, and takes seconds at the
    sizes FLARE clusters (a sample of <= 20,000 rows).  Below 4,096 rows UMAP would not build that index
    but compute a dense distance matrix through its own (also compiled) small-data path; handing it these
    neighbours there too halved the CPU time of a 3,000-row class view (14.8 s -> 6.7 s in a fresh
    process, 2.3 s -> 1.2 s warm), the size of a per-class view at N = 30k.
    """
    from sklearn.neighbors import NearestNeighbors

    dist, idx = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(X)
    return idx.astype(np.int32), dist.astype(np.float32), None


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

    k = int(min(n_neighbors, n - 1))
    knn = exact_knn(X, k)
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=k,
        min_dist=float(min_dist),
        precomputed_knn=knn,
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
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        emb = reducer.fit_transform(X)
    return np.asarray(emb, dtype=np.float64), "umap"
