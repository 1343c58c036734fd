"""Pure functions on an HDBSCAN *condensed tree* (walks, cuts and per-cluster statistics).

Vocabulary (as in the ``hdbscan`` package, Campello et al. 2013/2015):

* The condensed tree has one row per edge: ``(parent, child, lambda_val, child_size)``.
  Node ids ``< n_points`` are data points, ids ``>= n_points`` are clusters; the root is
  ``n_points`` and holds every point.
* ``lambda = 1 / distance``.  Going *down* the tree means increasing lambda (shrinking distance).
* A cluster row's ``lambda_val`` is the cluster's **birth** lambda: the level at which it split
  off its parent.  Siblings produced by one split share that value.  The root is born at 0.
* A point row's ``lambda_val`` is the level at which the point **falls out** of its (deepest)
  cluster and becomes noise for all larger lambdas.

Nothing here runs HDBSCAN or imports it: the functions take a :class:`CondensedTree`, which can be
built from a fitted clusterer (:meth:`CondensedTree.from_hdbscan`) or by hand (tests use a small
hand-made fixture whose answers can be checked on paper).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


@dataclass(frozen=True)
class CondensedTree:
    """The edges of a condensed tree as four aligned arrays plus the number of data points."""

    parent: np.ndarray
    child: np.ndarray
    lambda_val: np.ndarray
    child_size: np.ndarray
    n_points: int

    @classmethod
    def from_arrays(cls, parent, child, lambda_val, child_size, n_points: int) -> "CondensedTree":
        parent = np.asarray(parent, dtype=np.int64)
        child = np.asarray(child, dtype=np.int64)
        lambda_val = np.asarray(lambda_val, dtype=np.float64)
        child_size = np.asarray(child_size, dtype=np.int64)
        if not (parent.shape == child.shape == lambda_val.shape == child_size.shape) or parent.ndim != 1:
            raise ValueError("condensed tree columns must be 1-D arrays of equal length")
        return cls(parent, child, lambda_val, child_size, int(n_points))

    @classmethod
    def from_frame(cls, frame, n_points: int) -> "CondensedTree":
        """From ``clusterer.condensed_tree_.to_pandas()`` (columns parent, child, lambda_val, child_size)."""
        return cls.from_arrays(frame["parent"].to_numpy(), frame["child"].to_numpy(),
                               frame["lambda_val"].to_numpy(), frame["child_size"].to_numpy(), n_points)

    @classmethod
    def from_hdbscan(cls, clusterer) -> "CondensedTree":
        """From a fitted ``hdbscan.HDBSCAN`` (its structured ``condensed_tree_._raw_tree``)."""
        raw = clusterer.condensed_tree_._raw_tree
        return cls.from_arrays(raw["parent"], raw["child"], raw["lambda_val"], raw["child_size"],
                               len(clusterer.labels_))

    @property
    def root(self) -> int:
        return self.n_points

    @property
    def cluster_rows(self) -> np.ndarray:
        """Boolean mask of the rows whose child is a cluster."""
        return self.child >= self.n_points


# --------------------------------------------------------------------------- cluster structure

def cluster_births(tree: CondensedTree) -> dict[int, float]:
    """Birth lambda of every cluster node (root: 0.0)."""
    rows = tree.cluster_rows
    births = {int(c): float(l) for c, l in zip(tree.child[rows], tree.lambda_val[rows])}
    births[tree.root] = 0.0
    return births


def cluster_sizes(tree: CondensedTree) -> dict[int, int]:
    """Number of points under every cluster node (root: n_points)."""
    rows = tree.cluster_rows
    sizes = {int(c): int(s) for c, s in zip(tree.child[rows], tree.child_size[rows])}
    sizes[tree.root] = tree.n_points
    return sizes


def cluster_parents(tree: CondensedTree) -> dict[int, int]:
    """Parent of every non-root cluster node."""
    rows = tree.cluster_rows
    return {int(c): int(p) for c, p in zip(tree.child[rows], tree.parent[rows])}


def cluster_children(tree: CondensedTree, node: int) -> list[int]:
    """Cluster children of ``node``, largest first (ties: smaller id first)."""
    rows = tree.cluster_rows & (tree.parent == node)
    kids = sorted(zip(tree.child_size[rows].tolist(), tree.child[rows].tolist()), key=lambda t: (-t[0], t[1]))
    return [int(c) for _, c in kids]


def cluster_depths(tree: CondensedTree) -> dict[int, int]:
    """Depth of every cluster node (root 0, its children 1, ...)."""
    parents = cluster_parents(tree)
    depth = {tree.root: 0}
    for c in parents:
        chain = []
        while c not in depth:
            chain.append(c)
            c = parents[c]
        d = depth[c]
        for node in reversed(chain):
            d += 1
            depth[node] = d
    return depth


def point_parents(tree: CondensedTree) -> tuple[np.ndarray, np.ndarray]:
    """For every point: the cluster it falls out of, and the lambda at which it does."""
    rows = ~tree.cluster_rows
    parent = np.full(tree.n_points, tree.root, dtype=np.int64)
    lam = np.zeros(tree.n_points, dtype=np.float64)
    parent[tree.child[rows]] = tree.parent[rows]
    lam[tree.child[rows]] = tree.lambda_val[rows]
    return parent, lam


def subtree_points(tree: CondensedTree, node: int) -> np.ndarray:
    """Ids of all points under cluster ``node`` (including points that fall out deeper), sorted."""
    parents = cluster_parents(tree)
    depths = cluster_depths(tree)
    inside = {node}
    for c in sorted(parents, key=lambda c: depths[c]):  # parents before children
        if parents[c] in inside:
            inside.add(c)
    owner, _ = point_parents(tree)
    return np.flatnonzero(np.isin(owner, np.fromiter(inside, dtype=np.int64)))


def cluster_stability(tree: CondensedTree) -> dict[int, float]:
    """Campello et al.'s excess of mass: ``sum over points p in C of (lambda_p(C) - birth(C))``.

    ``lambda_p(C)`` is when p leaves C: when it falls out, or when C splits (for points that go on
    into a child).  Computed from the rows whose parent is C: ``(lambda_val - birth) * child_size``.
    Infinite lambdas (duplicate points) are clipped to the largest finite lambda in the tree.
    """
    births = cluster_births(tree)
    lam = tree.lambda_val.copy()
    finite = np.isfinite(lam)
    if not finite.all():
        lam[~finite] = lam[finite].max() if finite.any() else 0.0
    stab = {c: 0.0 for c in births}
    for p, l, s in zip(tree.parent.tolist(), lam.tolist(), tree.child_size.tolist()):
        stab[p] += (l - births[p]) * s
    return stab


def cluster_point_lambdas(tree: CondensedTree) -> dict[int, np.ndarray]:
    """For every cluster: the fall-out lambdas of all points in its subtree (used for persistence)."""
    owner, lam = point_parents(tree)
    parents = cluster_parents(tree)
    depths = cluster_depths(tree)
    # Points of each cluster's subtree: start with own points, push lists up to ancestors.
    own: dict[int, list[np.ndarray]] = {c: [] for c in depths}
    order = np.argsort(owner, kind="stable")
    owners_sorted = owner[order]
    bounds = np.flatnonzero(np.diff(owners_sorted)) + 1
    for chunk in np.split(order, bounds):
        if len(chunk):
            own[int(owner[chunk[0]])].append(lam[chunk])
    for c in sorted(depths, key=lambda c: -depths[c]):  # deepest first
        if c in parents:
            own[parents[c]].extend(own[c])
    return {c: (np.concatenate(v) if v else np.zeros(0)) for c, v in own.items()}


# --------------------------------------------------------------------------- the FLARE chain walk

@dataclass(frozen=True)
class ChainStep:
    """One comparison of the walk: ``gap = child_birth - parent_birth`` against ``xi``."""

    parent: int
    child: int
    parent_birth: float
    child_birth: float
    gap: float
    stable: bool

    def as_dict(self) -> dict[str, Any]:
        return {"parent": self.parent, "child": self.child, "parent_birth": _finite(self.parent_birth),
                "child_birth": _finite(self.child_birth), "gap": _finite(self.gap), "stable": self.stable}


@dataclass(frozen=True)
class ChainWalk:
    """Result of :func:`walk_largest_chain`: the steps taken and where (if anywhere) to cut."""

    start: Optional[int]
    steps: list[ChainStep] = field(default_factory=list)
    cut_parent: Optional[int] = None
    cut_lambda: Optional[float] = None
    reason: str = ""

    @property
    def found(self) -> bool:
        return self.cut_lambda is not None

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start, "steps": [s.as_dict() for s in self.steps], "cut_parent": self.cut_parent,
                "cut_lambda": _finite(self.cut_lambda) if self.cut_lambda is not None else None,
                "found": self.found, "reason": self.reason}


def walk_largest_chain(tree: CondensedTree, xi: float = 0.02, max_depth: int = 3) -> ChainWalk:
    """The published FLARE walk down the condensed tree.

    Start at the largest top-level cluster (largest child of the root).  Then, up to ``max_depth``
    times: take the current node's largest cluster child; if its birth lambda exceeds the current
    node's birth lambda by more than ``xi``, the split of the current node is *stable*: cut at the
    child's birth lambda and stop.  Otherwise the current node was a short-lived (unstable) level,
    so step down into that largest child and compare again.  A node with no cluster children, or
    ``max_depth`` unstable levels, ends the walk without a cut.
    """
    births = cluster_births(tree)
    top = cluster_children(tree, tree.root)
    if not top:
        return ChainWalk(start=None, reason="the root has no cluster children")
    node = top[0]
    steps: list[ChainStep] = []
    for _ in range(max_depth):
        kids = cluster_children(tree, node)
        if not kids:
            return ChainWalk(start=top[0], steps=steps, reason=f"cluster {node} has no cluster children")
        child = kids[0]
        gap = births[child] - births[node]
        stable = bool(gap > xi)
        steps.append(ChainStep(node, child, births[node], births[child], gap, stable))
        if stable:
            return ChainWalk(start=top[0], steps=steps, cut_parent=node, cut_lambda=births[child],
                             reason=f"cluster {node} splits stably (gap {gap:.4g} > xi {xi:g})")
        node = child
    return ChainWalk(start=top[0], steps=steps, reason=f"no stable split within {max_depth} levels")


# --------------------------------------------------------------------------- cuts

def alive_nodes(tree: CondensedTree, lam: float) -> list[int]:
    """Cluster nodes alive at ``lam``: born at or before ``lam`` with no cluster child born at or before it."""
    births = cluster_births(tree)
    parents = cluster_parents(tree)
    born = {c for c, b in births.items() if b <= lam}
    split = {parents[c] for c in born if c in parents}
    return sorted(born - split)


def labels_at_lambda(tree: CondensedTree, lam: float) -> tuple[np.ndarray, list[int]]:
    """Flat clustering from a horizontal cut of the condensed tree at ``lam``.

    Each point gets the index (into the returned node list) of the cluster that holds it at ``lam``:
    the deepest cluster on its path born at or before ``lam``.  A point that fell out of that cluster
    before ``lam`` is noise (-1).  Returns ``(labels, nodes)``: label ``i`` is cluster node
    ``nodes[i]``; only nodes holding at least one point are listed, in id order.
    """
    births = cluster_births(tree)
    parents = cluster_parents(tree)
    depths = cluster_depths(tree)
    # alive[c] = deepest ancestor-or-self of c born at or before lam.
    alive: dict[int, int] = {tree.root: tree.root}
    for c in sorted(parents, key=lambda c: depths[c]):
        alive[c] = c if births[c] <= lam else alive[parents[c]]
    owner, fall = point_parents(tree)
    holder = np.array([-1 if (alive[c] == c and l < lam) else alive[c]
                       for c, l in zip(owner.tolist(), fall.tolist())], dtype=np.int64)
    nodes = sorted(set(holder[holder >= 0].tolist()))
    index = {c: i for i, c in enumerate(nodes)}
    labels = np.array([index[h] if h >= 0 else -1 for h in holder.tolist()], dtype=np.int64)
    return labels, nodes


def _finite(x: Optional[float]) -> Optional[float]:
    """JSON-safe float: infinities and NaN become None."""
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None
