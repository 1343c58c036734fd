"""Per-class 2-D views (UMAP + HDBSCAN) for the dashboard's scatter plots.

These views are for looking, not for deciding: each class is embedded on its own (coordinates are
comparable only within a class) and clustered with HDBSCAN's default excess-of-mass selection.

A class of more than ``sample_size`` rows (20,000) is embedded and clustered on a sample of that size, which
holds the class's flagged rows (up to half of it) and the others at random; every other row is placed at the
mean of its 10 nearest embedded rows in ``X`` and takes their most common cluster
(:func:`.placement.place_by_neighbours`, as FLARE default places its samples).  UMAP's cost grows with the
rows: two classes of 100,000 rows took 262 s (64 features) and 566 s (512) embedded whole, 60 s and 126 s
this way, with the planted cluster found whole in both (``benchmarks/detector_memory.py --cases views``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import numpy as np

from flare_core.detectors import _validation as V
from flare_core.detectors.clustering import run_hdbscan
from flare_core.detectors.embedding import MIN_UMAP_SAMPLES, umap_2d
from flare_core.detectors.placement import place_by_neighbours
from flare_core.detectors.sizes import AUTO_FLOOR, auto_min_cluster_size
from flare_core.errors import FlareError
from flare_core.progress import ProgressCallback, ensure_progress
from flare_core.sampling import sample_keeping

logger = logging.getLogger(__name__)

#: UMAP epochs for views: enough for a readable picture, about twice as fast as UMAP's default.
VIEW_EPOCHS = 200
#: Rows of a class embedded by UMAP; the others are placed by their nearest embedded rows.
VIEW_SAMPLE_SIZE = 20000
#: Largest share of the embedded sample given to the class's flagged rows (the rest are unflagged, at random).
VIEW_FLAGGED_SHARE = 0.5


@dataclass
class ClassView:
    """One class's picture.

    indices:           (n,) positions of the class's samples in the full dataset.
    embedding:         (n, 2) coordinates (UMAP; PCA or zeros for classes under 10 samples).
    clusters:          (n,) HDBSCAN labels, -1 = noise; all 0 for classes too small to cluster.
    cluster_stability: {label: HDBSCAN persistence in [0, 1]} (1 = stable across all density levels).
    cluster_sizes:     {label: number of samples}, noise (-1) included when present.
    flagged:           (n,) bool, the given flags restricted to the class (all False when none given).
    method:            'umap', 'pca' or 'constant'.
    embedded:          (n,) bool, True for the rows the embedding was computed on; the others (classes over
                       ``sample_size`` rows) were placed by their nearest embedded rows.
    """

    indices: np.ndarray
    embedding: np.ndarray
    clusters: np.ndarray
    cluster_stability: dict[int, float]
    cluster_sizes: dict[int, int]
    flagged: np.ndarray
    method: str
    embedded: np.ndarray


def _view_min_cluster_size(min_cluster_size: Optional[int], n_total: int, n: int, n_fit: int) -> int:
    """HDBSCAN's size for a class of ``n`` rows embedded on ``n_fit`` of them: the given or automatic size,
    counted in the class's rows, scaled to the sample (never under the smaller of itself and the floor)."""
    m = min_cluster_size if min_cluster_size is not None else auto_min_cluster_size(n_total, n)
    return m if n_fit >= n else max(min(m, AUTO_FLOOR), int(round(m * n_fit / n)))


def _class_view(X: np.ndarray, idx: np.ndarray, flagged: np.ndarray, n_total: int, n_neighbors: int,
                min_cluster_size: Optional[int], random_state: Optional[int], n_epochs: int,
                sample_size: Optional[int]) -> ClassView:
    n = len(idx)
    flags = flagged[idx]
    fit = (np.arange(n) if sample_size is None or n <= sample_size
           else sample_keeping(n, sample_size, flags, random_state, keep_share=VIEW_FLAGGED_SHARE))
    embedded = np.zeros(n, dtype=bool)
    embedded[fit] = True
    emb, method = umap_2d(V.class_rows(X, idx[fit]), n_neighbors=n_neighbors, min_dist=0.0,
                          random_state=random_state, n_epochs=n_epochs)
    if method != "umap" or len(fit) < MIN_UMAP_SAMPLES:
        clusters = np.zeros(len(fit), dtype=np.int64)
        stability = {0: 1.0} if n else {}
    else:
        m = _view_min_cluster_size(min_cluster_size, n_total, n, len(fit))
        clusterer, _ = run_hdbscan(emb, m)
        clusters = clusterer.labels_.astype(np.int64)
        persistence = np.asarray(clusterer.cluster_persistence_, dtype=np.float64)
        stability = {int(k): float(persistence[k]) for k in range(len(persistence))}
    if len(fit) < n:
        emb, clusters = place_by_neighbours(X[idx], fit, emb, clusters)  # float32 stays float32: distances only
    labels, counts = np.unique(clusters, return_counts=True)
    sizes = {int(k): int(c) for k, c in zip(labels, counts)}
    return ClassView(idx, emb, clusters, stability, sizes, flags, method, embedded)


def class_views(X: Any, y: Any, *, flagged: Any = None, n_neighbors: int = 15, min_cluster_size: Optional[int] = None,
                random_state: Optional[int] = 0, classes: Optional[Iterable[int]] = None,
                progress: Optional[ProgressCallback] = None, n_epochs: int = VIEW_EPOCHS,
                sample_size: Optional[int] = VIEW_SAMPLE_SIZE) -> dict[int, ClassView]:
    """``{class: ClassView}`` for every class in ``classes`` (default: every class present in ``y``).

    ``X`` is any N x D matrix (abnormality columns or features); it is not modified.  A class with no
    samples gets an empty view.  ``min_cluster_size=None`` uses :func:`.sizes.auto_min_cluster_size`
    (the dataset size, capped by a quarter of the class).  ``progress('views', done, total)``.
    ``random_state=None`` lets UMAP use all cores (faster, not reproducible); ``n_epochs`` trades
    picture quality for speed (a 6,000-sample class takes roughly 5-10 s single-threaded).  A class of more
    than ``sample_size`` rows is embedded on a sample of that size and its other rows placed by their
    neighbours (module docstring); ``None`` embeds every row.
    """
    X = V.check_matrix(X, "X", min_rows=1, keep_float32=True)  # one class at a time as float64 (_class_view)
    y = V.check_labels(y, len(X))
    V.check_int(n_neighbors, "n_neighbors", 2)
    V.check_int(min_cluster_size, "min_cluster_size", 2, allow_none=True)
    V.check_random_state(random_state)
    V.check_int(n_epochs, "n_epochs", 1)
    V.check_int(sample_size, "sample_size", 100, allow_none=True)
    if flagged is None:
        flags = np.zeros(len(X), dtype=bool)
    else:
        flags = np.asarray(flagged)
        if flags.shape != (len(X),) or flags.dtype.kind != "b":
            raise FlareError(f"flagged must be a boolean array with one value per sample ({len(X)}), "
                             f"got shape {flags.shape}.")
    wanted = [int(c) for c in (np.unique(y) if classes is None else classes)]
    report = ensure_progress(progress)
    views: dict[int, ClassView] = {}
    for i, c in enumerate(wanted):
        report("views", i, len(wanted))
        idx = np.flatnonzero(y == c)
        views[c] = _class_view(X, idx, flags, len(X), n_neighbors, min_cluster_size, random_state, n_epochs,
                               sample_size)
        logger.debug("view of class %s: %d samples (%d embedded), %s", c, len(idx), views[c].embedded.sum(),
                     views[c].method)
    report("views", len(wanted), len(wanted))
    return views
