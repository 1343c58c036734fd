"""Which rows to embed when there are too many: a class-stratified sample, or one that keeps chosen rows.

Pure numpy, deterministic for a seed; shared by FLARE default's clustered sample, the per-class views'
embedded sample (:mod:`flare_core.detectors.placement` places the other rows) and the scatter plots'
downsampling (:mod:`flare_core.plots`).
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def stratified_sample(index: np.ndarray, y: Optional[np.ndarray], size: Optional[int],
                      seed: Optional[int]) -> np.ndarray:
    """Sorted positions (into ``index``) of at most ``size`` rows, stratified by ``y[index]`` when ``y`` is given.

    Every stratum keeps its share of ``size`` (at least one row). ``size=None`` or ``len(index) <= size``
    keeps every row.  Deterministic for a seed (``None`` is seed 0).
    """
    n = len(index)
    if size is None or n <= size:
        return np.arange(n)
    rng = np.random.default_rng(0 if seed is None else seed)
    if y is None:
        return np.sort(rng.choice(n, size, replace=False))
    labels = y[index]
    picked = []
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        k = max(1, int(round(size * len(pos) / n)))
        picked.append(rng.choice(pos, min(k, len(pos)), replace=False))
    return np.sort(np.concatenate(picked))


def sample_keeping(n: int, size: int, keep: Optional[np.ndarray] = None, seed: Optional[int] = 0,
                   keep_share: float = 1.0) -> np.ndarray:
    """Sorted positions of at most ``size`` of ``n`` rows: the ``keep`` rows first, up to ``keep_share`` of
    ``size`` (a random subset of them past it), the rest at random.  Deterministic for a seed.

    ``keep_share=1`` keeps every ``keep`` row while they fit.  The views embed with ``keep_share=0.5``, so the
    flagged rows are embedded, not placed, and still have as many others around them; the scatter plots draw
    with the same share, so a class that is half poison still shows its genuine points.
    """
    if n <= size:
        return np.arange(n)
    rng = np.random.default_rng(0 if seed is None else seed)
    keep = np.zeros(n, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    kept = np.flatnonzero(keep)
    cap = int(size * keep_share)
    if len(kept) > cap:
        kept = np.sort(rng.choice(kept, size=cap, replace=False))
    if len(kept) >= size:
        return kept
    need, others = size - len(kept), np.flatnonzero(~keep)
    if len(others) >= need:
        extra = rng.choice(others, size=need, replace=False)
    else:  # too few other rows to fill the sample: all of them, and more of the kept rows
        spare = np.setdiff1d(np.flatnonzero(keep), kept)
        extra = np.concatenate([others, rng.choice(spare, size=need - len(others), replace=False)])
    return np.sort(np.concatenate([kept, extra]))
