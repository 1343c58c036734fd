"""Which samples to poison and what their new labels are (pure functions of labels and a seed)."""
from __future__ import annotations

import numbers
from typing import Optional

import numpy as np

from flare_core.errors import FlareError

MIN_RATE = 0.001
MAX_RATE = 0.2


def check_rate(rate: float) -> float:
    """``rate`` (fraction of the whole dataset) if within [MIN_RATE, MAX_RATE], else FlareError."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not MIN_RATE <= float(rate) <= MAX_RATE:
        raise FlareError(f"The poisoning rate must be between {MIN_RATE} and {MAX_RATE}, got {rate!r}.")
    return float(rate)


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise FlareError(f"The seed must be a non-negative whole number, got {seed!r}.")
    return int(seed)


def check_target(target: Optional[int], num_classes: int, mode: str) -> Optional[int]:
    """The target class index; None is allowed (and returned) only for all-to-all."""
    if target is None and mode == "all-to-all":
        return None
    if isinstance(target, bool) or not isinstance(target, numbers.Integral) or not 0 <= target < num_classes:
        raise FlareError(f"The target class must be a class index from 0 to {num_classes - 1}, got {target!r}.")
    return None if mode == "all-to-all" else int(target)


def poison_count(rate: float, n: int) -> int:
    """``rate * n`` rounded to the nearest whole number (halves up); FlareError if that is 0."""
    count = int(np.floor(rate * n + 0.5))
    if count < 1:
        raise FlareError(
            f"A rate of {rate} poisons no image of a {n}-image dataset; "
            f"raise the rate to at least {1.0 / max(n, 1):.4g}."
        )
    return count


def candidates(labels: np.ndarray, mode: str, target: Optional[int], clean_label: bool) -> np.ndarray:
    """Indices that may be poisoned: target-class images (clean-label), non-target images
    (all-to-one) or all images (all-to-all)."""
    if clean_label:
        return np.flatnonzero(labels == target)
    if mode == "all-to-one":
        return np.flatnonzero(labels != target)
    return np.arange(len(labels))


def choose(pool: np.ndarray, count: int, rng: np.random.Generator, what: str) -> np.ndarray:
    """``count`` distinct indices drawn uniformly from ``pool``, sorted."""
    if count > len(pool):
        raise FlareError(f"The attack needs {count} images but only {len(pool)} {what} are available; lower the rate.")
    return np.sort(rng.choice(pool, size=count, replace=False)).astype(np.int64)


def new_labels(labels: np.ndarray, mode: str, target: Optional[int], num_classes: int, clean_label: bool) -> np.ndarray:
    """Labels after poisoning: unchanged (clean-label), the target (all-to-one) or label + 1 mod K (all-to-all)."""
    labels = np.asarray(labels, dtype=np.int64)
    if clean_label:
        return labels.copy()
    if mode == "all-to-one":
        return np.full_like(labels, target)
    return (labels + 1) % num_classes
