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
sample.  :func:`minority_flags` flags it only with a model-level sign of a backdoor as well: the loss
signature (the model fits the members >= ``MIN_FITTED_BETTER`` times better than the rest of their class;
that genuine mode: 0.003x), or, where :mod:`flare_core.features.mode_trigger` ran, a trigger (the members'
mean image difference, added to other classes' images, moves at least ``MIN_MOVED_IN`` more of them into the
class than a perturbation as strong without its structure, the control; the genuine mode: 1.7 %, control
2.8 %).  FLARE default asks that only where its other stages flagged under 1 % of the samples; in a class
where they flagged some, a mode is flagged only on its trigger, when it holds at least half of those flags and
under half of its members are flagged (it extends a group found in part: CIFAR-10 Blended 1 % at 30 epochs).

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
    features = np.asarray(features)  # float32 stays float32: top_direction_projection converts a class at a time
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
#: fitted 8-23x better exist; a backdoor's poison is fitted thousands of times better) ...
MIN_FITTED_BETTER = 100.0
#: ... or when its members' mean image difference, added to other classes' images, moves this share of them
#: into the class more than a perturbation as strong without the mode's structure (the control) does
#: (:mod:`flare_core.features.mode_trigger`; a margin, not a ratio: a backdoored model can absorb even the
#: control into its target class, Fashion-MNIST Trojan 1 %: 70.1 % against 17.0 %).
MIN_MOVED_IN = 0.2
#: The trigger test needs this many members and as many non-members in the class.
MIN_MEMBERS = 10
#: In a class where another stage flagged samples, a mode carrying a trigger is flagged only when at least
#: this share of those flags are its members (it holds what was found) ...
MIN_FLAGGED_INSIDE = 0.5
#: ... and under this share of its members are flagged already (what was found is part of it, not all).
MAX_MEMBERS_FLAGGED = 0.5


def carries_trigger(record: dict, *, min_moved_in: float = MIN_MOVED_IN) -> Optional[bool]:
    """Whether a class's trigger test (``moved_in`` / ``moved_in_control`` of
    :func:`flare_core.features.mode_trigger.mode_trigger_evidence`) shows a trigger; None when not tested."""
    if "moved_in" not in record:
        return None
    moved, control = float(record["moved_in"]), float(record.get("moved_in_control", 0.0))
    return moved - control >= min_moved_in


def minority_flags(membership: np.ndarray, evidence: dict[str, Any], labels: Any, loss: Any, flagged: Any, *,
                   min_fitted_better: float = MIN_FITTED_BETTER, min_moved_in: float = MIN_MOVED_IN) -> np.ndarray:
    """Which minority modes to flag: in a class that holds one (``evidence`` of :func:`class_minority_modes`),
    the members (posterior > 0.5) when the model shows a backdoor's signature on them: it fits them at least
    ``min_fitted_better`` times better than the rest of the class (the ratio of median ``loss``), or, where the
    class's record holds the trigger test of :mod:`flare_core.features.mode_trigger`, their mean image
    difference moves at least ``min_moved_in`` more of other classes' images into the class than the control
    does (:func:`carries_trigger`).  In a class where samples are ``flagged`` already, only the trigger
    counts, and only when at least ``MIN_FLAGGED_INSIDE`` of those flags are members and under
    ``MAX_MEMBERS_FLAGGED`` of the members are flagged (the mode extends a group found in part).  Each tested
    class's evidence gains ``fitted_better``, ``carries_trigger`` (when tested) and ``flagged`` (with
    ``flagged_by``, or ``why_not``).  Returns the new flags (bool N); inputs other than ``evidence`` are not
    modified."""
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
        if not members.any() or not rest.any():
            e.update(flagged=False, why_not="no members, or no rest of the class to compare them with")
            continue
        ratio = fitted_better(loss[members], loss[rest])
        e["fitted_better"] = round(float(ratio), 2)
        trigger = carries_trigger(e, min_moved_in=min_moved_in)
        if trigger is not None:
            e["carries_trigger"] = bool(trigger)
        found = in_class & flagged
        if found.any():
            # another stage found part of this class: the mode extends it only when it carries a trigger, holds
            # most of what was found and was found in part only (under half of its members flagged)
            inside = float((found & members).sum()) / float(found.sum())
            covered = float((found & members).sum()) / float(members.sum())
            e.update(flagged_inside=round(inside, 4), members_flagged=round(covered, 4))
            if trigger and inside >= MIN_FLAGGED_INSIDE and covered < MAX_MEMBERS_FLAGGED:
                out |= members
                e.update(flagged=True, flagged_by="trigger, extending the class's flags")
            else:
                e.update(flagged=False, why_not=(
                    f"another stage flagged samples of this class ({inside:.0%} of them inside the mode, "
                    f"{covered:.0%} of its members); the mode extends them only with a trigger, when at least "
                    f"{MIN_FLAGGED_INSIDE:.0%} of them lie inside it and under {MAX_MEMBERS_FLAGGED:.0%} of its "
                    "members are flagged"))
            continue
        if ratio >= min_fitted_better or trigger:
            out |= members
            e["flagged"] = True
            e["flagged_by"] = "loss" if ratio >= min_fitted_better else "trigger"
        else:
            why = (f"the model fits its members {ratio:.3g}x as well as the rest of the class (the bar is "
                   f"{min_fitted_better:g}x better)")
            if trigger is None:
                why += "; their trigger test did not run (no model pass)" if "why_not_tested" not in e else \
                    f"; their trigger test did not run ({e['why_not_tested']})"
            else:
                why += (f", and their mean image difference moves {e['moved_in']:.1%} of other images into the "
                        f"class (control {e.get('moved_in_control', 0.0):.1%}; the bar is {min_moved_in:.0%} more "
                        "than the control)")
            e.update(flagged=False, why_not=why)
    return out
