"""Classification and detection metrics: benign accuracy, attack success rate, detection quality."""
from __future__ import annotations

from typing import Optional, Union

import numpy as np


def _as_1d(name: str, a) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {a.shape}.")
    return a


def benign_accuracy(predictions, labels) -> float:
    """Fraction of predictions equal to the true labels (on clean test data); NaN when empty."""
    p, y = _as_1d("predictions", predictions), _as_1d("labels", labels)
    if len(p) != len(y):
        raise ValueError(f"predictions ({len(p)}) and labels ({len(y)}) must have the same length.")
    return float(np.mean(p == y)) if len(p) else float("nan")


def attack_success_rate(predictions_on_poisoned_test, target_labels: Union[int, np.ndarray],
                        true_labels: Optional[np.ndarray] = None) -> float:
    """Fraction of triggered test inputs classified as the attack's target; NaN when empty.

    ``target_labels`` is one target class or one per sample. With ``true_labels``, samples whose true
    class already is their target are left out (the usual definition of ASR).
    """
    p = _as_1d("predictions", predictions_on_poisoned_test)
    t = np.broadcast_to(np.asarray(target_labels), p.shape) if np.ndim(target_labels) == 0 else \
        _as_1d("target_labels", target_labels)
    if len(t) != len(p):
        raise ValueError(f"predictions ({len(p)}) and target_labels ({len(t)}) must have the same length.")
    keep = np.ones(len(p), dtype=bool)
    if true_labels is not None:
        y = _as_1d("true_labels", true_labels)
        if len(y) != len(p):
            raise ValueError(f"predictions ({len(p)}) and true_labels ({len(y)}) must have the same length.")
        keep = y != t
    return float(np.mean(p[keep] == t[keep])) if keep.any() else float("nan")


def _ratio(num: int, den: int) -> Optional[float]:
    return float(num) / den if den else None


def detection_metrics(flagged, truth, scores=None) -> dict:
    """How well a detector's flags match the truth (True = poisoned).

    Returns tp, fp, tn, fn, n, n_positive, n_flagged and the ratios tpr (recall), fpr, precision, f1,
    auroc. A ratio whose denominator is zero is None: tpr without positives, fpr without negatives,
    precision when nothing is flagged, f1 when there are neither positives nor flags. auroc needs
    ``scores`` (higher = more suspicious) and both classes present, else None.
    """
    f = _as_1d("flagged", flagged).astype(bool)
    t = _as_1d("truth", truth).astype(bool)
    if len(f) != len(t):
        raise ValueError(f"flagged ({len(f)}) and truth ({len(t)}) must have the same length.")
    tp = int(np.sum(f & t))
    fp = int(np.sum(f & ~t))
    fn = int(np.sum(~f & t))
    tn = int(np.sum(~f & ~t))
    auroc = None
    if scores is not None:
        s = _as_1d("scores", scores).astype(float)
        if len(s) != len(t):
            raise ValueError(f"scores ({len(s)}) and truth ({len(t)}) must have the same length.")
        if 0 < t.sum() < len(t):
            if not np.all(np.isfinite(s)):
                raise ValueError("scores must be finite numbers.")
            from sklearn.metrics import roc_auc_score

            auroc = float(roc_auc_score(t, s))
    return {
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "n": int(len(t)), "n_positive": tp + fn, "n_flagged": tp + fp,
        "tpr": _ratio(tp, tp + fn),
        "fpr": _ratio(fp, fp + tn),
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "auroc": auroc,
    }
