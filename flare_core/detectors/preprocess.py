"""Column scaling applied to the abnormality matrix before it is embedded."""
from __future__ import annotations

import numpy as np

#: Consistency constant: 1.4826 * MAD estimates the standard deviation of a normal distribution.
MAD_TO_SD = 1.4826


def robust_standardize(X: np.ndarray, sd_floor: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robust z-score of every column: ``(x - median) / (1.4826 * MAD)``; returns ``(Z, center, scale)``.

    ``sd_floor`` > 0: no column's scale is under that share of its standard deviation (a column nearly
    constant but for a few values has a MAD of ~0, which would give those values z-scores of ~1,000).

    Medians and MADs ignore the (possibly extreme) poisoned values, so poisoned samples stay far out
    instead of inflating the scale.  A column whose MAD is 0 (more than half the values equal) falls
    back to its standard deviation, and to 1 when that is 0 too (a constant column becomes all zeros).
    Returns a new array; ``X`` is not modified.
    """
    X = np.asarray(X, dtype=np.float64)
    center = np.median(X, axis=0)
    scale = MAD_TO_SD * np.median(np.abs(X - center), axis=0)
    sd = X.std(axis=0)
    if sd_floor > 0:
        scale = np.maximum(scale, sd_floor * sd)
    scale = np.where(scale > 0, scale, np.where(sd > 0, sd, 1.0))
    return (X - center) / scale, center, scale
