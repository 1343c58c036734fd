"""FLARE default's latent stage: per class, split the penultimate features where a class holds two populations.

Why it exists.  FLARE's per-layer abnormality (one number per BatchNorm layer) catches triggers that
drive some activation far out of range (patches).  A blended or warping trigger at a high poison rate
does not: at 10 % all-to-one the poisoned samples are as many as a whole class and their activations
are ordinary in range (benchmarks/NOTES.md).  They are, however, a population of their own inside
the target class: in the penultimate features the target class splits into its genuine samples and the
poisoned ones, far apart (held-out d' 8-11 on Fashion-MNIST), while a clean class's halves lie close
(d' 3.3-6.1).  This stage looks for exactly that.

Per class (pure functions, no state):

1. robust-standardise the class's penultimate features, PCA to ``n_components`` (20);
2. **bisect**: 2-means, refined by a two-component Gaussian mixture with a shared covariance (the
   unsupervised counterpart of a linear discriminant); the split stands when the two sides are
   ``min_separation`` apart in held-out d' (:func:`heldout_dprime`: a Fisher direction fitted on one
   random half of the rows, d' measured on the other half, both ways round, the smaller value).
   When the 2-means split falls short and ``max_clusters`` > 2, the other candidates are tried: every
   k-means cluster (k = 3..``max_clusters``), refined the same way, against the rest of the rows; the
   one with the largest in-sample d' is measured held-out (one more test, not a search over held-out
   values).  A split short of ``min_separation`` still stands at ``loss_separation`` (5.5) when its
   smaller side holds under ``minority`` (35 %) of the rows and the model fits it ``loss_ratio`` (10)
   times better than the other side: distance and the backdoor's loss signature together.  Over 25
   calibration models (Fashion-MNIST and CIFAR-10) the genuine-only minority splits fitted >= 10x better
   reached d' 5.09 at most (a clump of 129 clean Trousers fitted 114x better sits at 5.01), while the
   poisoned sets of Blended 0.5 % and WaNet 10 % (10-epoch models) split off at 5.81 / 6.20, fitted 14x /
   1,400x better.  Balanced splits get no such allowance: the bag class's two halves reach d' 6.07 and
   are fitted up to 33x apart.  A poison set of 1 % of the data is a few percent of its class, one cluster among the
   class's natural sub-modes, and the best 2-means cut then runs between sub-modes instead (Blended
   1 %: 2-means split d' 4.9, the k-means cluster 7.2 and 99.8 % of the poison).  A class the plain
   split already separates is split exactly as before.  Recurse into both sides (``max_depth`` levels;
   parts under ``min_split`` rows are not split);
3. **decide** which leaves are poison (:func:`poisoned_leaves`): leaves holding at least ``minority``
   (35 %) of the class are *major*; the major leaf the model fits worst (highest median loss) is the
   reference, genuine; every minor leaf is flagged (the class's majority is genuine, as Activation
   Clustering assumes, here only behind a separation test AC does not have), and another major leaf
   is flagged only when its median loss is ``loss_ratio`` (10) times lower than the reference's: a
   class split into two halves is either a bimodal class (bags with and without handles) or a class
   half made of poison, and a backdoor is a shortcut the model fits far better than genuine samples
   (the observation behind Anti-Backdoor Learning, Li et al., NeurIPS 2021).  When neither side
   qualifies, the split is reported and nothing is flagged;
4. **peel** (only in a class where step 3 flagged parts the model fits ``loss_ratio`` times better than
   the reference, the backdoor's signature in that class): split the reference leaf again and flag its
   smaller side when it is ``peel_separation`` (4.5) apart *and* its median loss is ``loss_ratio``
   times lower than the other side's; repeat on the larger side until a split fails.  Some poisoned
   samples sit closer to the genuine ones (WaNet: 3,140 samples at d' 5.2, median loss 110x lower);
   genuine sub-populations split off this way were always the *harder* part (loss ratio <= 2.1 in
   every all-to-one poisoned class of the calibration models), so the loss test, not the distance,
   carries it.  Without the signature there is no peeling: in Blended all-to-all a genuine sub-population
   of sandals was fitted 23x better than the rest of its class;
5. **join** (in a class with flagged parts): a sample whose ``JOIN_NEIGHBOURS`` (10) nearest samples of
   its class are mostly flagged is flagged too, repeated until nothing changes (label propagation by
   majority vote): poisoned samples left at the border of a flagged part (WaNet: 95.4 % -> 97.9 % TPR,
   FPR 0.02 % -> 0.04 %).
6. **dataset-wide splits are not poison** (:func:`widely_flagged_classes`): where two or more classes have
   flagged parts holding at least ``wide_share`` (5 %) of the class, fitted less than ``loss_ratio`` times
   better than the rest of it, and the model rates the same classes next after the label for those parts
   as for the rest of their classes (total variation distance of that class, median over the classes,
   <= 0.2), none of those classes is flagged.  A dataset pooled from two sources (a second scanner,
   inverted or restyled images) splits every class at the share of the second source, and the classes
   where that split is far enough apart would otherwise be flagged: as an all-to-all attack would be.
   What tells them apart is the content: all-to-all poison is another class's images relabelled, so the
   model rates its source class next (median TV 0.51-0.99 per model on the benchmark), while a second
   source holds the class's own images (0.08-0.10).  All-to-one poison lies in one class and is never touched.  A
   clean-label attack on two or more classes at once would be taken for a second source.
   FLARE default applies the same test to its final flags, whichever stage made them
   (:func:`flare_core.detectors.flare.flare_detect`), since the stages that look for small groups where the
   others flagged little would otherwise flag the same parts.

Large classes.  A class of more than ``LATENT_SAMPLE_SIZE`` (20,000) rows is split on that many of its rows drawn
at random, and every other row joins the part most of its nearest sampled rows are in; the join steps look for
neighbours among as many rows.  A random sample keeps each part's share of the class, so a poison set is as
visible in it as in the class; a part needs about 40 rows in the sample for a held-out d' (``MIN_HALF_ROWS`` on
each side of both halves), so under about 0.2 % of a sampled class it is not found here (the tail-group stage
looks for small groups).

Calibration (benchmarks/results/latent_calibration.json, ``python3 -m benchmarks.latent_calibration``):
on nine Fashion-MNIST small-CNN models (clean, seven attacks, BadNets 0.5 %), the first split of every
class made of genuine samples only (64 classes) had held-out d' <= 6.07 -- the bag class, two real
kinds of bag, 5.6-6.1 in every model and balanced, so the loss test guards it as well (loss ratio 6.7);
the unbalanced ones, which only d' guards, <= 5.04 -- while the splits separating poison from genuine
samples had d' 6.7 (SIG) and 8-18 (BadNets, Blended, Trojan, WaNet, all-to-all).  The threshold 6.5
sits between.  It was set on these models, so it is a measured choice, not a law: other datasets can
hold a class whose sub-populations lie further apart, which is why every split's d' is kept as
evidence and ``use_latent='off'`` exists.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

#: A split stands when its held-out d' reaches this (see the module docstring for the calibration).
DEFAULT_MIN_SEPARATION = 6.5
#: A split short of DEFAULT_MIN_SEPARATION stands at this held-out d' when its smaller side (< DEFAULT_MINORITY of
#: the rows) is fitted DEFAULT_LOSS_RATIO times better than the other (the two signals together).
DEFAULT_LOSS_SEPARATION = 5.5
#: Leaves holding at least this share of their class are "major" (the rest are flagged).
DEFAULT_MINORITY = 0.35
#: A second major leaf is flagged only when its median loss is this many times below the reference's.
DEFAULT_LOSS_RATIO = 10.0
#: The loss signature that alone keeps a per-layer group the separation test refuses (:func:`confirm_groups`).
#: 10 until a held-out model (Fashion-MNIST SIG 0.5 %, ASR 17 %) showed a genuine group of Bags fitted
#: 13.5x better kept on it (105 samples, d' 1.8); the one poison group kept on loss alone was fitted 4,000x
#: better.  It stands alone, without a distance test beside it, so it asks for the stronger signature.
DEFAULT_CONFIRM_LOSS_RATIO = 100.0
#: A per-layer group too thin to test class by class passes at this pooled held-out d'
#: (:func:`pooled_heldout_dprime`).  Measured on the 46 cached benchmark models: the genuine groups of
#: that kind (seven, on seven models) reached 2.04 at most over three seeds of the random halves, the
#: BadNets all-to-all 0.5 % poison sets 3.9-4.3 (20 epochs, 261 poisoned samples) and 2.8-3.1 (10 epochs,
#: 90 poisoned of 96, a backdoor that did not take).  Set between, on those same models, so it is a
#: measured choice; a model trained after it was fixed (``fmnist-badnets-a2a-0.5-e20-s1``) is the check.
DEFAULT_CONFIRM_POOLED_SEPARATION = 3.0
#: A dataset-wide split (:func:`widely_flagged_classes`): a class counts when its flagged parts hold at least this
#: share of it (small groups of flags beside a poison set do not make a split of the class) ...
DEFAULT_WIDE_SHARE = 0.05
#: ... and the split is a second source, not poison, when the classes the model rates next after the label
#: differ this little between the flagged parts and the rest of their classes (total variation distance,
#: median over the classes).  Dirty-label poison keeps its source class there: on the 16 cached benchmark
#: models with poison in two or more classes (all-to-all), the poisoned part of a class against its genuine
#: samples had a median of 0.51-0.99 over the classes of one model (class by class 0.25-1.0; poison in one
#: class, 39 models: 0.09-0.74, clean-label SIG lowest), while the flagged parts of the two second-source rows
#: that FLARE flagged (a clean Fashion-MNIST with 15 % / 30 % of every class inverted) had 0.02-0.41, medians
#: 0.10 / 0.08 (``python3 -m benchmarks.second_source [--poisoned]``, benchmarks/results/second_source.json).
DEFAULT_WIDE_MAX_TV = 0.2
#: Peeling inside a class already found poisoned: the smaller side must be this far apart (held-out d').
DEFAULT_PEEL_SEPARATION = 4.5
#: Neighbours that vote in the join step (the same number FLARE uses to place unclustered samples).
JOIN_NEIGHBOURS = 10
#: Rounds of the join step at most.
JOIN_ROUNDS = 10
#: The join step's second rule (:func:`join_linear`): folds of the out-of-fold classifier, and its
#: regularisation (inverse L2 strength on standardised features; on Fashion-MNIST WaNet 10 %, 0.01 and
#: 0.1 joined 42 / 12 and 42 / 13 poisoned / genuine samples).
JOIN_LINEAR_FOLDS = 5
JOIN_LINEAR_C = 0.01
#: PCA components the class is split in.
DEFAULT_COMPONENTS = 20
#: Candidate splits: every k-means cluster against the rest, k = 2..this (2 = the plain 2-means split).
DEFAULT_MAX_CLUSTERS = 6
#: Levels of bisection.
DEFAULT_MAX_DEPTH = 3
#: Parts with fewer rows are not split further.
MIN_SPLIT_ROWS = 200
#: Each side of a split needs this many rows in each random half for the held-out d'.
MIN_HALF_ROWS = 20
#: A class of more rows than this is split on this many of them, drawn at random (seeded), and every other row
#: joins the part most of its ``JOIN_NEIGHBOURS`` nearest sampled rows fell in (:func:`split_class`); the join
#: steps look for neighbours among as many rows.  The bisection's k-means, Gaussian mixtures and held-out d'
#: grow with the rows and the neighbour search with their square: on a million Fashion-MNIST samples (classes
#: of 100,000-190,000 rows) the stage took 739 s and FLARE's final join 155 s (``benchmarks/scale_run.py``).
#: A random sample keeps every part's share of its class, and 20,000 rows hold more of a part than the whole
#: class does on the benchmark's data sets, whose largest class (the target of a 10 % attack on Fashion-MNIST)
#: has 12,000 rows: no class there is sampled, so none of their numbers depends on it.
LATENT_SAMPLE_SIZE = 20000
_SAMPLE_STREAM = 0x1A7E


@dataclass
class ClassSplit:
    """The latent stage's outcome for one class (indices are positions within the class)."""

    label: int
    leaves: list
    flagged_leaves: list
    splits: list
    leaf_loss: list
    reason: str
    scores: np.ndarray
    evidence: dict[str, Any] = field(default_factory=dict)


