"""The adaptive HDBSCAN ``min_cluster_size`` rule."""
from __future__ import annotations

from typing import Optional

#: Fraction of the whole dataset used as the minimum cluster size (0.05%: a 0.1% poison set is twice it).
AUTO_FRACTION = 0.0005
#: HDBSCAN needs a handful of points to estimate a density; smaller "clusters" are noise.
AUTO_FLOOR = 5
#: The published FLARE value; larger values only hide small poison sets.
AUTO_CAP = 100


def auto_min_cluster_size(n_total: int, n_scope: Optional[int] = None) -> int:
    """``clip(round(0.0005 * n_total), 5, 100)``, and at most ``max(2, n_scope // 4)`` inside a subset.

    ``n_total`` is the size of the whole dataset, so a per-class run uses the same absolute size as a
    global one (poison is counted in samples, not in class fractions).  ``n_scope`` (the size of the
    class being clustered) caps it so that a small class can still split into at least two clusters.
    Examples: 60,000 samples -> 30; 10,000 -> 5; 1,000 -> 5; 300,000 -> 100.
    """
    m = int(min(AUTO_CAP, max(AUTO_FLOOR, round(AUTO_FRACTION * n_total))))
    if n_scope is not None:
        m = min(m, max(2, int(n_scope) // 4))
    return m
