"""Continuous suspicion scores: how far a sample lies from the benign cluster in the embedding."""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

#: Neighbours averaged for the distance to the benign cluster.
SCORE_NEIGHBOURS = 10


def benign_distance_scores(embedding: np.ndarray, benign: np.ndarray, k: int = SCORE_NEIGHBOURS) -> np.ndarray:
    """Mean distance to the ``k`` nearest *benign* samples, in units of the benign samples' own value.

    A benign sample's own point is excluded from its neighbours.  The result is divided by the median
    over benign samples, so a typical benign sample scores about 1 and a sample in a separate island
    scores (distance to the benign island) / (typical spacing inside it), which is large.  The scale is
    per call, so scores of separate per-class runs are comparable.  Higher = more suspicious.
    """
    embedding = np.asarray(embedding, dtype=np.float64)
    benign = np.asarray(benign, dtype=bool)
    n_benign = int(benign.sum())
    if n_benign < 2:
        return np.zeros(len(embedding))
    k = int(min(k, n_benign - 1))
    tree = cKDTree(embedding[benign])
    dist = np.empty(len(embedding))
    if (~benign).any():
        d, _ = tree.query(embedding[~benign], k=k)
        dist[~benign] = np.asarray(d).reshape(-1, k).mean(axis=1)
    d, _ = tree.query(embedding[benign], k=k + 1)
    dist[benign] = np.asarray(d).reshape(-1, k + 1)[:, 1:].mean(axis=1)
    scale = float(np.median(dist[benign]))
    if scale <= 0:
        positive = dist[benign][dist[benign] > 0]
        scale = float(positive.min()) if len(positive) else 1.0
    return dist / scale