def sample_loss(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample cross-entropy of the given label, from the (N, K) logits (float64, stable)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return log_norm - z[np.arange(len(z)), np.asarray(y)]


def fitted_better(loss_part: np.ndarray, loss_rest: np.ndarray) -> float:
    """How many times better the model fits ``loss_part`` than ``loss_rest``: the ratio of their median
    losses, rest over part (the backdoor's signature when >= the loss ratio; 0 when the rest is fitted
    perfectly and the part is not, 1 when both are)."""
    lp, lr = float(np.median(loss_part)), float(np.median(loss_rest))
    if lr <= 0:
        return 1.0 if lp <= 0 else 0.0
    return lr / max(lp, np.finfo(np.float64).tiny)


def _robust_standardize(X: np.ndarray) -> np.ndarray:
    from flare_core.detectors.preprocess import robust_standardize

    return robust_standardize(X)[0]


def _fisher(F: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Unit Fisher direction with group *means* (the Gaussian mixture's model, and what d' measures);
    :func:`.decision.fisher_direction` uses medians for the abnormality groups' heavy tails."""
    from sklearn.covariance import LedoitWolf

    centred = np.concatenate([F[a] - F[a].mean(0), F[b] - F[b].mean(0)])
    cov = LedoitWolf().fit(centred).covariance_
    w = np.linalg.solve(cov, F[a].mean(0) - F[b].mean(0))
    norm = np.linalg.norm(w)
    return w / norm if norm > 0 else w


def _dprime(pa: np.ndarray, pb: np.ndarray, if_no_spread: float) -> float:
    """|mean difference| / sqrt(mean of the two variances) of two 1-D projections."""
    spread = np.sqrt((pa.var() + pb.var()) / 2)
    return float(abs(pa.mean() - pb.mean()) / spread) if spread > 0 else if_no_spread


def heldout_dprime(F: np.ndarray, a: np.ndarray, random_state: Optional[int] = 0) -> float:
    """d' between rows ``a`` and the others of ``F`` along a Fisher direction fitted on one random half
    of the rows and measured on the other, both ways round; the smaller of the two (0.0 when a side has
    too few rows).  d' = |mean difference| / sqrt(mean of the two variances)."""
    a = np.asarray(a, dtype=bool)
    b = ~a
    half = np.random.default_rng(random_state).random(len(F)) < 0.5
    values = []
    for fit, test in ((half, ~half), (~half, half)):
        if min(int((a & fit).sum()), int((b & fit).sum()), int((a & test).sum()), int((b & test).sum())) < MIN_HALF_ROWS:
            return 0.0
        w = _fisher(F, a & fit, b & fit)
        values.append(_dprime(F[a & test] @ w, F[b & test] @ w, float("inf")))
    return min(values)


def _refine(F: np.ndarray, side: np.ndarray, seed: int) -> np.ndarray:
    """Refine a two-way split of ``F`` with a two-component Gaussian mixture of shared covariance
    started at the two sides' means (the unsupervised counterpart of a linear discriminant)."""
    from sklearn.mixture import GaussianMixture

    means = np.stack([F[side].mean(0), F[~side].mean(0)])
    try:
        gm = GaussianMixture(2, covariance_type="tied", means_init=means, random_state=seed, max_iter=200,
                             reg_covar=1e-4).fit(F)
        refined = gm.predict(F) == 0
        if refined.any() and not refined.all():
            return refined
    except (ValueError, np.linalg.LinAlgError):  # degenerate covariance: keep the split as it was
        pass
    return side


def _insample_dprime(F: np.ndarray, a: np.ndarray) -> float:
    """d' of rows ``a`` against the rest along their Fisher direction, fitted and measured on all rows
    (optimistic; used only to rank candidate splits before the held-out test)."""
    if a.sum() < 2 or (~a).sum() < 2:
        return 0.0
    w = _fisher(F, a, ~a)
    return _dprime(F[a] @ w, F[~a] @ w, 0.0)


def candidate_splits(F: np.ndarray, max_clusters: int = 2, random_state: Optional[int] = 0,
                     min_clusters: int = 2) -> list:
    """Two-way splits of the rows of ``F`` worth testing (bool masks, each refined by :func:`_refine`):
    the 2-means split, and with ``max_clusters`` k > 2 also every k-means cluster (k = 3..max_clusters)
    against the rest of the rows -- a poison set of a few percent of its class is one cluster among
    several sub-modes of the class, rarely one side of the best 2-means cut."""
    return [side for side, _ in _candidates(F, max_clusters, random_state, min_clusters)]


def _candidates(F: np.ndarray, max_clusters: int, random_state: Optional[int], min_clusters: int) -> list:
    """:func:`candidate_splits` with where each split came from: (mask, "2-means" | "k-means cluster, k=K")."""
    from sklearn.cluster import KMeans

    seed = 0 if random_state is None else int(random_state)
    out, seen = [], set()
    for k in range(max(2, int(min_clusters)), max(2, int(max_clusters)) + 1):
        if k >= len(F):
            break
        labels = KMeans(k, n_init=5 if k == 2 else 3, random_state=seed).fit_predict(F)
        for j in range(1 if k == 2 else k):
            side = labels == j
            if side.all() or not side.any():
                continue
            side = _refine(F, side, seed)
            if k > 2 and side.sum() > len(side) / 2:  # a cluster against the rest: the cluster is the side
                side = ~side
            key = np.packbits(side if side.sum() <= len(side) / 2 else ~side).tobytes()
            if key not in seen:
                seen.add(key)
                out.append((side, "2-means" if k == 2 else f"k-means cluster, k={k}"))
    return out


def bisect_once(Z: np.ndarray, n_components: int = DEFAULT_COMPONENTS,
                random_state: Optional[int] = 0, max_clusters: int = 2,
                min_separation: Optional[float] = None) -> tuple[np.ndarray, float]:
    """Split rows of ``Z`` in two; returns (bool mask of one side, held-out d' of the split).

    In PCA space the 2-means split (refined by a tied Gaussian mixture) is measured first
    (:func:`heldout_dprime`).  With ``max_clusters`` > 2, when it falls short of ``min_separation``,
    the other candidates of :func:`candidate_splits` are ranked by their in-sample d' and the best one
    alone is measured held-out (one test, not a search over held-out values); the larger of the two
    held-out values wins.  So a class the plain split already separates is split exactly as before.
    (The peel step always uses the plain split: its loss test was calibrated on it.)"""
    side, d, _ = _bisect(Z, n_components, random_state, max_clusters, min_separation)
    return side, d


def _bisect(Z: np.ndarray, n_components: int, random_state: Optional[int], max_clusters: int,
            min_separation: Optional[float]) -> tuple[np.ndarray, float, str]:
    """:func:`bisect_once` plus which candidate the split is ("2-means" or "k-means cluster, k=K")."""
    from sklearn.decomposition import PCA

    seed = 0 if random_state is None else int(random_state)
    k = int(min(n_components, Z.shape[1], len(Z) - 1))
    F = PCA(k, random_state=seed).fit_transform(Z) if k < Z.shape[1] else Z
    first = _candidates(F, 2, seed, 2)
    if not first:
        return np.zeros(len(Z), dtype=bool), 0.0, "none"
    (side, kind), d = first[0], heldout_dprime(F, first[0][0], seed)
    if max_clusters <= 2 or (min_separation is not None and d >= min_separation):
        return side, d, kind
    others = _candidates(F, max_clusters, seed, 3)
    if others:
        best, best_kind = max(others, key=lambda c: _insample_dprime(F, c[0]))
        d_best = heldout_dprime(F, best, seed)
        if d_best > d:
            return best, d_best, best_kind
    return side, d, kind


def bisect_class(Z: np.ndarray, *, min_separation: float = DEFAULT_MIN_SEPARATION, max_depth: int = DEFAULT_MAX_DEPTH,
                 n_components: int = DEFAULT_COMPONENTS, min_split: int = MIN_SPLIT_ROWS,
                 random_state: Optional[int] = 0, keep_rows: bool = False,
                 max_clusters: int = DEFAULT_MAX_CLUSTERS, loss: Optional[np.ndarray] = None,
                 loss_separation: Optional[float] = DEFAULT_LOSS_SEPARATION, loss_ratio: float = DEFAULT_LOSS_RATIO,
                 minority: float = DEFAULT_MINORITY,
                 first_minority_separation: Optional[float] = None) -> tuple[list, list]:
    """Leaves (arrays of row positions) of the recursive bisection of ``Z`` and a record of every split
    tried: ``{"depth", "rows", "sizes", "dprime", "accepted", "candidate", "by"}`` (``candidate``: "2-means"
    or "k-means cluster, k=K", the split :func:`bisect_once` chose; ``by``: "separation", "loss" or None;
    plus ``"sides"``, the two arrays of row positions, with ``keep_rows=True``: the calibration benchmark
    needs them).

    With ``loss`` (per row) and ``loss_separation`` given, a split short of ``min_separation`` still
    stands when it reaches ``loss_separation``, its smaller side holds under ``minority`` of the rows and
    the model fits that side ``loss_ratio`` times better than the other (median loss): the two signals
    together, distance and the backdoor's loss signature (step 2 of the module docstring).  With
    ``first_minority_separation``, the *first* split stands at that d' when its smaller side is a minority
    (``by``: "other classes"; :func:`latent_detect` sets it when another class already held poison)."""
    leaves: list = []
    splits: list = []
    loss = None if loss is None else np.asarray(loss, dtype=np.float64)

    def visit(rows: np.ndarray, depth: int) -> None:
        if len(rows) < min_split or depth >= max_depth:
            leaves.append(rows)
            return
        side, d, kind = _bisect(_robust_standardize(Z[rows]), n_components, random_state, max_clusters,
                                min_separation)
        by = "separation" if d >= min_separation else None
        record = {"depth": depth, "rows": int(len(rows)), "sizes": [int(side.sum()), int((~side).sum())],
                  "dprime": round(float(d), 3), "candidate": kind}
        if loss is not None:
            small = side if side.sum() <= (~side).sum() else ~side
            ratio = fitted_better(loss[rows[small]], loss[rows[~small]])
            record["loss_ratio"] = float(f"{ratio:.4g}")
            if (by is None and loss_separation is not None and d >= loss_separation
                    and small.sum() < minority * len(rows) and ratio >= loss_ratio):
                by = "loss"
        if (by is None and depth == 0 and first_minority_separation is not None and d >= first_minority_separation
                and min(side.sum(), (~side).sum()) < minority * len(rows)):
            by = "other classes"
        accepted = by is not None
        record.update(accepted=accepted, by=by)
        splits.append(record)
        if keep_rows:
            splits[-1]["sides"] = (rows[side], rows[~side])
        if not accepted:
            leaves.append(rows)
            return
        visit(rows[side], depth + 1)
        visit(rows[~side], depth + 1)

    visit(np.arange(len(Z)), 0)
    return leaves, splits


def poisoned_leaves(sizes: list, losses: list, *, minority: float = DEFAULT_MINORITY,
                    loss_ratio: float = DEFAULT_LOSS_RATIO) -> tuple[list, Optional[int], str]:
    """(flagged leaf positions, reference leaf position, reason) -- the rule of step 3 in the module
    docstring.  One leaf: nothing flagged."""
    n = float(sum(sizes))
    if len(sizes) < 2 or n == 0:
        return [], (0 if sizes else None), "the class did not split"
    major = [i for i, s in enumerate(sizes) if s >= minority * n] or [int(np.argmax(sizes))]
    ref = max(major, key=lambda i: (losses[i], sizes[i]))
    flagged = [i for i in range(len(sizes)) if i not in major]
    low_loss = [i for i in major if i != ref and losses[i] * loss_ratio <= losses[ref]]
    flagged += low_loss
    other_major = [i for i in major if i != ref and i not in low_loss]
    if flagged:
        reason = (f"split into {len(sizes)} parts; the largest part the model fits worst is genuine, "
                  f"{len(flagged)} part(s) flagged")
    else:
        reason = ("split into parts of comparable size and loss (median loss ratio below "
                  f"{loss_ratio:g}): no side can be called poison, nothing flagged")
    if other_major and flagged:
        reason += f"; {len(other_major)} other large part(s) kept (loss not {loss_ratio:g}x lower)"
    return sorted(flagged), ref, reason


def _leaf_axis(Zc: np.ndarray, ref_rows: np.ndarray, flagged_rows: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The Fisher direction reference -> flagged leaves, and the reference leaf's median and robust spread
    along it: ``(w, median, spread)`` (:func:`_leaf_scores`)."""
    ref = np.zeros(len(Zc), dtype=bool)
    ref[ref_rows] = True
    fl = np.zeros(len(Zc), dtype=bool)
    fl[flagged_rows] = True
    w = _fisher(Zc, fl, ref)
    proj = Zc @ w
    med = np.median(proj[ref])
    mad = 1.4826 * np.median(np.abs(proj[ref] - med))
    spread = mad if mad > 0 else (proj[ref].std() or 1.0)
    return w, med, spread


def _leaf_scores(Zc: np.ndarray, ref_rows: np.ndarray, flagged_rows: np.ndarray) -> np.ndarray:
    """Distance from the reference leaf along the Fisher direction reference -> flagged leaves, in units
    of the reference leaf's robust spread along it (reference samples ~0-2, flagged ones ~d')."""
    w, med, spread = _leaf_axis(Zc, ref_rows, flagged_rows)
    return np.abs(Zc @ w - med) / spread


def peel(Z: np.ndarray, rows: np.ndarray, loss: np.ndarray, *, peel_separation: float = DEFAULT_PEEL_SEPARATION,
         loss_ratio: float = DEFAULT_LOSS_RATIO, max_rounds: int = DEFAULT_MAX_DEPTH, n_components: int = DEFAULT_COMPONENTS,
         min_split: int = MIN_SPLIT_ROWS, random_state: Optional[int] = 0) -> tuple[list, np.ndarray, list]:
    """Step 4 of the module docstring on the reference leaf ``rows`` of ``Z``: (peeled parts, the rows
    left as reference, a record of every round)."""
    peeled: list = []
    record: list = []
    for _ in range(max_rounds):
        if len(rows) < min_split:
            break
        side, d = bisect_once(_robust_standardize(Z[rows]), n_components, random_state, max_clusters=2)
        small, large = (rows[side], rows[~side]) if side.sum() <= (~side).sum() else (rows[~side], rows[side])
        l_small, l_large = float(np.median(loss[small])), float(np.median(loss[large]))
        ok = bool(d >= peel_separation and l_small * loss_ratio <= l_large)
        record.append({"rows": int(len(rows)), "sizes": [int(len(small)), int(len(large))], "dprime": round(float(d), 3),
                       "median_loss": [float(f"{l_small:.4g}"), float(f"{l_large:.4g}")], "peeled": ok})
        if not ok:
            break
        peeled.append(small)
        rows = large
    return peeled, rows, record


def join_neighbours(Z: np.ndarray, flagged: np.ndarray, k: int = JOIN_NEIGHBOURS,
                    max_rounds: int = JOIN_ROUNDS, sample_size: Optional[int] = None,
                    random_state: Optional[int] = 0) -> np.ndarray:
    """Step 5: the rows of ``Z`` that join the flagged ones because most of their ``k`` nearest rows are
    flagged, repeated until stable (bool mask of the newly joined rows; ``flagged`` is not modified).

    With ``sample_size`` and more rows than that, the neighbours are looked for among a random sample of
    ``sample_size`` rows (seeded; a sampled row is not its own neighbour): the same vote, on a bounded search."""
    fl = np.asarray(flagged, dtype=bool).copy()
    if not fl.any() or fl.all() or len(Z) <= k:
        return np.zeros(len(Z), dtype=bool)
    if sample_size is not None and len(Z) > sample_size:
        from flare_core.detectors.placement import nearest_rows

        rng = np.random.default_rng([0 if random_state is None else int(random_state), _SAMPLE_STREAM])
        ref = np.sort(rng.choice(len(Z), size=int(sample_size), replace=False))
        near = nearest_rows(Z[ref], Z, k + 1)  # positions in ref
        own = np.zeros(len(Z), dtype=bool)
        own[ref] = True
        # a sampled row's nearest reference row is itself (unless an exact copy came first): drop it; others drop
        # their (k + 1)-th
        self_at = np.where(own, np.argmax(ref[near] == np.arange(len(Z))[:, None], axis=1), k)
        keep = np.ones(near.shape, dtype=bool)
        keep[np.arange(len(Z)), self_at] = False
        nb = ref[near[keep].reshape(len(Z), k)]
    else:
        from sklearn.neighbors import NearestNeighbors

        nb = NearestNeighbors(n_neighbors=k + 1).fit(Z).kneighbors(Z, return_distance=False)[:, 1:]
    for _ in range(max_rounds):
        new = ~fl & (fl[nb].mean(axis=1) > 0.5)
        if not new.any():
            break
        fl |= new
    return fl & ~np.asarray(flagged, dtype=bool)


def join_linear(P: np.ndarray, flagged: np.ndarray, *, folds: int = JOIN_LINEAR_FOLDS, C: float = JOIN_LINEAR_C,
                random_state: Optional[int] = 0) -> np.ndarray:
    """The join step's second rule: the unflagged rows of one class's features ``P`` that a linear
    classifier trained to tell the flagged rows from the rest puts on the flagged side, out of fold.

    A logistic regression (features standardised inside each fold) is fitted on ``folds - 1`` folds and
    predicts the held-out fold, so no row is judged by a model that saw it; a row joins when its
    held-out probability of "flagged" is over 0.5 although it was not flagged.  The kNN majority of
    :func:`join_neighbours` joins a row whose neighbours are flagged; this joins a row that lies on the
    flagged population's side of the class, even where its neighbours are genuine (the warped poison
    of WaNet that sits at the genuine core's edge: Fashion-MNIST 10 %, 4 epochs, 42 of the 125 missed
    poisoned samples for 12 genuine).  Returns the bool mask of the newly joined rows (none when either
    side has fewer than ``folds`` rows); ``flagged`` is not modified."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fl = np.asarray(flagged, dtype=bool)
    if fl.sum() < folds or (~fl).sum() < folds:
        return np.zeros(len(fl), dtype=bool)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
    proba = cross_val_predict(model, np.asarray(P, dtype=np.float64), fl, cv=cv, method="predict_proba")[:, 1]
    return ~fl & (proba > 0.5)


def split_class(P: np.ndarray, loss: np.ndarray, label: int, *, min_separation: float = DEFAULT_MIN_SEPARATION,
                minority: float = DEFAULT_MINORITY, loss_ratio: float = DEFAULT_LOSS_RATIO,
                peel_separation: float = DEFAULT_PEEL_SEPARATION,
                max_depth: int = DEFAULT_MAX_DEPTH, n_components: int = DEFAULT_COMPONENTS,
                random_state: Optional[int] = 0, max_clusters: int = DEFAULT_MAX_CLUSTERS,
                loss_separation: Optional[float] = DEFAULT_LOSS_SEPARATION, keep_rows: bool = False,
                first_minority_separation: Optional[float] = None,
                sample_size: Optional[int] = LATENT_SAMPLE_SIZE) -> ClassSplit:
    """The latent stage for one class: ``P`` its (n, D) penultimate features, ``loss`` its per-sample loss.
    ``loss_separation``: see :func:`bisect_class` (None: splits stand on ``min_separation`` alone).
    ``keep_rows``: each record in ``splits`` also holds its two sides (row positions; for the calibration).

    A class of more than ``sample_size`` rows (:data:`LATENT_SAMPLE_SIZE`; None: never) is split on a random
    sample of that many (:func:`_split_sampled`): every step above runs on the sample, then every other row
    joins the part most of its nearest sampled rows are in."""
    if sample_size is not None and len(P) > sample_size:
        return _split_sampled(P, loss, label, int(sample_size), min_separation=min_separation, minority=minority,
                              loss_ratio=loss_ratio, peel_separation=peel_separation, max_depth=max_depth,
                              n_components=n_components, random_state=random_state, max_clusters=max_clusters,
                              loss_separation=loss_separation, keep_rows=keep_rows,
                              first_minority_separation=first_minority_separation)
    Z = _robust_standardize(np.asarray(P, dtype=np.float64))
    leaves, splits = bisect_class(Z, min_separation=min_separation, max_depth=max_depth,
                                  n_components=n_components, random_state=random_state, max_clusters=max_clusters,
                                  keep_rows=keep_rows, loss=loss, loss_separation=loss_separation,
                                  loss_ratio=loss_ratio, minority=minority,
                                  first_minority_separation=first_minority_separation)
    sizes = [int(len(leaf)) for leaf in leaves]
    losses = [float(np.median(loss[leaf])) for leaf in leaves]
    flagged, ref, reason = poisoned_leaves(sizes, losses, minority=minority, loss_ratio=loss_ratio)
    peel_record: list = []
    flagged_loss = float(np.median(loss[np.concatenate([leaves[i] for i in flagged])])) if flagged else np.inf
    if flagged and flagged_loss * loss_ratio <= losses[ref]:
        peeled, rest, peel_record = peel(Z, leaves[ref], loss, peel_separation=peel_separation, loss_ratio=loss_ratio,
                                         max_rounds=max_depth, n_components=n_components, random_state=random_state)
        if peeled:
            leaves = leaves[:ref] + [rest] + leaves[ref + 1:] + peeled
            flagged = flagged + list(range(len(sizes), len(sizes) + len(peeled)))
            sizes = [int(len(leaf)) for leaf in leaves]
            losses = [float(np.median(loss[leaf])) for leaf in leaves]
            reason += f"; {len(peeled)} more part(s) peeled off the genuine part (far better fitted)"
    n_joined = 0
    if flagged:
        mask = np.zeros(len(P), dtype=bool)
        for i in flagged:
            mask[leaves[i]] = True
        joined = join_neighbours(Z, mask)
        n_joined = int(joined.sum())
        if n_joined:
            joined_rows = np.flatnonzero(joined)
            leaves = [np.setdiff1d(leaf, joined_rows) if i not in flagged else leaf for i, leaf in enumerate(leaves)]
            leaves.append(joined_rows)
            flagged = flagged + [len(leaves) - 1]
            sizes = [int(len(leaf)) for leaf in leaves]
            losses = [float(np.median(loss[leaf])) if len(leaf) else float("nan") for leaf in leaves]
            reason += f"; {n_joined} sample(s) joined their flagged neighbours"
    scores = np.zeros(len(P))
    if flagged:
        flagged_rows = np.concatenate([leaves[i] for i in flagged])
        scores = _leaf_scores(Z, leaves[ref], flagged_rows)
    evidence = {"class": int(label), "n": int(len(P)), "splits": splits, "peel": peel_record, "joined": n_joined,
                "leaves": [{"size": s, "median_loss": float(f"{l_:.4g}") if np.isfinite(l_) else None, "flagged": i in flagged,
                            "reference": i == ref} for i, (s, l_) in enumerate(zip(sizes, losses))],
                "reason": reason, "n_flagged": int(sum(sizes[i] for i in flagged))}
    return ClassSplit(int(label), leaves, flagged, splits, losses, reason, scores, evidence)


def _standardized_rows(P: np.ndarray, center: np.ndarray, scale: np.ndarray, block: int = 65536):
    """``(P - center) / scale`` in float64, ``block`` rows at a time (``P`` may be float32 or memory-mapped)."""
    for start in range(0, len(P), block):
        yield start, (np.asarray(P[start:start + block], dtype=np.float64) - center) / scale


def _split_sampled(P: np.ndarray, loss: np.ndarray, label: int, sample_size: int, *,
                   random_state: Optional[int] = 0, n_components: int = DEFAULT_COMPONENTS,
                   keep_rows: bool = False, **params: Any) -> ClassSplit:
    """:func:`split_class` of a class larger than ``sample_size``: the split of a random sample of its rows
    (seeded by ``random_state`` and the class), extended to every row.

    Each row outside the sample takes the part (leaf) most of its ``JOIN_NEIGHBOURS`` nearest sampled rows are
    in (ties: the lowest leaf), searched in the sample's first ``n_components`` principal components of the
    class's robust-standardised features (the space the first split is made in).  The leaves' sizes and median
    losses are then those of every row; the split records (``splits``, ``peel``) stay those of the sample.
    Scores use the sample's Fisher direction from the reference part to the flagged ones (:func:`_leaf_axis`),
    so a sampled row scores as in the sample's own split (to rounding)."""
    from sklearn.decomposition import PCA

    from flare_core.detectors.placement import place_by_neighbours
    from flare_core.detectors.preprocess import robust_standardize

    n = len(P)
    seed = 0 if random_state is None else int(random_state)
    rng = np.random.default_rng([seed, int(label), _SAMPLE_STREAM])
    sample = np.sort(rng.choice(n, size=sample_size, replace=False))
    part = split_class(P[sample], loss[sample], label, random_state=random_state, n_components=n_components,
                       keep_rows=keep_rows, sample_size=None, **params)
    Zs, center, scale = robust_standardize(np.asarray(P[sample], dtype=np.float64))
    leaf_of_sample = np.zeros(sample_size, dtype=np.int64)
    for i, leaf in enumerate(part.leaves):
        leaf_of_sample[leaf] = i
    k = int(min(n_components, Zs.shape[1], sample_size - 1))
    pca = PCA(k, random_state=seed).fit(Zs)
    F = np.empty((n, k))
    for start, Zb in _standardized_rows(P, center, scale):
        F[start:start + len(Zb)] = pca.transform(Zb)
    _, leaf_of = place_by_neighbours(F, sample, np.zeros((sample_size, 2)), leaf_of_sample, k=JOIN_NEIGHBOURS)
    del F
    leaves = [np.flatnonzero(leaf_of == i) for i in range(len(part.leaves))]
    sizes = [int(len(leaf)) for leaf in leaves]
    losses = [float(np.median(loss[leaf])) if len(leaf) else float("nan") for leaf in leaves]
    scores = np.zeros(n)
    if part.flagged_leaves:
        ref = next(i for i, e in enumerate(part.evidence["leaves"]) if e["reference"])
        w, med, spread = _leaf_axis(Zs, part.leaves[ref], np.concatenate([part.leaves[i] for i in part.flagged_leaves]))
        for start, Zb in _standardized_rows(P, center, scale):
            scores[start:start + len(Zb)] = np.abs(Zb @ w - med) / spread
    splits = part.splits
    if keep_rows:  # the sides as positions in the class, not in the sample
        splits = [{**r, "sides": tuple(sample[side] for side in r["sides"])} if "sides" in r else r for r in splits]
    note = (f"split on a sample of {sample_size:,} of its {n:,} rows; the others joined the part most of their "
            f"{JOIN_NEIGHBOURS} nearest sampled rows are in")
    evidence = {**part.evidence, "n": int(n), "sampled": {"rows": int(sample_size), "of": int(n)},
                "leaves": [{**e, "size": s, "median_loss": float(f"{l_:.4g}") if np.isfinite(l_) else None}
                           for e, s, l_ in zip(part.evidence["leaves"], sizes, losses)],
                "reason": part.evidence["reason"] + "; " + note,
                "n_flagged": int(sum(sizes[i] for i in part.flagged_leaves))}
    return ClassSplit(part.label, leaves, list(part.flagged_leaves), splits, losses, part.reason + "; " + note,
                      scores, evidence)


def next_class(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The class each sample's logits rate highest after its label (N,)."""
    z = np.array(logits, dtype=np.float64, copy=True)
    z[np.arange(len(z)), np.asarray(y)] = -np.inf
    return z.argmax(axis=1)


def histogram_distance(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Total variation distance between the class histograms of ``a`` and ``b`` (0 = same, 1 = disjoint)."""
    pa = np.bincount(a, minlength=k) / max(len(a), 1)
    pb = np.bincount(b, minlength=k) / max(len(b), 1)
    return float(0.5 * np.abs(pa - pb).sum())


def widely_flagged_classes(flagged: np.ndarray, y: np.ndarray, loss: np.ndarray, nxt: Optional[np.ndarray], *,
                           wide_share: Optional[float] = DEFAULT_WIDE_SHARE, loss_ratio: float = DEFAULT_LOSS_RATIO,
                           max_tv: float = DEFAULT_WIDE_MAX_TV,
                           min_classes: int = 2) -> dict[int, dict[str, float]]:
    """The classes of a dataset-wide split (step 6 of the module docstring): ``{class: {"share",
    "fitted_better", "next_class_tv"}}``.  A class is a candidate when its ``flagged`` samples hold at least
    ``wide_share`` of it and are fitted less than ``loss_ratio`` times better than its other samples
    (:func:`fitted_better`); with at least ``min_classes`` candidates whose flagged samples' next class
    (``nxt``, :func:`next_class`) is distributed like the rest of their class (median total variation over the
    candidates <= ``max_tv``), every candidate is returned; else ``{}``.  ``wide_share`` 0 or None, or no
    ``nxt``: never.  A class flagged whole is not a split and does not count."""
    if not wide_share or nxt is None:
        return {}
    k = int(max(int(np.max(nxt)), int(np.max(y)))) + 1
    wide = {}
    for c in np.unique(y[flagged]):
        in_c = y == c
        part, rest = flagged & in_c, ~flagged & in_c
        if not rest.any():
            continue
        share = int(part.sum()) / int(in_c.sum())
        better = fitted_better(loss[part], loss[rest])
        if share >= wide_share and better < loss_ratio:
            wide[int(c)] = {"share": round(float(share), 4), "fitted_better": round(float(better), 3),
                            "next_class_tv": round(histogram_distance(nxt[part], nxt[rest], k), 3)}
    if len(wide) < min_classes or np.median([w["next_class_tv"] for w in wide.values()]) > max_tv:
        return {}
    return wide


def final_wide_classes(flagged: np.ndarray, y: np.ndarray, loss: np.ndarray, nxt: Optional[np.ndarray],
                       known: Any = (), **params: Any) -> dict[int, dict[str, float]]:
    """:func:`widely_flagged_classes` on FLARE's final flags, whichever stage made them; and, in the ``known``
    classes of a split the latent stage already found dataset-wide, each class on its own (one class flagged
    again by a later stage is a part of that split, not poison found anew)."""
    wide = widely_flagged_classes(flagged, y, loss, nxt, **params)
    known = [int(c) for c in known]
    if known:
        again = widely_flagged_classes(flagged & np.isin(y, known), y, loss, nxt,
                                       **{**params, "min_classes": 1, "max_tv": 1.0})
        wide.update({c: w for c, w in again.items() if c not in wide})
    return wide


def _flag_mask(results: dict, y: np.ndarray) -> np.ndarray:
    """The samples the per-class ``results`` (:class:`ClassSplit` by class) flag."""
    flagged = np.zeros(len(y), dtype=bool)
    for c, res in results.items():
        idx = np.flatnonzero(y == c)
        for i in res.flagged_leaves:
            flagged[idx[res.leaves[i]]] = True
    return flagged


def _unflag(res: ClassSplit, why: str) -> ClassSplit:
    """``res`` with nothing flagged (its split kept as evidence), and why."""
    evidence = {**res.evidence, "reason": res.evidence["reason"] + "; " + why, "n_flagged": 0,
                "leaves": [{**leaf, "flagged": False} for leaf in res.evidence["leaves"]]}
    return ClassSplit(res.label, res.leaves, [], res.splits, res.leaf_loss, res.reason + "; " + why,
                      np.zeros_like(res.scores), evidence)


def latent_detect(P: np.ndarray, y: np.ndarray, loss: np.ndarray, **params: Any) -> tuple:
    """Run :func:`split_class` on every class with at least ``MIN_SPLIT_ROWS`` samples.

    When some class was found to hold poison, every class where nothing was found and whose first split
    was a minority split (smaller side under ``minority``) at d' >= ``loss_separation`` (5.5) is split
    again with that lower bar for its first split: poison in one class is the second signal for the
    others, as the loss signature is within a class.  All-to-all attacks put a poison set in every class
    (CIFAR-10 Blended all-to-all, 12 epochs: eight classes split off their poison exactly at d' 6.7-8.9,
    two at 5.70 / 6.24, fitted no better than their genuine samples); over the 25 calibration models the
    first minority splits of genuine-only classes reach d' 5.13 at most.

    Given ``next_class`` (:func:`next_class` of the logits), the classes of a dataset-wide split
    (:func:`widely_flagged_classes`, ``wide_share``) are not flagged, and do not lower the bar for the others.

    Returns (flagged (N,) bool, scores (N,) float, leaf id (N,) int: 0 = the class's reference leaf,
    1.. others, per class; evidence list).
    """
    n = len(P)
    flagged = np.zeros(n, dtype=bool)
    scores = np.zeros(n)
    leaf_id = np.zeros(n, dtype=np.int64)
    results: dict = {}
    evidence: dict = {}
    minority = params.get("minority", DEFAULT_MINORITY)
    second_bar = params.get("loss_separation", DEFAULT_LOSS_SEPARATION)
    wide_share = params.pop("wide_share", DEFAULT_WIDE_SHARE)
    nxt = params.pop("next_class", None)
    loss_ratio = params.get("loss_ratio", DEFAULT_LOSS_RATIO)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < MIN_SPLIT_ROWS:
            evidence[c] = {"class": int(c), "n": int(len(idx)), "reason": f"fewer than {MIN_SPLIT_ROWS} samples",
                           "splits": [], "leaves": [], "n_flagged": 0}
            continue
        results[c] = split_class(P[idx], loss[idx], int(c), **params)
    wide = widely_flagged_classes(_flag_mask(results, y), y, loss, nxt, wide_share=wide_share,
                                  loss_ratio=loss_ratio)
    if second_bar is not None and any(r.flagged_leaves for c, r in results.items() if int(c) not in wide):
        for c, res in list(results.items()):
            first = res.splits[0] if res.splits else None
            if (res.flagged_leaves or first is None or first["accepted"] or first["dprime"] < second_bar
                    or min(first["sizes"]) >= minority * sum(first["sizes"])):
                continue
            idx = np.flatnonzero(y == c)
            results[c] = split_class(P[idx], loss[idx], int(c), first_minority_separation=second_bar, **params)
            results[c].evidence["reason"] += " (first split accepted at the lower bar: poison found in another class)"
    wide = widely_flagged_classes(_flag_mask(results, y), y, loss, nxt, wide_share=wide_share,
                                  loss_ratio=loss_ratio)
    if wide:
        shares = ", ".join(f"{w['share']:.0%}" for w in wide.values())
        why = (f"not flagged: {len(wide)} classes split this way (flagged shares {shares}, fitted less than "
               f"{loss_ratio:g}x better, the same classes rated next as the rest of the class), a dataset-wide "
               "split such as a second source, not a backdoor's poison")
        for c, w in wide.items():
            results[c] = _unflag(results[c], why)
            results[c].evidence["dataset_wide"] = w
    for c, res in results.items():
        idx = np.flatnonzero(y == c)
        ref = next((i for i, e in enumerate(res.evidence["leaves"]) if e["reference"]), 0)
        order = [ref] + [i for i in range(len(res.leaves)) if i != ref]
        for rank, i in enumerate(order):
            leaf_id[idx[res.leaves[i]]] = rank
        for i in res.flagged_leaves:
            flagged[idx[res.leaves[i]]] = True
        scores[idx] = res.scores
        evidence[c] = res.evidence
    return flagged, scores, leaf_id, [evidence[c] for c in sorted(evidence)]


def confirm_groups(P: np.ndarray, y: np.ndarray, flagged: np.ndarray, groups: np.ndarray, *,
                   min_separation: float = 4.5, loss: Optional[np.ndarray] = None,
                   loss_ratio: float = DEFAULT_CONFIRM_LOSS_RATIO,
                   pooled_separation: float = DEFAULT_CONFIRM_POOLED_SEPARATION,
                   random_state: Optional[int] = 0) -> tuple[np.ndarray, list]:
    """Cross-check groups flagged by FLARE's per-layer stage in the penultimate features ``P``.

    A flagged group (rows of ``flagged`` sharing a ``groups`` id) passes on **separation** when, in the
    classes where it has enough rows on both sides for a held-out d' (``MIN_HALF_ROWS`` x 2), the median
    d' of its rows against the rest of their class is at least ``min_separation``.  Poison found by the
    per-layer stage is usually a population of its own in its class (BadNets: d' 11.8-20.6); clumps of
    genuine outliers in a heavy-tailed layer are not (0.9-2.0).

    With the per-sample ``loss`` given, a group also passes on its **loss signature**: the group's part in
    its largest class has a median loss at least ``loss_ratio`` times below the rest of that class (a
    backdoor is a shortcut the model fits far better than genuine samples, the rule of the latent stage's
    step 3).  A warping trigger can leave the poison close to its class in the penultimate features while
    the model fits it thousands of times better (CIFAR-10 WaNet, 12 epochs: d' 2.2, loss ratio 4,000);
    the genuine clumps the separation test refuses were fitted 2.9-4.7x better on the calibration models
    and 13.5x on a held-out one (hence the default of 100, :data:`DEFAULT_CONFIRM_LOSS_RATIO`).  A group too
    small for a held-out d' in every class is measured **pooled** instead (:func:`pooled_heldout_dprime`:
    each of its classes robust-standardised on its own, the classes stacked, the group against the rest)
    and passes at ``pooled_separation`` (3.0; 0 = no pooled test): an all-to-all backdoor at a low rate
    puts a few dozen poisoned samples in every class (Fashion-MNIST BadNets all-to-all 0.5 %, 20 epochs:
    261 poisoned samples, 13-34 per class, pooled d' 3.9-4.3), while the genuine groups the per-layer
    stage made on the benchmark models that were too thin to check per class had pooled d' <= 2.04
    (:data:`DEFAULT_CONFIRM_POOLED_SEPARATION`).  One direction for all classes loses some separation
    (CIFAR-10 BadNets all-to-all 10 %: per class 11.4, pooled 3.8), hence the lower bar.  A group too small
    for that as well (unchecked) is kept only on its loss signature when ``loss`` is given (the unchecked
    groups measured were all genuine, loss ratios 0.6-3.0), and kept as before when it is not.  Returns
    (new flags, one record per group).  Inputs are not modified.
    """
    kept = np.asarray(flagged, dtype=bool).copy()
    loss = None if loss is None else np.asarray(loss, dtype=np.float64)
    records = []
    for g in np.unique(groups[kept]):
        members = kept & (groups == g)
        per_class = []
        for c in np.unique(y[members]):
            idx = np.flatnonzero(y == c)
            m = members[idx]
            if m.sum() >= 2 * MIN_HALF_ROWS and (~m).sum() >= 2 * MIN_HALF_ROWS:
                d = heldout_dprime(_robust_standardize(P[idx]), m, random_state)
                per_class.append({"class": int(c), "n": int(m.sum()), "dprime": round(float(d), 3)})
        median = float(np.median([r["dprime"] for r in per_class])) if per_class else None
        separated = median is not None and median >= min_separation
        pooled = None
        if not per_class and pooled_separation > 0 and members.sum() >= 2 * MIN_HALF_ROWS:
            pooled = pooled_heldout_dprime(P, y, members, random_state)
        ratio = None if loss is None else _main_part_ratio(loss, y, members)
        if separated:
            ok, by = True, "separation"
        elif pooled is not None and pooled >= pooled_separation:
            ok, by = True, "pooled separation"
        elif ratio is not None and ratio >= loss_ratio:
            ok, by = True, "loss"
        elif per_class or pooled is not None or loss is not None:
            ok, by = False, None
        else:
            ok, by = True, "unchecked"
        if not ok:
            kept[members] = False
        records.append({"group": int(g), "n": int(members.sum()), "classes": per_class,
                        "median_dprime": None if median is None else round(median, 3),
                        "pooled_dprime": None if pooled is None else round(pooled, 3),
                        "loss_ratio": None if ratio is None else float(f"{ratio:.4g}"),
                        "kept": bool(ok), "kept_by": by, "checked": bool(per_class) or pooled is not None})
    return kept, records


def pooled_heldout_dprime(P: np.ndarray, y: np.ndarray, members: np.ndarray,
                          random_state: Optional[int] = 0) -> float:
    """Held-out d' of the rows ``members`` against the other rows of their classes, the classes pooled.

    Each class the group touches is robust-standardised on its own (a class's own location and spread do
    not count as separation) and the classes are stacked; :func:`heldout_dprime` then fits one Fisher
    direction on a random half of the rows and measures the other.  A poison set spread thinly over many
    classes (all-to-all) shares its trigger's direction in every class; genuine outliers grouped by
    accident do not.  0.0 when a side has too few rows.  Inputs are not modified.
    """
    members = np.asarray(members, dtype=bool)
    if not members.any():
        return 0.0
    rows, marks = [], []
    for c in np.unique(y[members]):
        idx = np.flatnonzero(y == c)
        rows.append(_robust_standardize(P[idx]))
        marks.append(members[idx])
    return heldout_dprime(np.concatenate(rows), np.concatenate(marks), random_state)


def _main_part_ratio(loss: np.ndarray, y: np.ndarray, members: np.ndarray) -> Optional[float]:
    """:func:`fitted_better` of the group's part in its largest class against the rest of that class
    (None when the group is the whole class)."""
    c = np.bincount(y[members]).argmax()
    part, rest = members & (y == c), ~members & (y == c)
    return fitted_better(loss[part], loss[rest]) if rest.any() else None


def join_flagged_classes(P: np.ndarray, y: np.ndarray, flagged: np.ndarray, loss: np.ndarray, *,
                         loss_ratio: float = DEFAULT_LOSS_RATIO, k: int = JOIN_NEIGHBOURS, linear: bool = True,
                         random_state: Optional[int] = 0,
                         sample_size: Optional[int] = LATENT_SAMPLE_SIZE) -> tuple[np.ndarray, list]:
    """The join step (5) over FLARE default's final flags, whichever stage made them.

    In every class whose flagged samples carry the backdoor's loss signature (their median loss at least
    ``loss_ratio`` times below the rest of the class), a sample whose ``k`` nearest samples of its class in
    the penultimate features ``P`` are mostly flagged is flagged too (:func:`join_neighbours`, the same
    space as the latent stage's own join).  A per-layer group found at the full prefix often holds only the
    poison that is abnormal in range; the rest of the poison lies beside it in the penultimate features
    (CIFAR-10 WaNet, 12 epochs: 71.8 % -> 97.7 % of the poison, FPR 0.47 -> 0.55 %).  With ``linear``,
    a sample an out-of-fold linear classifier puts on the flagged side of the class joins too
    (:func:`join_linear`, after the neighbour rule; WaNet 10 %: 97.7 -> 98.5 % on CIFAR-10, 97.9 -> 98.6 %
    on Fashion-MNIST).  Classes without the signature are left alone.  In a class of more than ``sample_size``
    rows the neighbours are looked for among that many of them (:func:`join_neighbours`).  Returns (newly joined rows (N,)
    bool, one record per class with flags: ``joined`` = ``joined_neighbours`` + ``joined_linear``); inputs
    are not modified.
    """
    flagged = np.asarray(flagged, dtype=bool)
    loss = np.asarray(loss, dtype=np.float64)
    joined = np.zeros(len(flagged), dtype=bool)
    records = []
    for c in np.unique(y[flagged]):
        idx = np.flatnonzero(y == c)
        m = flagged[idx]
        if m.all():
            continue
        ratio = fitted_better(loss[idx[m]], loss[idx[~m]])
        signature = bool(ratio >= loss_ratio and m.sum() > k and (~m).sum() > k)
        n_knn = n_linear = 0
        if signature:
            j = join_neighbours(_robust_standardize(np.asarray(P[idx], dtype=np.float64)), m, k=k,
                                sample_size=sample_size, random_state=random_state)
            n_knn = int(j.sum())
            if linear:
                j_lin = join_linear(P[idx], m | j, random_state=random_state)
                n_linear = int(j_lin.sum())
                j = j | j_lin
            joined[idx[j]] = True
        record = {"class": int(c), "flagged": int(m.sum()), "loss_ratio": float(f"{ratio:.4g}"),
                  "signature": signature, "joined": n_knn + n_linear, "joined_neighbours": n_knn}
        if linear:
            record["joined_linear"] = n_linear
        records.append(record)
    return joined, records
