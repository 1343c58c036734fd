"""Near-copies: is a flagged group many copies of one image?

The tail-group stage keeps small, tight groups of atypical samples inside a class.  Poison is such a group
(different images sharing one trigger), but so would be 30 noisy copies of one odd genuine image (measured
in benchmarks/NOTES.md, session 9: kept in 2 of 3 classes tried).  The feature space cannot tell them apart
(the copies' island statistic overlaps the poison's); pixel space can: copies are far closer to one another
than samples of a class ever are.  This module measures that, so the run can say so; it flags nothing.

``near_copy_ratio``: the median distance from each group member to its nearest other member, over the same
statistic for as many samples drawn at random from the rest of the class (pixels scaled to [0, 1]).  About 1
for a group of distinct images, near 0 for copies.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

#: Under this ratio a group is reported as near-copies of one image.
NEAR_COPY_RATIO = 0.3
#: At most this many members (and as many reference samples) are compared.
MAX_ROWS = 500


def _median_nn_distance(X: np.ndarray) -> float:
    """Median over rows of the distance to the nearest other row (one matrix product: rows are few, pixels many)."""
    if len(X) < 2:
        return float("nan")
    X = np.asarray(X, dtype=np.float64)
    sq = np.einsum("ij,ij->i", X, X)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (X @ X.T)
    np.fill_diagonal(d2, np.inf)
    return float(np.median(np.sqrt(np.maximum(d2.min(axis=1), 0.0))))


def near_copy_ratio(images: np.ndarray, members: np.ndarray, class_rows: np.ndarray,
                    random_state: Optional[int] = 0) -> Optional[float]:
    """The ratio for the sample indices ``members`` against the rest of ``class_rows`` (indices into
    ``images``, (N, H, W[, C]) uint8).  None when the group or the rest has fewer than 2 samples."""
    rng = np.random.default_rng(random_state)
    members = np.asarray(members, dtype=np.int64)
    rest = np.setdiff1d(np.asarray(class_rows, dtype=np.int64), members)
    if len(members) < 2 or len(rest) < 2:
        return None
    if len(members) > MAX_ROWS:
        members = rng.choice(members, MAX_ROWS, replace=False)
    reference = rng.choice(rest, min(len(members), len(rest)), replace=False)

    def flat(idx):
        return np.asarray(images[np.sort(idx)], dtype=np.float32).reshape(len(idx), -1) / 255.0

    inside, outside = _median_nn_distance(flat(members)), _median_nn_distance(flat(reference))
    if not np.isfinite(outside) or outside <= 0:
        return None
    return round(inside / outside, 4)


def annotate_tail_groups(evidence: dict[str, Any], clusters: np.ndarray, labels: np.ndarray,
                         images: np.ndarray, random_state: Optional[int] = 0) -> int:
    """Add ``near_copy_ratio`` to every kept tail group of FLARE default's ``evidence`` that has a
    ``cluster`` id (its samples are ``clusters == id``); returns how many groups were measured.  The
    evidence is changed in place; nothing else is."""
    classes = (((evidence or {}).get("latent") or {}).get("tail_groups") or {}).get("classes") or {}
    clusters, labels = np.asarray(clusters), np.asarray(labels)
    measured = 0
    for c, record in classes.items():
        class_rows = np.flatnonzero(labels == int(c))
        for group in record.get("kept", []):
            if "cluster" not in group:
                continue
            members = np.flatnonzero((clusters == group["cluster"]) & (labels == int(c)))
            ratio = near_copy_ratio(images, members, class_rows, random_state)
            if ratio is not None:
                group["near_copy_ratio"] = ratio
                measured += 1
    return measured
