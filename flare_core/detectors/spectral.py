"""Spectral Signatures (Tran, Li & Madry, NeurIPS 2018), from the paper's description.

For every class separately: centre the penultimate-layer features, take the top right singular vector
``v`` of the centred matrix, score every sample by its squared projection ``((x - mean) . v)^2`` and
remove the ``removal_factor * eps`` fraction (1.5 * eps in the paper) of the class with the highest
scores.  ``eps`` is the assumed *upper bound on the poisoned fraction of a class* (default 0.1: each
class loses 15% of its samples, poisoned or not -- the method always removes that many; rank by
``scores_`` for a threshold-free comparison).

``scores_`` are the squared projections divided by their class median, so a typical sample of any
class scores about 1 and scores can be ranked across classes.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from sklearn.base import BaseEstimator

from flare_core.detectors import _validation as V
from flare_core.detectors._perclass import check_features_labels, iter_classes, normalise_by_median, top_fraction_mask
from flare_core.detectors.provenance import package_versions
from flare_core.progress import ProgressCallback


def spectral_scores(X: np.ndarray) -> np.ndarray:
    """Squared projection of the centred rows of ``X`` on their top right singular vector."""
    centred = X - X.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[0]) ** 2


class SpectralSignatures(BaseEstimator):
    """Per class, flag the ``round(removal_factor * eps * n_class)`` samples with the largest spectral score.

    After ``fit(X, y)``: ``flagged_`` (bool N), ``scores_`` (float N), ``report_`` (dict).
    """

    def __init__(self, eps: float = 0.1, removal_factor: float = 1.5):
        self.eps = eps
        self.removal_factor = removal_factor

    def fit(self, X: Any, y: Any, progress: Optional[ProgressCallback] = None) -> "SpectralSignatures":
        V.check_float(self.eps, "eps", 0.0, 0.5, low_open=True)
        V.check_float(self.removal_factor, "removal_factor", 0.0, low_open=True)
        X, y = check_features_labels(X, y)
        n = len(X)
        flagged = np.zeros(n, dtype=bool)
        scores = np.zeros(n)
        per_class: dict[str, Any] = {}
        for c, idx in iter_classes(y, "spectral-signatures", progress):
            if len(idx) < 2:
                per_class[str(c)] = {"n": len(idx), "skipped": "fewer than 2 samples"}
                continue
            s = spectral_scores(V.class_rows(X, idx))
            n_remove = int(round(self.removal_factor * self.eps * len(idx)))
            flagged[idx] = top_fraction_mask(s, n_remove)
            scores[idx] = normalise_by_median(s)
            per_class[str(c)] = {"n": len(idx), "removed": n_remove, "max_score": float(s.max())}
        self.flagged_ = flagged
        self.scores_ = scores
        self.report_ = {"detector": "ss", "params": self.get_params(), "n_samples": n, "n_features": X.shape[1],
                        "n_flagged": int(flagged.sum()), "classes": per_class, "versions": package_versions()}
        return self
