"""Continuous suspicion scores: how far a sample lies from the benign cluster in the embedding, how
atypical it is in its class, and the final ranking in which the flagged samples come first."""
from __future__ import annotations

from typing import Optional

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


#: :func:`class_atypicality` never scales a class column by less than this share of its standard deviation.
ATYPICALITY_SD_FLOOR = 0.2


def class_atypicality(features: np.ndarray, labels: np.ndarray, sd_floor: float = ATYPICALITY_SD_FLOOR) -> np.ndarray:
    """How atypical each sample is among the samples of its class in ``features`` (N, D).

    Per class: the Euclidean norm of the sample's robustly standardised row (median per column, scaled by
    ``max(1.4826 MAD, sd_floor * SD)``: :func:`.preprocess.robust_standardize`), divided by the median norm in that class, so
    a typical sample scores about 1 in every class and the class's outliers score more.  Classes of one
    sample score 0.  The floor is for channels nearly silent in a class: their MAD is ~0 (CIFAR-10 narrow
    ResNet: 0.0001-0.0007 against a median column scale of 0.2), so the few samples they fire for would
    score z ~1,000 and their one column would be the whole statistic; it ranks CIFAR-10's low-rate poison
    better (WaNet 0.5 % AUROC 0.887 -> 0.952; ``python3 -m benchmarks.atypicality_floor``) and changes
    nothing on the Fashion-MNIST models, whose smallest class-column MAD / SD is 0.25 (session 17).
    Poison at low rates is such an outlier in its target class (Fashion-MNIST models where FLARE flags
    nothing at 0.5 %: AUROC 0.94-0.97 against 0.66-0.74 for Spectral Signatures); at high rates it is a
    population, which the detector itself finds.
    """
    from flare_core.detectors.preprocess import robust_standardize

    features = np.asarray(features)  # float32 stays float32: robust_standardize converts a class at a time
    labels = np.asarray(labels)
    out = np.zeros(len(features))
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            continue
        norm = np.linalg.norm(robust_standardize(features[idx], sd_floor)[0], axis=1)
        med = float(np.median(norm))
        out[idx] = norm / med if med > 0 else norm
    return out


def rank_flagged_first(scores: np.ndarray, flagged: np.ndarray, unflagged: Optional[np.ndarray] = None) -> np.ndarray:
    """Scores in which every flagged sample outranks every unflagged one.

    Flagged samples keep ``scores``; an unflagged sample gets ``m * t / (1 + t)`` with ``t`` its value in
    ``unflagged`` (default: its own score, clipped at 0) and ``m`` the lowest flagged score (1 when nothing
    is flagged), so the unflagged keep their own order below the flagged ones and a threshold set at the
    flags selects exactly them.  Inputs are not modified."""
    scores = np.asarray(scores, dtype=np.float64)
    flagged = np.asarray(flagged, dtype=bool)
    t = np.clip(np.asarray(scores if unflagged is None else unflagged, dtype=np.float64), 0.0, None)
    out = scores.copy()
    m = 1.0
    if flagged.any():
        m = float(scores[flagged].min())
        if m <= 0:  # flagged scores at or below 0: shift them so the lowest is 1
            out[flagged] += 1.0 - m
            m = 1.0
    out[~flagged] = m * t[~flagged] / (1.0 + t[~flagged])
    return out


def unflagged_ranking(scores: np.ndarray, flagged: np.ndarray, atypicality: np.ndarray,
                      labels: np.ndarray, minority: Optional[np.ndarray] = None) -> np.ndarray:
    """What ranks the unflagged samples (the ``unflagged`` of :func:`rank_flagged_first`): in a class with
    flagged samples, the larger of the sample's own stage score (its distance from the benign cluster, which
    ranks the poison a stage almost caught) and its atypicality; in a class without, its atypicality alone
    (the stage scores of a class where nothing separated rank at chance).  Fashion-MNIST WaNet 10 %: AUROC
    0.986 with atypicality alone, 0.9996 so; WaNet 1 % (10 epochs): 0.855 with the stage score alone, 0.972 so.

    ``minority`` (float N in [0, 1], default none): each sample's membership of its class's minority mode
    (:func:`.minority_mode.class_minority_modes`; 0 outside such classes).  It is added as a tier: a value
    ``v`` becomes ``v + m * (1 + max v)``, so the full members of a minority mode rank above every sample
    outside one, in their own order, and a membership of 0 changes nothing."""
    scores = np.asarray(scores, dtype=np.float64)
    flagged = np.asarray(flagged, dtype=bool)
    labels = np.asarray(labels)
    out = np.asarray(atypicality, dtype=np.float64).copy()
    for c in np.unique(labels[flagged]):
        rows = (labels == c) & ~flagged
        out[rows] = np.maximum(scores[rows], out[rows])
    if minority is not None:
        m = np.clip(np.asarray(minority, dtype=np.float64), 0.0, 1.0)
        if m.shape != out.shape:
            raise ValueError(f"minority must hold one membership per sample ({len(out)}), got shape {m.shape}.")
        if m.any():
            out = out + m * (1.0 + float(out.max()))
    return out
