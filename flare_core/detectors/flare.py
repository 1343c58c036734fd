"""FLARE (Hou et al., arXiv 2411.19479): flag poisoned samples from the N x L abnormality matrix.

One column per BatchNorm layer, shallow -> deep.  The procedure, for a column prefix ``X[:, :k]``:

1. embed the rows in 2-D with UMAP (``n_neighbors=40, min_dist=0``, euclidean);
2. build HDBSCAN's condensed tree on the embedding;
3. decide which samples are poisoned from the tree (:mod:`.decision`).

**Adaptive subspace selection**: start with all L columns; while the decision finds nothing, drop the
deepest column and retry, down to ``min_layers`` columns.  The first prefix that finds something is
the chosen ``subspace``; when none does, nothing is flagged and ``subspace`` is L (the full matrix,
whose embedding is returned).

Two modes:

* ``mode='faithful'`` reproduces the published procedure: raw columns, ``min_cluster_size=100``,
  the largest-child chain walk with ``xi``/``max_depth``, most common cut label benign (noise
  included), everything else flagged.
* ``mode='default'`` (ours): robust z-scored columns, an adaptive ``min_cluster_size``
  (:func:`.sizes.auto_min_cluster_size`), the separation tests of :func:`.decision.decide_default`
  (persistence in the tree >= ``min_persistence``; in the feature space, benign overlap <=
  ``max_overlap`` and tail excess >= ``min_excess``; noise never a group; nothing flagged when no
  cluster is clearly separated; flagged groups must be smaller than ``max_fraction``).

``scope='per-class'`` runs steps 1-3 inside every class separately (the same prefix for all classes:
the first prefix at which any class finds something); ``scope='global'`` embeds everything at once.
Every result carries a continuous suspicion score (:func:`.scoring.benign_distance_scores`) and a
JSON-serialisable report with every parameter, the chosen subspace, the tree statistics and the
package versions.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from sklearn.base import BaseEstimator

from flare_core.detectors import _validation as V
from flare_core.detectors.clustering import run_hdbscan
from flare_core.detectors.decision import Decision, decide_default, decide_faithful
from flare_core.detectors.embedding import pca_2d, umap_2d
from flare_core.detectors.preprocess import robust_standardize
from flare_core.detectors.provenance import package_versions
from flare_core.detectors.scoring import benign_distance_scores
from flare_core.detectors.sizes import auto_min_cluster_size
from flare_core.errors import FlareError
from flare_core.progress import ProgressCallback, ensure_progress

logger = logging.getLogger(__name__)

MODES = ("default", "faithful")
SCOPES = ("global", "per-class")
STANDARDIZE = ("robust", "none")
#: The published minimum cluster size, used by ``mode='faithful'`` when none is given.
REFERENCE_MIN_CLUSTER_SIZE = 100
#: A class (or dataset) with fewer samples is not analysed: too few for a neighbour graph and clusters.
MIN_UNIT_SAMPLES = 20

DEFAULT_PARAMS: dict[str, Any] = {
    "mode": "default",
    "scope": "global",
    "n_neighbors": 40,
    "min_dist": 0.0,
    "min_cluster_size": None,
    "min_samples": None,
    "xi": 0.02,
    "max_depth": 3,
    "min_layers": 2,
    "standardize": None,
    "min_persistence": 3.0,
    "max_overlap": 0.02,
    "min_excess": 5.0,
    "max_fraction": 0.5,
    "n_epochs": None,
    "random_state": 0,
}


@dataclass
class FlareResult:
    """What :func:`flare_detect` returns (the detector's ``*_`` attributes)."""

    flagged: np.ndarray
    scores: np.ndarray
    clusters: np.ndarray
    embedding: np.ndarray
    subspace: int
    evidence: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def resolve_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` and fill the mode-dependent defaults; unknown names raise."""
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise FlareError(f"Unknown FLARE parameter(s) {', '.join(unknown)}; "
                         f"valid ones are {', '.join(DEFAULT_PARAMS)}.")
    p = {**DEFAULT_PARAMS, **params}
    V.check_choice(p["mode"], "mode", MODES)
    V.check_choice(p["scope"], "scope", SCOPES)
    V.check_int(p["n_neighbors"], "n_neighbors", 2)
    V.check_float(p["min_dist"], "min_dist", 0.0, 1.0)
    V.check_int(p["min_cluster_size"], "min_cluster_size", 2, allow_none=True)
    V.check_int(p["min_samples"], "min_samples", 1, allow_none=True)
    V.check_float(p["xi"], "xi", 0.0)
    V.check_int(p["max_depth"], "max_depth", 1)
    V.check_int(p["min_layers"], "min_layers", 1)
    if p["standardize"] is not None:
        V.check_choice(p["standardize"], "standardize", STANDARDIZE)
    V.check_float(p["min_persistence"], "min_persistence", 1.0, low_open=True)
    V.check_float(p["max_overlap"], "max_overlap", 0.0, 1.0)
    V.check_float(p["min_excess"], "min_excess", 0.0)
    V.check_float(p["max_fraction"], "max_fraction", 0.0, 1.0, low_open=True)
    V.check_int(p["n_epochs"], "n_epochs", 1, allow_none=True)
    V.check_random_state(p["random_state"])
    if p["standardize"] is None:
        p["standardize"] = "none" if p["mode"] == "faithful" else "robust"
    return p


# --------------------------------------------------------------------------- one prefix

@dataclass
class _UnitRun:
    label: Optional[int]
    index: np.ndarray
    decision: Optional[Decision]
    embedding: np.ndarray
    info: dict[str, Any]


def _run_unit(Z: np.ndarray, index: np.ndarray, label: Optional[int], n_total: int, p: dict[str, Any],
              progress: ProgressCallback, step: int, n_steps: int) -> _UnitRun:
    """Embed, cluster and decide for the samples ``index`` (all, or one class) of ``Z``."""
    n = len(index)
    info: dict[str, Any] = {"class": label, "n": n}
    if n < MIN_UNIT_SAMPLES:
        info.update(skipped=f"fewer than {MIN_UNIT_SAMPLES} samples", found=False, n_flagged=0)
        return _UnitRun(label, index, None, pca_2d(Z[index]), info)
    if p["min_cluster_size"] is not None:
        m = p["min_cluster_size"]
    elif p["mode"] == "faithful":
        m = REFERENCE_MIN_CLUSTER_SIZE
    else:
        m = auto_min_cluster_size(n_total, n if p["scope"] == "per-class" else None)
    progress("umap", step, n_steps)
    emb, method = umap_2d(Z[index], n_neighbors=p["n_neighbors"], min_dist=p["min_dist"],
                          random_state=p["random_state"], n_epochs=p["n_epochs"])
    progress("hdbscan", step, n_steps)
    _, tree = run_hdbscan(emb, m, p["min_samples"])
    if p["mode"] == "faithful":
        decision = decide_faithful(tree, xi=p["xi"], max_depth=p["max_depth"])
    else:
        decision = decide_default(tree, emb, Z[index], min_persistence=p["min_persistence"],
                                  max_overlap=p["max_overlap"], min_excess=p["min_excess"],
                                  max_fraction=p["max_fraction"], xi=p["xi"],
                                  max_depth=p["max_depth"])
    info.update(min_cluster_size=int(m), embedding_method=method, found=decision.found,
                n_flagged=int(decision.flagged.sum()))
    return _UnitRun(label, index, decision, emb, info)


def _units(n: int, y: Optional[np.ndarray], scope: str) -> list[tuple[Optional[int], np.ndarray]]:
    if scope == "global":
        return [(None, np.arange(n))]
    return [(int(c), np.flatnonzero(y == c)) for c in np.unique(y)]


def _summary(info: dict[str, Any], decision: Optional[Decision]) -> dict[str, Any]:
    """Short per-unit record kept for prefixes that were tried but not chosen."""
    out = dict(info)
    if decision is not None:
        ev = decision.evidence
        out["max_persistence"] = ev.get("max_persistence")
        out["n_cluster_nodes"] = ev.get("n_cluster_nodes")
        if "walk" in ev:
            out["walk_reason"] = ev["walk"]["reason"]
    return out


# --------------------------------------------------------------------------- public API

def flare_detect(X: Any, y: Any = None, *, progress: Optional[ProgressCallback] = None, **params: Any) -> FlareResult:
    """Run FLARE on the abnormality matrix ``X`` (N x L, shallow -> deep columns); see the module docstring.

    ``y`` (class labels) is required for ``scope='per-class'`` and otherwise only used to count flags
    per class.  ``X`` is not modified.  ``progress(stage, done, total)`` is called with the stages
    'subspace-search' (prefixes tried), 'umap' and 'hdbscan' (units of the current prefix).
    """
    p = resolve_params(params)
    X = V.check_matrix(X, "X", min_rows=2)
    n, L = X.shape
    if y is not None:
        y = V.check_labels(y, n)
    elif p["scope"] == "per-class":
        raise FlareError("scope='per-class' needs the class labels y; pass them or use scope='global'.")
    report_progress = ensure_progress(progress)

    if p["standardize"] == "robust":
        Z, center, scale = robust_standardize(X)
        scaling = {"method": "robust", "center": center.tolist(), "scale": scale.tolist()}
    else:
        Z, scaling = X, {"method": "none"}

    prefixes = list(range(L, min(p["min_layers"], L) - 1, -1))
    units = _units(n, y, p["scope"])
    attempts: list[dict[str, Any]] = []
    first: Optional[list[_UnitRun]] = None
    chosen: Optional[list[_UnitRun]] = None
    chosen_k = L
    for i, k in enumerate(prefixes):
        report_progress("subspace-search", i, len(prefixes))
        logger.info("FLARE (%s, %s): clustering the first %d of %d columns", p["mode"], p["scope"], k, L)
        runs = [_run_unit(Z[:, :k], idx, lab, n, p, report_progress, j, len(units))
                for j, (lab, idx) in enumerate(units)]
        report_progress("hdbscan", len(units), len(units))
        found = any(r.info.get("found") for r in runs)
        attempts.append({"columns": k, "found": found, "units": [_summary(r.info, r.decision) for r in runs]})
        logger.info("FLARE: %d columns -> %s", k, "split found" if found else "no split")
        if first is None:
            first = runs
        if found:
            chosen, chosen_k = runs, k
            break
    report_progress("subspace-search", len(prefixes), len(prefixes))
    found = chosen is not None
    runs = chosen if found else first

    flagged = np.zeros(n, dtype=bool)
    scores = np.zeros(n)
    clusters = np.full(n, -1, dtype=np.int64)
    embedding = np.zeros((n, 2))
    unit_evidence = []
    offset = 0
    for r in runs:
        embedding[r.index] = r.embedding
        if r.decision is None:
            unit_evidence.append(dict(r.info))
            continue
        d = r.decision
        if found:
            flagged[r.index] = d.flagged
            benign = d.benign
        else:
            benign = np.ones(len(r.index), dtype=bool)
        scores[r.index] = benign_distance_scores(r.embedding, benign)
        labels = d.clusters
        clusters[r.index] = np.where(labels >= 0, labels + offset, -1)
        unit_evidence.append({**r.info, "cluster_offset": offset, **d.evidence})
        offset += int(labels.max()) + 1 if labels.max() >= 0 else 0

    evidence = {
        "mode": p["mode"],
        "scope": p["scope"],
        "found": found,
        "subspace": chosen_k,
        "columns_tried": [a["columns"] for a in attempts],
        "units": unit_evidence,
        "attempts": attempts,
    }
    if not found:
        evidence["conclusion"] = "no poison found: no prefix of the columns gave a separated cluster"
    per_class = None
    if y is not None:
        classes, counts = np.unique(y[flagged], return_counts=True)
        per_class = {str(int(c)): int(k) for c, k in zip(classes, counts)}
    report = {
        "detector": "flare" if p["mode"] == "default" else "flare-faithful",
        "params": dict(p),
        "n_samples": n,
        "n_columns": L,
        "subspace": chosen_k,
        "columns_used": list(range(chosen_k)),
        "found": found,
        "n_flagged": int(flagged.sum()),
        "flagged_per_class": per_class,
        "scaling": scaling,
        "versions": package_versions(),
        "evidence": evidence,
    }
    return FlareResult(flagged, scores, clusters, embedding, chosen_k, evidence, report)


class FlareDetector(BaseEstimator):
    """Sklearn-style shell around :func:`flare_detect` (parameters documented there and in the module).

    After ``fit(X, y)``: ``flagged_`` (bool N), ``scores_`` (float N, higher = more suspicious),
    ``clusters_`` (int N; -1 only for HDBSCAN noise in faithful mode and for classes too small to
    analyse), ``embedding_`` (N x 2; in per-class scope, coordinates are only comparable within a
    class), ``subspace_`` (number of leading columns used), ``evidence_`` and ``report_`` (dicts).
    """

    def __init__(self, mode: str = "default", scope: str = "global", n_neighbors: int = 40, min_dist: float = 0.0,
                 min_cluster_size: Optional[int] = None, min_samples: Optional[int] = None, xi: float = 0.02,
                 max_depth: int = 3, min_layers: int = 2, standardize: Optional[str] = None,
                 min_persistence: float = 3.0, max_overlap: float = 0.02, min_excess: float = 5.0,
                 max_fraction: float = 0.5,
                 n_epochs: Optional[int] = None,
                 random_state: Optional[int] = 0):
        self.mode = mode
        self.scope = scope
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.xi = xi
        self.max_depth = max_depth
        self.min_layers = min_layers
        self.standardize = standardize
        self.min_persistence = min_persistence
        self.max_overlap = max_overlap
        self.min_excess = min_excess
        self.max_fraction = max_fraction
        self.n_epochs = n_epochs
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None, progress: Optional[ProgressCallback] = None) -> "FlareDetector":
        result = flare_detect(X, y, progress=progress, **self.get_params())
        self.flagged_ = result.flagged
        self.scores_ = result.scores
        self.clusters_ = result.clusters
        self.embedding_ = result.embedding
        self.subspace_ = result.subspace
        self.evidence_ = result.evidence
        self.report_ = result.report
        return self
