"""Does a class's top singular direction hold a separate minority?  If so, who belongs to it.

Spectral Signatures (Tran et al. 2018) ranks a class's samples by their squared projection on the top
singular direction of the class's centred penultimate features: a poison population large enough to
dominate the class's spread lies along that direction.  Where that premise holds, the direction ranks the
poison better than any statistic weighing every direction alike (CIFAR-10 Blended 1 % trained 30 epochs:
SS AUROC 0.983 against FLARE's class atypicality 0.892).  Where it does not, the top direction is a
genuine axis of the class and ranking by it is below chance (Fashion-MNIST SIG 0.5 %: SS AUROC 0.40-0.50;
``python3 -m benchmarks.ranking_check``, session 19).  So the direction is used only when the class shows
the premise: the projections are fitted by one Gaussian and by a mixture of two, and the class holds a
*minority mode* when the mixture's smaller component weighs at most ``max_weight`` and the mixture is
better by at least ``min_bic_gain`` per sample in BIC (both computed on every sample of the class,
flagged or not).  The members' posterior of that component is what :func:`.scoring.unflagged_ranking`
adds to the ranking.  A mode alone is not flagged: it can be a genuine sub-population (one of 511 classes
without poison over 73 zoo models holds one), and a ranking change costs an analyst a look, not a lost
sample.  :func:`minority_flags` flags it only with the backdoor's loss signature as well (the model fits the
members >= ``MIN_FITTED_BETTER`` times better than the rest of their class; that genuine mode: 0.003x), and
FLARE default asks that only where its other stages flagged under 1 % and nothing in that class.

Calibrated (session 20, before any held-out model was looked at) on the 14 models whose features were
cached (``python3 -m benchmarks.ranking_check``; benchmarks/NOTES.md): the poison's class holds a minority
mode on the four CIFAR-10 models where the poison took whole (lighter weight 0.05-0.11, gain 0.46-1.08 per
sample); of the 109 classes without poison, the lightest component weighs 0.21 (gain 0.29 there) and the
largest gain is 0.50 (at weight 0.47: a balanced genuine axis).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

#: The mixture's smaller component must weigh at most this share of the class.
MAX_MINORITY_WEIGHT = 0.15
#: ... and the two-component mixture must beat one Gaussian by this much BIC per sample.
MIN_BIC_GAIN = 0.2
#: Classes with fewer samples are not tested (a mixture of two needs a few dozen in its small part).
MIN_CLASS_ROWS = 200


def top_direction_projection(X: np.ndarray) -> np.ndarray:
    """Projection of the centred rows of ``X`` on their top right singular vector (SS's direction)."""
    X = np.asarray(X, dtype=np.float64)
    centred = X - X.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[0]


def minority_mode(t: np.ndarray, random_state: Optional[int] = 0) -> tuple[np.ndarray, dict[str, float]]:
    """Fit one and two Gaussians to the 1-D values ``t``; returns the posterior of the two-component
    mixture's lighter component for every value, and ``{"weight", "bic_gain", "dprime"}`` (the lighter
    component's weight, (BIC of one - BIC of two) / n, and the components' separation
    |mean difference| / sqrt(mean of the two variances))."""
    from sklearn.mixture import GaussianMixture

    t = np.asarray(t, dtype=np.float64).reshape(-1, 1)
    seed = 0 if random_state is None else int(random_state)
    two = GaussianMixture(2, n_init=3, random_state=seed).fit(t)
    one = GaussianMixture(1, random_state=seed).fit(t)
    light = int(np.argmin(two.weights_))
    mu, var = two.means_.ravel(), two.covariances_.ravel()
    spread = float(np.sqrt(var.mean()))
    stats = {"weight": float(two.weights_[light]),
             "bic_gain": float(one.bic(t) - two.bic(t)) / len(t),
             "dprime": float(abs(mu[0] - mu[1]) / spread) if spread > 0 else float("inf")}
    return two.predict_proba(t)[:, light], stats


def class_minority_modes(features: Any, labels: Any, *, max_weight: float = MAX_MINORITY_WEIGHT,
                         min_bic_gain: float = MIN_BIC_GAIN, min_rows: int = MIN_CLASS_ROWS,
                         random_state: Optional[int] = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Per class of ``labels``, test whether the top singular direction of its rows of ``features``
    (N, D) holds a minority mode (module docstring).  Returns ``(membership, evidence)``: ``membership``
    (float N) is the posterior of the minority component in a class that holds one and 0 elsewhere;
    ``evidence`` maps each class to its statistics and whether it ``holds`` a minority mode (or why it was
    not tested).  Inputs are not modified."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features must be (N, D) with one label per row; got features of shape "
                         f"{features.shape} and {len(labels)} labels.")
    membership = np.zeros(len(features))
    evidence: dict[str, Any] = {}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < min_rows:
            evidence[str(c)] = {"n": int(len(idx)), "holds": False, "why_not": f"fewer than {min_rows} samples"}
            continue
        t = top_direction_projection(features[idx])
        if not np.ptp(t) > 0:
            evidence[str(c)] = {"n": int(len(idx)), "holds": False, "why_not": "no spread along any direction"}
            continue
        post, stats = minority_mode(t, random_state)
        holds = stats["weight"] <= max_weight and stats["bic_gain"] >= min_bic_gain
        if holds:
            membership[idx] = post
        evidence[str(c)] = {"n": int(len(idx)), **{k: round(v, 4) for k, v in stats.items()}, "holds": bool(holds),
                            "n_members": int((post > 0.5).sum()) if holds else 0}
    return membership, evidence


#: A minority mode is flagged only when the model fits its members this many times better than the rest of
#: their class (the latent stage's standalone loss bar, ``latent.DEFAULT_CONFIRM_LOSS_RATIO``: genuine splits
#: fitted 8-23x better exist; a backdoor's poison is fitted thousands of times better).
MIN_FITTED_BETTER = 100.0


def minority_flags(membership: np.ndarray, evidence: dict[str, Any], labels: Any, loss: Any, flagged: Any, *,
                   min_fitted_better: float = MIN_FITTED_BETTER) -> np.ndarray:
    """Which minority modes to flag: in a class that holds one (``evidence`` of :func:`class_minority_modes`)
    and where nothing is ``flagged`` yet, the members (posterior > 0.5) when the model fits them at least
    ``min_fitted_better`` times better than the rest of the class (the ratio of median ``loss``; a
    backdoor's signature).  Each tested class's evidence gains ``fitted_better`` and ``flagged`` (or
    ``why_not``).  Returns the new flags (bool N); inputs other than ``evidence`` are not modified."""
    from flare_core.detectors.latent import fitted_better

    labels = np.asarray(labels)
    loss = np.asarray(loss, dtype=np.float64)
    flagged = np.asarray(flagged, dtype=bool)
    out = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        e = evidence.get(str(c)) or {}
        if not e.get("holds"):
            continue
        in_class = labels == c
        members = in_class & (np.asarray(membership) > 0.5)
        rest = in_class & ~members
        if (in_class & flagged).any():
            e.update(flagged=False, why_not="another stage flagged samples of this class")
            continue
        if not members.any() or not rest.any():
            e.update(flagged=False, why_not="no members, or no rest of the class to compare them with")
            continue
        ratio = fitted_better(loss[members], loss[rest])
        e["fitted_better"] = round(float(ratio), 2)
        if ratio >= min_fitted_better:
            out |= members
            e["flagged"] = True
        else:
            e.update(flagged=False, why_not=f"the model fits its members {ratio:.3g}x as well as the rest of the "
                                            f"class (the bar is {min_fitted_better:g}x better)")
    return out
