"""Activation Clustering (Chen et al., 2018, arXiv 1811.03728), from the paper's description.

For every class separately: reduce the penultimate-layer features to ``n_components`` dimensions
(FastICA as in the paper, or PCA), split them with 2-means, and flag the smaller cluster when it holds
less than ``size_threshold`` (35%) of the class -- poisoned samples of a target class form their own,
smaller cluster because the network learnt a different reason to predict that label for them.

Score (ours, documented): ``(d_large - d_small) / (d_large + d_small)`` in [-1, 1], where ``d_*`` are
the distances to the two cluster centres in the reduced space; positive = nearer the smaller cluster.
It ranks samples inside a class; it is not calibrated across classes.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Optional

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, FastICA
from sklearn.metrics import silhouette_score

from flare_core.detectors import _validation as V
from flare_core.detectors._perclass import check_features_labels, iter_classes
from flare_core.detectors.provenance import package_versions
from flare_core.progress import ProgressCallback

logger = logging.getLogger(__name__)

REDUCTIONS = ("ica", "pca")
#: Silhouette is computed on at most this many samples of a class (it is quadratic).
SILHOUETTE_SAMPLE = 2000


def _reduce(X: np.ndarray, method: str, n_components: int, random_state: Optional[int]) -> np.ndarray:
    k = int(min(n_components, X.shape[1], len(X) - 1))
    if method == "pca":
        return PCA(n_components=k, random_state=random_state).fit_transform(X)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)  # FastICA convergence notices
        ica = FastICA(n_components=k, whiten="unit-variance", max_iter=1000, random_state=random_state)
        return ica.fit_transform(X)


class ActivationClustering(BaseEstimator):
    """Per-class ICA/PCA + 2-means; flags a class's smaller cluster when it is below ``size_threshold``.

    After ``fit(X, y)``: ``flagged_`` (bool N), ``scores_`` (float N), ``clusters_`` (int N: 1 = the
    smaller cluster of its class, 0 = the larger, -1 = class too small to split), ``report_`` (dict).
    """

    def __init__(self, reduction: str = "ica", n_components: int = 10, size_threshold: float = 0.35,
                 n_init: int = 10, random_state: Optional[int] = 0):
        self.reduction = reduction
        self.n_components = n_components
        self.size_threshold = size_threshold
        self.n_init = n_init
        self.random_state = random_state

    def fit(self, X: Any, y: Any, progress: Optional[ProgressCallback] = None) -> "ActivationClustering":
        V.check_choice(self.reduction, "reduction", REDUCTIONS)
        V.check_int(self.n_components, "n_components", 1)
        V.check_float(self.size_threshold, "size_threshold", 0.0, 0.5, low_open=True)
        V.check_int(self.n_init, "n_init", 1)
        V.check_random_state(self.random_state)
        X, y = check_features_labels(X, y)
        n = len(X)
        flagged = np.zeros(n, dtype=bool)
        scores = np.zeros(n)
        clusters = np.full(n, -1, dtype=np.int64)
        per_class: dict[str, Any] = {}
        for c, idx in iter_classes(y, "activation-clustering", progress):
            Xc = V.class_rows(X, idx)
            varies = np.ptp(Xc, axis=0) > 0
            if len(idx) < 4 or not varies.any():
                per_class[str(c)] = {"n": len(idx), "skipped": "fewer than 4 samples or constant features"}
                continue
            # units constant in the class (dead ReLUs) carry nothing to split on, and FastICA signs its components
            # by the first feature's loading: a dead first unit zeroed them all and the split was noise
            Xc = Xc[:, varies]
            R = _reduce(Xc, self.reduction, self.n_components, self.random_state)
            km = KMeans(n_clusters=2, n_init=self.n_init, random_state=self.random_state).fit(R)
            sizes = np.bincount(km.labels_, minlength=2)
            small = int(np.argmin(sizes))  # ties: cluster 0
            is_small = km.labels_ == small
            rel = float(sizes[small] / len(idx))
            d = np.linalg.norm(R[:, None, :] - km.cluster_centers_[None], axis=2)
            d_small, d_large = d[:, small], d[:, 1 - small]
            scores[idx] = (d_large - d_small) / np.maximum(d_large + d_small, 1e-12)
            clusters[idx] = is_small.astype(np.int64)
            hit = rel < self.size_threshold
            flagged[idx] = is_small & hit
            sil = None
            if sizes.min() > 0:
                sil = float(silhouette_score(R, km.labels_, sample_size=min(SILHOUETTE_SAMPLE, len(idx)),
                                             random_state=self.random_state))
            per_class[str(c)] = {"n": len(idx), "constant_units": int((~varies).sum()),
                                 "smaller_cluster_size": int(sizes[small]), "relative_size": rel,
                                 "flagged": bool(hit), "silhouette": sil}
            logger.debug("AC class %s: smaller cluster %.1f%% -> %s", c, 100 * rel, "flagged" if hit else "kept")
        self.flagged_ = flagged
        self.scores_ = scores
        self.clusters_ = clusters
        self.report_ = {"detector": "ac", "params": self.get_params(), "n_samples": n, "n_features": X.shape[1],
                        "n_flagged": int(flagged.sum()), "classes": per_class, "versions": package_versions()}
        return self
