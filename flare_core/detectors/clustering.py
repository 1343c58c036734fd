"""Running HDBSCAN (the ``hdbscan`` package) on a 2-D embedding."""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np

from flare_core.detectors.tree import CondensedTree


def run_hdbscan(embedding: np.ndarray, min_cluster_size: int, min_samples: Optional[int] = None):
    """Fit ``hdbscan.HDBSCAN`` (euclidean, excess-of-mass selection); returns ``(clusterer, tree)``.

    ``min_samples`` defaults to ``min_cluster_size`` (HDBSCAN's own default) and is lowered to
    ``n - 1`` for tiny inputs.  The flat ``clusterer.labels_`` are not used by FLARE's decision; the
    condensed tree is.
    """
    import hdbscan  # lazy: pulls in numba/joblib

    n = len(embedding)
    ms = min_cluster_size if min_samples is None else min_samples
    ms = max(1, min(int(ms), n - 1))
    clusterer = hdbscan.HDBSCAN(min_cluster_size=int(max(2, min_cluster_size)), min_samples=ms,
                                metric="euclidean", core_dist_n_jobs=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)  # divide-by-zero on duplicate points
        warnings.filterwarnings("ignore", category=FutureWarning)
        clusterer.fit(np.ascontiguousarray(embedding, dtype=np.float64))
    return clusterer, CondensedTree.from_hdbscan(clusterer)
