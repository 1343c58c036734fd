"""Turning one HDBSCAN condensed tree into flags: the published rule and our default rule.

Both functions take the condensed tree of one embedding (the whole dataset, or one class) and return
a :class:`Decision`; the subspace search and the per-class loop live in :mod:`.flare`.

**Faithful** (:func:`decide_faithful`, the published FLARE rule): walk the chain of largest clusters
(:func:`.tree.walk_largest_chain`), cut the tree at the first stable level, and call the most common
label of the cut benign -- HDBSCAN noise (-1) included, exactly as a plain ``argmax`` over label counts
does -- and flag every other label (noise too, when it is not the most common label).

**Default** (:func:`decide_default`): a cluster node C is a *separated* candidate when its
**persistence ratio**

    r(C) = median over C's points of lambda_p  /  lambda_birth(C)

is at least ``min_persistence``.  ``1 / lambda_birth`` is the (mutual-reachability) distance at which
C detaches from the rest, and ``1 / lambda_p`` the distance at which point p finally detaches from
C's points, so r is "gap to the rest of the data / typical spacing inside C": a margin relative to the
within-cluster spread, measured on HDBSCAN's density scale (scale-free, so one threshold fits every
embedding).  Fragments of one blob have r of about 1-2.5; islands have r far above.  Each point
belongs to the *highest* separated node above it (splits inside an island do not matter), or to the
root group when no separated node is above it.  Points that fall out of the root before any split
(HDBSCAN's top-level noise) are given the group of their nearest non-noise point in the embedding, so
noise is never a group.  The largest group is benign.  UMAP can tear one continuous cloud into
islands, so another group is flagged only when it also stands out in the *original* (standardised)
feature space, along the line ``w`` joining the benign and the group medians:

* **benign overlap** <= ``max_overlap``: the fraction of benign samples that reach past the group's
  5th percentile along ``w`` (a single cut separates the group from the benign samples), and
* **tail excess** >= ``min_excess``: the number of samples past that point divided by the number a
  normal distribution fitted robustly (median, MAD) to all samples along ``w`` puts there.  The tail
  of one Gaussian cloud, however UMAP cut it, gives about 1; a sub-population gives far more;

and it holds fewer than ``max_fraction`` of the points.  With more than 8 columns (the per-channel
view) the median line is swamped by the columns without signal, so both tests are measured along a
Fisher direction (Ledoit-Wolf shrunk covariance) fitted on one random half of the rows and measured on
the other half, both ways round (:func:`heldout_separation`).  Given the class labels, a group that
holds ``max_label_share`` of its majority class is a class, not poison, and is not flagged.  When nothing passes, nothing is flagged
("no poison found") and the statistics are kept as evidence.

The thresholds (``min_persistence=3``, ``max_overlap=0.02``, ``min_excess=5``) were chosen on
synthetic abnormality matrices (Gaussian, Gumbel, heavy-tailed and min-of-squared-z columns, 1-8
columns, with and without planted shifted groups): torn Gaussian fragments had tail excess 0.7-1.1;
clean fragments had r <= 3.2 or overlaps above 0.02; planted groups with a 3-sigma shift had r >= 3.4,
overlap <= 0.017 and excess in the hundreds.  Known limit: heavy-tailed clean columns can still give
a genuine clump of outliers that passes all three tests (about 1% of the samples in our trials).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from scipy import special
from scipy.spatial import cKDTree

from flare_core.detectors import tree as T

#: Up to this many columns the median line is used (the thresholds were calibrated on it, 1-8 columns).
FISHER_MIN_COLUMNS = 8
#: A group needs this many rows in each half for a held-out Fisher direction; else the median line.
FISHER_MIN_ROWS = 20
#: Non-separated nodes reported as evidence (those closest to the threshold).
EVIDENCE_NEAR_MISSES = 5


@dataclass
class Decision:
    """Flags for the points of one embedding.

    clusters: (n,) int -- default rule: 0 = benign group, 1.. = other groups by decreasing size;
              faithful rule: the labels of the cut (-1 = HDBSCAN noise, as the reference sees it).
    flagged:  (n,) bool.
    benign:   (n,) bool, the samples not flagged (scores measure the distance to them).
    found:    whether a split worth flagging was found (drives the subspace search).
    """

    clusters: np.ndarray
    flagged: np.ndarray
    benign: np.ndarray
    found: bool
    evidence: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- statistics

def persistence_ratios(tree: T.CondensedTree) -> dict[int, float]:
    """``r(C) = median(lambda_p for p in C) / lambda_birth(C)`` for every non-root cluster node.

    Infinite lambdas (exact duplicate points) are clipped to the largest finite lambda of the tree.
    """
    births = T.cluster_births(tree)
    lams = T.cluster_point_lambdas(tree)
    finite = tree.lambda_val[np.isfinite(tree.lambda_val)]
    cap = float(finite.max()) if len(finite) else 1.0
    out = {}
    for c, b in births.items():
        if c == tree.root or b <= 0 or len(lams[c]) == 0:
            continue
        out[c] = float(np.median(np.minimum(lams[c], cap)) / b)
    return out


def highest_marked_ancestor(tree: T.CondensedTree, marked: set[int]) -> dict[int, int]:
    """For every cluster node: its highest ancestor-or-self in ``marked`` (the root when there is none)."""
    parents = T.cluster_parents(tree)
    depths = T.cluster_depths(tree)
    rep = {tree.root: tree.root}
    for c in sorted(parents, key=lambda c: depths[c]):
        up = rep[parents[c]]
        rep[c] = up if up != tree.root else (c if c in marked else tree.root)
    return rep


def assign_to_nearest(embedding: np.ndarray, labels: np.ndarray, unassigned: np.ndarray) -> np.ndarray:
    """Copy of ``labels`` where every ``unassigned`` point takes the label of its nearest assigned point."""
    labels = np.array(labels, copy=True)
    unassigned = np.asarray(unassigned, dtype=bool)
    if not unassigned.any() or unassigned.all():
        return labels
    _, idx = cKDTree(embedding[~unassigned]).query(embedding[unassigned], k=1)
    labels[unassigned] = labels[~unassigned][idx]
    return labels


# --------------------------------------------------------------------------- default rule

def median_direction(features: np.ndarray, group: np.ndarray, benign: np.ndarray) -> np.ndarray:
    """The line joining the benign and the group medians (not normalised)."""
    return np.median(features[group], axis=0) - np.median(features[benign], axis=0)


def fisher_direction(features: np.ndarray, group: np.ndarray, benign: np.ndarray) -> np.ndarray:
    """Fisher's discriminant ``S^-1 (m_group - m_benign)`` with medians for the means and the pooled
    within-group covariance shrunk by Ledoit-Wolf (well defined for any number of columns).

    In many columns the median line is swamped by the columns that carry no signal; Fisher's direction
    weights each column by how well it separates, which a linear classifier would find.
    """
    diff = median_direction(features, group, benign)
    if features.shape[1] == 1:
        return diff
    from sklearn.covariance import LedoitWolf

    g, b = features[group], features[benign]
    centred = np.vstack([g - g.mean(axis=0), b - b.mean(axis=0)])
    cov = LedoitWolf(assume_centered=True).fit(centred).covariance_
    try:
        return np.linalg.solve(cov, diff)
    except np.linalg.LinAlgError:
        return diff


def benign_overlap(features: np.ndarray, group: np.ndarray, benign: np.ndarray, quantile: float = 0.05,
                   direction: Optional[np.ndarray] = None) -> float:
    """Fraction of ``benign`` rows past the ``group``'s ``quantile`` along ``direction`` (default: the
    benign->group median line).

    0 means a single linear cut separates the group from every benign sample (with ``quantile`` of the
    group's own samples allowed on the wrong side); fragments of one cloud give large values.
    """
    if direction is None:
        direction = median_direction(features, group, benign)
    norm = float(np.linalg.norm(direction))
    if norm == 0:
        return 1.0
    t_group = features[group] @ direction / norm
    t_benign = features[benign] @ direction / norm
    return float(np.mean(t_benign >= np.quantile(t_group, quantile)))


def tail_excess(features: np.ndarray, group: np.ndarray, benign: np.ndarray, quantile: float = 0.05,
                direction: Optional[np.ndarray] = None) -> float:
    """Samples past the ``group``'s ``quantile`` along ``direction`` (default: the benign->group median
    line), over a normal model's count.

    The normal model is fitted robustly (median, 1.4826 * MAD) to *all* rows projected on that line,
    so a minority sub-population barely moves it.  ~1 for a tail of a single Gaussian cloud, large for
    a separate sub-population; ``inf`` when the model puts (numerically) nothing there.
    """
    if direction is None:
        direction = median_direction(features, group, benign)
    norm = float(np.linalg.norm(direction))
    if norm == 0:
        return 1.0
    t = features @ direction / norm
    center = float(np.median(t))
    scale = 1.4826 * float(np.median(np.abs(t - center))) or float(t.std())
    if scale == 0:
        return 1.0
    cut = float(np.quantile(t[group], quantile))
    observed = int(np.sum(t >= cut))
    expected = len(t) * float(special.ndtr(-(cut - center) / scale))
    return observed / expected if expected > 0 else float("inf")


def heldout_separation(features: np.ndarray, group: np.ndarray, benign: np.ndarray,
                       random_state: Optional[int] = 0) -> tuple[float, float]:
    """(benign overlap, tail excess) along a Fisher direction fitted on one random half of the rows
    and measured on the other half, both ways round; the worse value of each is returned.

    Fitting and measuring on different rows keeps a direction chosen among many columns from
    separating two halves of one cloud by chance.  With one column (or too few rows to split) the
    median line on all rows is used (also up to ``FISHER_MIN_COLUMNS`` columns, where the thresholds
    were calibrated on it, and for groups too small to split).
    """
    if features.shape[1] <= FISHER_MIN_COLUMNS or min(int(group.sum()), int(benign.sum())) < 2 * FISHER_MIN_ROWS:
        return benign_overlap(features, group, benign), tail_excess(features, group, benign)
    rng = np.random.default_rng(random_state)
    half = rng.random(len(features)) < 0.5
    overlaps, excesses = [], []
    for fit, test in ((half, ~half), (~half, half)):
        if min(int((group & fit).sum()), int((group & test).sum())) < FISHER_MIN_ROWS:
            return benign_overlap(features, group, benign), tail_excess(features, group, benign)
        w = fisher_direction(features, group & fit, benign & fit)
        f = features[test]
        overlaps.append(benign_overlap(f, group[test], benign[test], direction=w))
        excesses.append(tail_excess(f, group[test], benign[test], direction=w))
    return max(overlaps), min(excesses)


def label_share(labels: Optional[np.ndarray], group: np.ndarray) -> Optional[tuple[int, float]]:
    """(majority label of ``group``, share of all rows with that label that lie in ``group``)."""
    if labels is None or not group.any():
        return None
    values, counts = np.unique(labels[group], return_counts=True)
    top = int(values[np.argmax(counts)])
    return top, float(counts.max() / np.sum(labels == top))


def decide_default(tree: T.CondensedTree, embedding: np.ndarray, features: np.ndarray, *,
                   min_persistence: float = 3.0, max_overlap: float = 0.02, min_excess: float = 5.0,
                   max_fraction: float = 0.5, xi: float = 0.02, max_depth: int = 3,
                   labels: Optional[np.ndarray] = None, max_label_share: float = 0.9,
                   random_state: Optional[int] = 0) -> Decision:
    """Our rule (see the module docstring) on the embedding of ``features`` (the rows clustered).

    ``xi``/``max_depth`` only feed the informational reference walk kept in the evidence.  With the
    rows' class ``labels``, a group that holds at least ``max_label_share`` of all rows of its majority
    class is a class, not poison (poisoned samples join a class that keeps its genuine samples), and
    is not flagged.
    """
    n = tree.n_points
    ratios = persistence_ratios(tree)
    sizes = T.cluster_sizes(tree)
    births = T.cluster_births(tree)
    stability = T.cluster_stability(tree)
    separated = {c for c, r in ratios.items() if r >= min_persistence}
    rep = highest_marked_ancestor(tree, separated)

    owner, _ = T.point_parents(tree)
    point_rep = np.array([rep[c] for c in owner.tolist()], dtype=np.int64)
    noise = owner == tree.root
    point_rep = assign_to_nearest(embedding, point_rep, noise)

    reps, counts = np.unique(point_rep, return_counts=True)
    order = sorted(range(len(reps)), key=lambda i: (-counts[i], reps[i]))
    group_of = {int(reps[i]): g for g, i in enumerate(order)}
    clusters = np.array([group_of[int(r)] for r in point_rep.tolist()], dtype=np.int64)

    groups = []
    flagged_ids = []
    benign_rows = clusters == 0
    for g, i in enumerate(order):
        node, size = int(reps[i]), int(counts[i])
        overlap = excess = None
        if g == 0:
            status = "benign (largest group)"
        else:
            overlap, excess = heldout_separation(features, clusters == g, benign_rows, random_state)
            share = label_share(labels, clusters == g)
            if share is not None and share[1] >= max_label_share:
                status = (f"not flagged: holds {share[1]:.0%} of class {share[0]} "
                          f"(>= max_label_share {max_label_share:g}), a class rather than poison")
            elif overlap > max_overlap:
                status = f"not flagged: benign overlap {overlap:.3f} > max_overlap {max_overlap:g}"
            elif excess < min_excess:
                status = f"not flagged: tail excess {excess:.2f} < min_excess {min_excess:g}"
            elif size >= max_fraction * n:
                status = f"not flagged: {size} samples is not below max_fraction of {n}"
            else:
                status = "flagged"
                flagged_ids.append(g)
        groups.append({"group": g, "node": node, "size": size, "status": status, "benign_overlap": overlap,
                       "tail_excess": _safe(excess) if excess is not None else None,
                       "persistence": _safe(ratios.get(node)), "birth_lambda": _safe(births.get(node))})
    flagged = np.isin(clusters, flagged_ids)

    def node_row(c: int) -> dict[str, Any]:
        return {"node": c, "size": sizes[c], "birth_lambda": _safe(births[c]), "persistence": _safe(ratios[c]),
                "stability": _safe(stability[c]), "separated": c in separated, "group_node": rep[c]}

    near = sorted((c for c in ratios if c not in separated), key=lambda c: -ratios[c])[:EVIDENCE_NEAR_MISSES]
    evidence = {
        "rule": "default",
        "n_points": n,
        "n_cluster_nodes": len(sizes) - 1,
        "top_level_noise": int(noise.sum()),
        "max_persistence": _safe(max(ratios.values())) if ratios else None,
        "separated_nodes": [node_row(c) for c in sorted(separated)],
        "near_misses": [node_row(c) for c in near],
        "groups": groups,
        "reference_walk": T.walk_largest_chain(tree, xi=xi, max_depth=max_depth).as_dict(),
    }
    return Decision(clusters, flagged, ~flagged, bool(flagged.any()), evidence)


# --------------------------------------------------------------------------- faithful rule

def decide_faithful(tree: T.CondensedTree, *, xi: float = 0.02, max_depth: int = 3) -> Decision:
    """The published rule (see the module docstring): stable chain cut, most common label benign."""
    n = tree.n_points
    walk = T.walk_largest_chain(tree, xi=xi, max_depth=max_depth)
    evidence: dict[str, Any] = {"rule": "faithful", "n_points": n, "walk": walk.as_dict()}
    if not walk.found:
        evidence["labels"] = {}
        return Decision(np.full(n, -1, dtype=np.int64), np.zeros(n, bool), np.ones(n, bool), False, evidence)
    labels, nodes = T.labels_at_lambda(tree, walk.cut_lambda)
    values, counts = np.unique(labels, return_counts=True)
    benign_label = int(values[np.argmax(counts)])  # first maximum: -1 (noise) wins ties, as argmax does
    benign = labels == benign_label
    evidence["labels"] = {str(int(v)): int(c) for v, c in zip(values, counts)}
    evidence["label_nodes"] = {str(i): int(c) for i, c in enumerate(nodes)}
    evidence["benign_label"] = benign_label
    return Decision(labels, ~benign, benign, True, evidence)


def _safe(x: Any) -> Any:
    """JSON-safe number: numpy scalars to Python, non-finite floats to None."""
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None
