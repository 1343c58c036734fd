"""FLARE default's shortcut stage: flag the target-class samples whose label the model's transform
trigger carries (evidence from :mod:`flare_core.features.shortcuts`).

A sample is flagged when it is labelled with the shortcut's class, the counter transform lowers the
log-probability of its label by at least ``min_drop`` nats (``DEFAULT_MIN_DROP`` = 3: the probability
falls 20-fold) and the model then names another class. Nothing is flagged unless at least ``min_group``
samples qualify: one or two hard genuine images are not a poisoned subset.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from flare_core.errors import FlareError

DEFAULT_MIN_DROP = 3.0
DEFAULT_MIN_GROUP = 10


def shortcut_flags(drop: np.ndarray, after_class: np.ndarray, labels: np.ndarray, target: Optional[int],
                   min_drop: float = DEFAULT_MIN_DROP, min_group: int = DEFAULT_MIN_GROUP) -> np.ndarray:
    """(N,) bool: the samples this stage flags (all False when no shortcut was found)."""
    labels = np.asarray(labels)
    drop = np.asarray(drop, dtype=float)
    after_class = np.asarray(after_class)
    if not (len(drop) == len(after_class) == len(labels)):
        raise FlareError(f"drop, after_class and labels must have one entry per sample, got {len(drop)}, "
                         f"{len(after_class)} and {len(labels)}.")
    if min_drop <= 0:
        raise FlareError(f"min_drop must be positive, got {min_drop!r}.")
    flags = np.zeros(len(labels), dtype=bool)
    if target is None:
        return flags
    with np.errstate(invalid="ignore"):
        flags = (labels == target) & (drop >= min_drop) & (after_class != target) & (after_class >= 0)
    if int(flags.sum()) < min_group:
        flags[:] = False
    return flags


def check_evidence(evidence, n: int) -> tuple:
    """(drop, after_class) of a ShortcutEvidence for ``n`` samples, or a ValueError a user can act on."""
    drop = getattr(evidence, "drop", None)
    after = getattr(evidence, "after_class", None)
    if drop is None or after is None:
        raise FlareError("the shortcut evidence has no counter test; make it with "
                         "flare_core.features.shortcuts.shortcut_evidence (probe and counter test).")
    drop, after = np.asarray(drop, dtype=float), np.asarray(after)
    if len(drop) != n or len(after) != n:
        raise FlareError(f"the shortcut evidence covers {len(drop)} samples but the features have {n}; "
                         "compute it on the same dataset.")
    return drop, after
