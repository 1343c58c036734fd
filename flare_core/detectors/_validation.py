"""Argument checks shared by the detectors; every failure is a one-sentence :class:`FlareError`."""
from __future__ import annotations

from numbers import Integral, Real
from typing import Any, Iterable, Optional

import numpy as np

from flare_core.errors import FlareError


#: Rows of a matrix checked for NaN at a time (so the check of a large matrix holds a small mask, not an N x D one).
FINITE_CHECK_ROWS = 65536


def check_matrix(X: Any, name: str = "X", min_rows: int = 2, keep_float32: bool = False) -> np.ndarray:
    """A finite 2-D float64 array (a new array when conversion is needed; the input is never written).

    ``keep_float32``: a float32 array (a memory-mapped one too) is returned as it is, not copied to float64
    (half the memory of the copy; for the penultimate features, which the callers read a class at a time and
    convert to float64 with :func:`class_rows`, so every number is the same as from a float64 copy)."""
    try:
        if keep_float32 and isinstance(X, np.ndarray) and X.dtype == np.float32:
            arr = X
        else:
            arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FlareError(f"{name} must be a numeric matrix (samples x columns); it could not be read as numbers ({exc}).") from None
    if arr.ndim != 2:
        raise FlareError(f"{name} must be a 2-D matrix (samples x columns), got an array with {arr.ndim} dimension(s).")
    if arr.shape[0] < min_rows or arr.shape[1] < 1:
        raise FlareError(f"{name} has shape {arr.shape}; at least {min_rows} samples and 1 column are needed.")
    bad = sum(int((~np.isfinite(arr[start:start + FINITE_CHECK_ROWS])).any(axis=1).sum())
              for start in range(0, len(arr), FINITE_CHECK_ROWS))
    if bad:
        raise FlareError(f"{name} contains NaN or infinite values in {bad} sample(s); recompute or drop those samples first.")
    return arr


def class_rows(X: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The rows ``idx`` of ``X`` as a new float64 array (one class of a matrix kept float32 by
    :func:`check_matrix`)."""
    return np.asarray(X[idx], dtype=np.float64)


def check_labels(y: Any, n: int, name: str = "y") -> np.ndarray:
    """An int64 label vector of length ``n``."""
    arr = np.asarray(y)
    if arr.ndim != 1 or len(arr) != n:
        raise FlareError(f"{name} must be a 1-D array with one label per sample ({n}), got shape {arr.shape}.")
    if arr.dtype.kind not in "iub":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise FlareError(f"{name} must hold integer class labels, got dtype {arr.dtype}.")
    return arr.astype(np.int64, copy=False)


def check_choice(value: Any, name: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise FlareError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}.")
    return value


def check_int(value: Any, name: str, low: int, high: Optional[int] = None, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise FlareError(f"{name} must be an integer, got {value!r}.")
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"between {low} and {high}"
        raise FlareError(f"{name} must be {rng}, got {value}.")
    return int(value)


def check_float(value: Any, name: str, low: float, high: Optional[float] = None, *, low_open: bool = False,
                high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value):
        raise FlareError(f"{name} must be a finite number, got {value!r}.")
    too_low = value <= low if low_open else value < low
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f" and {'<' if high_open else '<='} {high}"
        raise FlareError(f"{name} must be {lo}{hi}, got {value}.")
    return float(value)


def check_random_state(value: Any) -> Optional[int]:
    """``None`` (not reproducible) or a non-negative integer seed."""
    return check_int(value, "random_state", 0, 2**32 - 1, allow_none=True)
