"""FLARE (Hou et al., arXiv 2411.19479): flag poisoned samples from the N x L abnormality matrix.

One column per BatchNorm layer, shallow -> deep.  The procedure, for a column prefix ``X[:, :k]``:

1. embed the rows in 2-D with UMAP (``n_neighbors=40, min_dist=0``, euclidean);
2. build HDBSCAN's condensed tree on the embedding;
3. decide which samples are poisoned from the tree (:mod:`.decision`).

**Adaptive subspace selection**: start with all L columns; while the decision finds nothing, drop the
deepest column and retry, down to ``min_layers`` columns.  The first prefix that finds something is
the chosen ``subspace``; when none does, nothing is flagged and ``subspace`` is L (the full matrix,
whose embedding is returned).  ``n_jobs`` runs the next prefixes in line side by side in worker processes
after the first (:mod:`.execution`; default one process, as in scikit-learn; ``'auto'``, what the CLI and the
dashboard use: up to 4 workers, where the first try's time says they save at least 30 s); the answer is the
same, only the wall time changes.  A worker is sent only the rows its try clusters (with their classes);
the samples outside the clustered sample are placed here, for the prefix that is chosen.

Two modes:

* ``mode='faithful'`` reproduces the published procedure: raw columns, ``min_cluster_size=100``,
  the largest-child chain walk with ``xi``/``max_depth``, most common cut label benign (noise
  included), everything else flagged.
* ``mode='default'`` (ours): robust z-scored columns, an adaptive ``min_cluster_size``
  (:func:`.sizes.auto_min_cluster_size`), the separation tests of :func:`.decision.decide_default`
  (persistence in the tree >= ``min_persistence``; in the feature space, benign overlap <=
  ``max_overlap`` and tail excess >= ``min_excess``; noise never a group; nothing flagged when no
  cluster is clearly separated; flagged groups must be smaller than ``max_fraction``).

Default mode also (ours):

* clusters at most ``sample_size`` (20,000) samples, stratified by class, and places every other
  sample by its 10 nearest clustered samples in the clustered feature space (majority group, mean
  coordinates): UMAP and HDBSCAN cost grows faster than N, and the subspace search repeats them, so
  this bounds the cost (clean Fashion-MNIST, 60k: 313 s instead of 2,000 s on the 2-core machine);
* refuses a "poison" group that holds ``max_label_share`` (90 %) or more of all samples of its
  majority class in global scope: poisoned samples join a class that keeps its genuine samples, so a
  group that *is* a class is a class (an untrained model separating classes by brightness used to be
  flagged whole);
* with ``use_channels='auto'`` (opt-in) and the per-channel matrix of
  ``extract_abnormality_features(channels=True)``, also clusters the per-channel view (per channel its
  largest ``|z|``, log scale) and flags what either view separates.  Experimental: on Fashion-MNIST
  Blended the per-channel view separates the poison linearly (held-out logistic AUROC 0.99999) but
  UMAP + HDBSCAN found it only in some samples of the data; see benchmarks/NOTES.md.

* with ``use_latent='auto'`` (the default) and the penultimate features and logits of
  ``extract_latent_features`` (``fit(..., latent=, logits=)``), also runs the per-class **latent stage**
  (:mod:`.latent`): a class that splits into two far-apart populations in its penultimate features
  (held-out d' >= ``latent_separation``) has its minority parts, or the half the model fits
  ``latent_loss_ratio`` times better, flagged.  It is what finds blended and warping triggers at high
  poison rates, whose activations are not abnormal in range (Fashion-MNIST Blended 10 %: 0 % -> 100 %
  TPR).  When the plain 2-means split of a class falls short, every k-means cluster (k = 3..
  ``latent_max_clusters``) against the rest of the class is a candidate too: that finds a 1 % poison set
  among a class's natural sub-modes (Blended 1 %: 0 % -> 99.8 % TPR). A split short of ``latent_separation``
  still stands at ``latent_loss_separation`` (5.5; 0 = off) when its smaller side (under 35 % of the rows)
  is fitted ``latent_loss_ratio`` times better than the other: distance and the backdoor's loss signature
  together (calibration: genuine minority splits fitted >= 10x better reach d' 5.09 at most over 25 models;
  the poisoned sets of Blended 0.5 % and WaNet 10 %, both 10 epochs, split off at 5.81 / 6.20, fitted 14x /
  1,400x better). Poison found in one class is the second signal for the others: then a class's *first*
  split stands at ``latent_loss_separation`` when its smaller side is a minority, fitted better or not
  (all-to-all attacks put a poison set in every class). Where two or more classes have flagged parts of at
  least ``latent_wide_share`` (5 %; 0 = off) of the class that the model fits less than ``latent_loss_ratio``
  times better and rates the same classes next after the label as the rest of their class (median total
  variation <= 0.2), none of them is flagged, whichever stage flagged them: that is a dataset pooled from
  sources that differ (a second scanner, inverted images), not a backdoor, whose all-to-one poison lies in
  one class and whose all-to-all poison is another class's images, rated next as that class
  (:func:`.latent.widely_flagged_classes`; benchmarks/results/second_source.json). Where at least
  ``label_noise_classes`` (3; 0 = off) classes have flagged parts that the model mostly classifies as another
  class, and as many different classes (the most common one holds at most half of them, median over those
  classes), those samples are not flagged either: they are mislabelled images, not poison, whose attacker
  relabels one source class's images (:func:`.label_noise.contradicted_classes`;
  benchmarks/results/clean_unusual.json). With those inputs a group the per-layer stage flags
  is also cross-checked there: it is kept only when, in its classes, it is a population of its own in the
  penultimate features (median held-out d' >= ``latent_confirm``, 4.5) *or* the model fits its main class
  part ``latent_confirm_loss`` (100) times better than the rest of that class (the backdoor's loss
  signature, asked strong because it stands alone here; 0 = the separation test only, small groups
  kept); a group too thin for a held-out d' in any one class (an all-to-all backdoor at a low rate: a few
  dozen poisoned samples per class) is measured with its classes pooled and kept at d' >=
  ``latent_confirm_pooled`` (3.0; 0 = off), and one too small for that needs the loss signature. This
  refuses clumps of genuine outliers in heavy-tailed layers (Blended all-to-all: FPR 1.72 % -> 0.14 %)
  and keeps a warped poison set that sits close to its class (CIFAR-10 WaNet 12 epochs: d' 2.2, fitted
  4,000x better). Last (``latent_join='auto'``), in every class whose
  flagged samples the model fits ``latent_loss_ratio`` times better than the rest, a sample whose 10 nearest
  samples of its class in the penultimate features are mostly flagged is flagged too: a per-layer group
  holds the poison that is abnormal in range, the rest of the poison lies beside it (CIFAR-10 WaNet 12
  epochs: 71.8 % -> 97.7 % TPR); then so is a sample that a linear classifier, trained out of fold to tell
  the class's flagged samples from the rest, puts on the flagged side (WaNet 10 %: 97.7 -> 98.5 % TPR on
  CIFAR-10; ``latent_join='neighbours'`` keeps the neighbour rule alone). Before that join
  (``latent_tail_groups='auto'``), every class is searched for small tight islands of atypical samples,
  and for groups the model sees as another class next to their label, in its penultimate features and
  logits (:mod:`.tail_groups`), when the stages above flagged under 1 % of the samples: the poison of low
  rates, which they do not separate (Fashion-MNIST Blended all-to-all 0.5 %: 0 -> 100 % TPR at FPR
  0.02 %). Without those inputs (or with ``use_latent='off'``) none of this runs and the report says so.
* with ``use_shortcut='auto'`` (the default) and the evidence of
  :func:`flare_core.features.shortcuts.shortcut_evidence` (``fit(..., shortcut=)``), the **shortcut
  stage** (:mod:`.shortcut_stage`): when the model sends at least half of the other images into one class
  under an image-wide transform (smoothing or sharpening; a clean model: at most a quarter), that class's
  samples whose label falls at least ``shortcut_min_drop`` nats under the opposite transform, to another
  class, are flagged: a warp's dirty-label poison, whose label the trigger carries, at rates
  too low for the stages above (Fashion-MNIST WaNet 0.5 %, see benchmarks/NOTES.md session 13). Like the
  tail-group stage it adds flags only when the stages above flagged under 1 % of the samples; the probe's
  finding is reported either way.

``scope='per-class'`` runs steps 1-3 inside every class separately (the same prefix for all classes:
the first prefix at which any class finds something); ``scope='global'`` embeds everything at once.
Every result carries a continuous suspicion score: the flagged samples' from their stage
(:func:`.scoring.benign_distance_scores`, the latent leaf distance), and in default mode every flagged
sample outranks every unflagged one; the unflagged are ranked by how atypical they are in their class's
penultimate features, in a class with flags by that or their own stage score, whichever is higher
(:func:`.scoring.rank_flagged_first`, :func:`.scoring.unflagged_ranking`), and with
``minority_modes='auto'`` (or ``'rank'``) the members of a class's *minority mode* first: where the
projections on a class's top singular direction (Spectral Signatures' direction) are a light, separate
mixture component (:mod:`.minority_mode`). With ``'auto'`` such a mode is also flagged, before the join step,
when the other stages flagged under 1 % of the samples and the model shows a backdoor's sign on its members:
in a class without flags, it fits them at least 100 times better than the rest of the class (the loss
signature), or, given the trigger test of :mod:`flare_core.features.mode_trigger` (``fit(..., mode_trigger=)``;
the pipeline runs it), their mean image difference, added to other classes' images, moves at least 20 % more of
them into the class than a perturbation as strong without its structure does; in a class the other stages
flagged in part, the trigger alone extends their flags (:func:`.minority_mode.minority_flags`);
``input_pattern='auto'`` with ``fit(..., images=)``, last, when the other stages flagged under 1 % of the
samples: a linear model on the images' fine detail (pixels minus their local mean), cross-fitted with the
flagged samples as positives, flags a group of unflagged samples that carry the same pattern, only when it
separates the flagged ones from the rest (a patch or a blend does, a warp does not) and the group stands
apart on top of the scores over all classes or inside a flagged class, not at the end of their tail; where
the other stages flagged fewer than 20 samples, the samples the model fits worst stand in for the flags (a
backdoor that did not take) and a third of them must separate (:mod:`.input_pattern`); and a
JSON-serialisable report with every parameter, the chosen subspace, the tree statistics and the
package versions.
"""
from __future__ import annotations

import copy
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from sklearn.base import BaseEstimator

from flare_core.detectors import _validation as V
from flare_core.detectors import execution
from flare_core.detectors.clustering import run_hdbscan
from flare_core.detectors.decision import Decision, decide_default, decide_faithful
from flare_core.detectors.embedding import pca_2d, umap_2d
from flare_core.detectors.placement import place_by_neighbours
from flare_core.detectors.preprocess import robust_standardize
from flare_core.detectors.provenance import package_versions
from flare_core.detectors.scoring import (benign_distance_scores, class_atypicality, rank_flagged_first,
                                          unflagged_ranking)
from flare_core.detectors.sizes import auto_min_cluster_size
from flare_core.errors import FlareError
from flare_core.progress import ProgressCallback, ensure_progress
from flare_core.sampling import stratified_sample

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
    "use_channels": "off",
    "sample_size": 20000,
    "max_label_share": 0.9,
    "use_latent": "auto",
    "latent_separation": 6.5,
    "latent_loss_ratio": 10.0,
    "latent_loss_separation": 5.5,
    "latent_wide_share": 0.05,
    "label_noise_classes": 3,
    "latent_confirm": 4.5,
    "latent_confirm_loss": 100.0,
    "latent_confirm_pooled": 3.0,
    "latent_join": "auto",
    "latent_max_clusters": 6,
    "latent_tail_groups": "auto",
    "use_shortcut": "auto",
    "shortcut_min_drop": 3.0,
    "minority_modes": "auto",
    "input_pattern": "auto",
    "random_state": 0,
    "n_jobs": None,
}
CHANNELS = ("auto", "off")
#: Columns of the per-channel view standardised at a time (:func:`_channel_matrix`).
CHANNEL_BLOCK = 64
#: ``latent_join``: 'auto' = the neighbour rule then the out-of-fold linear rule; 'neighbours' = the
#: neighbour rule alone (FLARE default up to session 9); 'off'.
JOIN_CHOICES = ("auto", "neighbours", "off")
#: ``minority_modes``: 'auto' = rank a class's minority mode first and flag it where the model fits it far
#: better or its mean image difference acts as a trigger (:mod:`.minority_mode`); 'rank' = rank only; 'off'.
MINORITY_CHOICES = ("auto", "rank", "off")


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
    # the samples a stage split off that the label-noise rule left unflagged (label_noise.py); None where the
    # rule did not run (faithful mode, no latent inputs)
    label_noise: Optional[np.ndarray] = None


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
    V.check_choice(p["use_channels"], "use_channels", CHANNELS)
    V.check_int(p["sample_size"], "sample_size", 100, allow_none=True)
    V.check_float(p["max_label_share"], "max_label_share", 0.0, 1.0, low_open=True)
    V.check_choice(p["use_latent"], "use_latent", CHANNELS)
    V.check_float(p["latent_separation"], "latent_separation", 0.0, low_open=True)
    V.check_float(p["latent_loss_ratio"], "latent_loss_ratio", 1.0)
    V.check_float(p["latent_confirm"], "latent_confirm", 0.0)
    # 0 = off; at or above latent_separation it has no effect
    V.check_float(p["latent_loss_separation"], "latent_loss_separation", 0.0)
    V.check_float(p["latent_wide_share"], "latent_wide_share", 0.0, 1.0)
    V.check_int(p["label_noise_classes"], "label_noise_classes", 0)
    if 0 < V.check_float(p["latent_confirm_loss"], "latent_confirm_loss", 0.0) < 1:
        raise FlareError(f"latent_confirm_loss must be 0 (the cross-check by separation only) or a ratio >= 1, "
                         f"got {p['latent_confirm_loss']}.")
    V.check_float(p["latent_confirm_pooled"], "latent_confirm_pooled", 0.0)
    V.check_choice(p["latent_join"], "latent_join", JOIN_CHOICES)
    V.check_int(p["latent_max_clusters"], "latent_max_clusters", 2, 12)
    V.check_choice(p["latent_tail_groups"], "latent_tail_groups", CHANNELS)
    V.check_choice(p["use_shortcut"], "use_shortcut", CHANNELS)
    V.check_float(p["shortcut_min_drop"], "shortcut_min_drop", 0.0, low_open=True)
    V.check_choice(p["minority_modes"], "minority_modes", MINORITY_CHOICES)
    V.check_choice(p["input_pattern"], "input_pattern", CHANNELS)
    V.check_random_state(p["random_state"])
    execution.check_n_jobs(p["n_jobs"])
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
    #: positions (into ``index``) of the clustered sample while the samples outside it are not placed yet
    #: (:func:`_place`); None once every sample has its group.
    pending: Optional[np.ndarray] = None


@contextmanager
def _timed(seconds: dict[str, float], phase: str):
    """Add the wall time of the ``with`` block to ``seconds[phase]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - t0


@dataclass
class _Unit:
    """One unit of the search (all samples, or one class) and its clustered sample, the same for every prefix."""
    label: Optional[int]
    index: np.ndarray  #: the unit's sample indices
    #: positions (into ``index``) of the samples it clusters (:func:`flare_core.sampling.stratified_sample`)
    sampled: np.ndarray

    @property
    def rows(self) -> np.ndarray:
        return self.index[self.sampled]


def _plan_units(n: int, y: Optional[np.ndarray], p: dict[str, Any]) -> list[_Unit]:
    """The units of ``p['scope']`` with their clustered samples: faithful mode clusters all; default mode at
    most ``sample_size`` per unit, stratified by class."""
    size = None if p["mode"] == "faithful" else p["sample_size"]
    return [_Unit(label, idx, stratified_sample(idx, y, size, p["random_state"]))
            for label, idx in _units(n, y, p["scope"])]


def _cluster_unit(Zr: np.ndarray, yr: Optional[np.ndarray], label: Optional[int], n_unit: int, n_total: int,
                  p: dict[str, Any], progress: ProgressCallback, step: int, n_steps: int,
                  seconds: dict[str, float]) -> tuple[Optional[Decision], np.ndarray, dict[str, Any]]:
    """Embed, cluster and decide on the clustered sample ``Zr`` (with its classes ``yr``) of a unit of
    ``n_unit`` samples: (decision or None where the unit is too small, the sample's embedding, the record)."""
    info: dict[str, Any] = {"class": label, "n": n_unit}
    if n_unit < MIN_UNIT_SAMPLES:  # sample_size >= 100, so such a unit is its own clustered sample
        info.update(skipped=f"fewer than {MIN_UNIT_SAMPLES} samples", found=False, n_flagged=0)
        return None, pca_2d(Zr), info
    n_fit = len(Zr)
    if p["min_cluster_size"] is not None:
        m = p["min_cluster_size"]
    elif p["mode"] == "faithful":
        m = REFERENCE_MIN_CLUSTER_SIZE
    else:  # the clustered sample stands for the whole set: scale the size rule to it
        m = auto_min_cluster_size(n_fit if n_fit < n_unit else n_total,
                                  n_fit if p["scope"] == "per-class" else None)
    progress("umap", step, n_steps)
    with _timed(seconds, "umap"):
        emb, method = umap_2d(Zr, n_neighbors=p["n_neighbors"], min_dist=p["min_dist"],
                              random_state=p["random_state"], n_epochs=p["n_epochs"])
    progress("hdbscan", step, n_steps)
    with _timed(seconds, "hdbscan"):
        _, tree = run_hdbscan(emb, m, p["min_samples"])
    with _timed(seconds, "decision"):
        decision = _decide(tree, emb, Zr, yr if p["scope"] == "global" else None, p)
    info.update(min_cluster_size=int(m), embedding_method=method, found=decision.found,
                n_flagged=int(decision.flagged.sum()), n_clustered=n_fit)
    return decision, emb, info


def _unit_run(unit: _Unit, decision: Optional[Decision], emb: np.ndarray, info: dict[str, Any]) -> _UnitRun:
    """A unit's run from its clustered sample's result, the other samples' placement pending (:func:`_place`)."""
    pending = unit.sampled if decision is not None and len(unit.sampled) < len(unit.index) else None
    return _UnitRun(unit.label, unit.index, decision, emb, info, pending)


def _run_unit(Z: np.ndarray, unit: _Unit, n_total: int, p: dict[str, Any], progress: ProgressCallback, step: int,
              n_steps: int, y: Optional[np.ndarray] = None, seconds: Optional[dict[str, float]] = None,
              place: bool = True) -> _UnitRun:
    """Embed, cluster and decide for the samples of ``unit`` (all, or one class) in ``Z`` (N rows).

    Default mode clusters at most ``sample_size`` of them (stratified by class) and places the rest by
    their nearest clustered neighbours in ``Z`` (:func:`.placement.place_by_neighbours`); faithful mode clusters
    all.  With ``place=False`` the placement is left pending (:func:`_place`): the subspace search discards
    most runs, and placing 30k samples cost ~6 s a prefix on CIFAR-10.
    """
    rows = unit.rows
    seconds = {} if seconds is None else seconds
    run = _unit_run(unit, *_cluster_unit(Z[rows], None if y is None else y[rows], unit.label, len(unit.index),
                                         n_total, p, progress, step, n_steps, seconds))
    return _place(run, Z, seconds) if place else run


def _place(run: _UnitRun, Z: np.ndarray, seconds: Optional[dict[str, float]] = None) -> _UnitRun:
    """Give every sample of the unit its group and coordinates from the clustered sample
    (:func:`.placement.place_by_neighbours`, in ``Z``: all samples' rows) when that is still pending; the unit's
    flags are the flagged groups of the sample."""
    if run.pending is None:
        return run
    sampled = run.pending
    decision = run.decision
    with _timed({} if seconds is None else seconds, "placing"):
        flagged_groups = np.unique(decision.clusters[decision.flagged])
        rows = Z if len(run.index) == len(Z) else Z[run.index]  # global scope: every row, in order (no copy)
        emb, clusters = place_by_neighbours(rows, sampled, run.embedding, decision.clusters)
        flagged = np.isin(clusters, flagged_groups)
    run.decision = Decision(clusters, flagged, ~flagged, decision.found,
                            {**decision.evidence, "clustered_sample": int(len(sampled)),
                             "placed_by_neighbours": int(len(run.index) - len(sampled))})
    run.embedding, run.pending = emb, None
    run.info["n_flagged"] = int(flagged.sum())
    return run


def _decide(tree: Any, emb: np.ndarray, Zr: np.ndarray, labels: Optional[np.ndarray], p: dict[str, Any]) -> Decision:
    """The mode's decision rule on one unit's condensed tree (``labels``: the rows' classes, global scope)."""
    faithful = p["mode"] == "faithful"
    if faithful:
        return decide_faithful(tree, xi=p["xi"], max_depth=p["max_depth"])
    return decide_default(tree, emb, Zr, min_persistence=p["min_persistence"],
                          max_overlap=p["max_overlap"], min_excess=p["min_excess"],
                          max_fraction=p["max_fraction"], xi=p["xi"],
                          max_depth=p["max_depth"], labels=labels,
                          max_label_share=p["max_label_share"], random_state=p["random_state"])


def _try_prefix(Zk: np.ndarray, yk: Optional[np.ndarray], jobs: list, n: int, p: dict[str, Any], keep: bool,
                progress: Optional[ProgressCallback] = None) -> tuple:
    """One try of the subspace search on a column prefix: (found, the units' summaries, the units' results
    (decision, embedding, record; :func:`_cluster_unit`) when ``keep`` or found (else None), the phases'
    seconds).  ``jobs`` holds per unit (label, its number of samples, the rows of ``Zk`` / ``yk`` it
    clusters): all N rows in this process, only the clustered ones in a worker (:mod:`.execution`), which is
    why it is module-level and free of shared state.  Placing the other samples is the caller's."""
    seconds: dict[str, float] = {}
    report = ensure_progress(progress)
    logger.info("FLARE (%s, %s): clustering the first %d columns", p["mode"], p["scope"], Zk.shape[1])
    results = [_cluster_unit(Zk[rows], None if yk is None else yk[rows], label, n_unit, n, p, report, j, len(jobs),
                             seconds)
               for j, (label, n_unit, rows) in enumerate(jobs)]
    report("hdbscan", len(jobs), len(jobs))
    found = any(info.get("found") for _, _, info in results)
    return (found, [_summary(info, decision) for decision, _, info in results], (results if keep or found else None),
            seconds)


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


def _collect(runs: list[_UnitRun], n: int, found: bool) -> tuple:
    """Per-sample flags, scores, cluster ids, embedding and per-unit evidence of one set of unit runs."""
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
    return flagged, scores, clusters, embedding, unit_evidence


# --------------------------------------------------------------------------- public API

def _channel_matrix(channels: Any, channel_layer: Any, n: int, L: int) -> tuple:
    """The per-channel view robust-standardised on a log scale, with its layer per column.  Made
    ``CHANNEL_BLOCK`` columns at a time into one float64 array (every column is standardised on its own, so
    the numbers are those of the whole matrix at once): a ResNet-18's 4,800 channels over 50,000 samples
    held about 4x the output in float64 temporaries that way."""
    C = V.check_matrix(channels, "channels", min_rows=2, keep_float32=True)
    if len(C) != n:
        raise FlareError(f"channels has {len(C)} rows but X has {n}; pass the per-channel matrix of the same samples.")
    if channel_layer is None:
        raise FlareError("channels needs channel_layer (the layer column of every channel column).")
    layer = np.asarray(channel_layer)
    if layer.shape != (C.shape[1],) or layer.dtype.kind not in "iu" or (len(layer) and (layer.min() < 0 or layer.max() >= L)):
        raise FlareError(f"channel_layer must hold one layer index in [0, {L}) per channel column ({C.shape[1]}).")
    # the largest |z| of a channel is heavy-tailed (a trigger multiplies it): compare on a log scale
    Zc = np.empty(C.shape, dtype=np.float64)
    for start in range(0, C.shape[1], CHANNEL_BLOCK):
        cols = slice(start, start + CHANNEL_BLOCK)
        block = np.asarray(C[:, cols], dtype=np.float64)
        Zc[:, cols] = robust_standardize(np.log(np.maximum(block, 0.0) + 1e-3))[0]
    return Zc, layer


def _latent_inputs(latent: Any, logits: Any, y: Optional[np.ndarray], n: int) -> tuple:
    P = V.check_matrix(latent, "latent", min_rows=2, keep_float32=True)  # its readers convert a class at a time
    if len(P) != n:
        raise FlareError(f"latent has {len(P)} rows but X has {n}; pass the penultimate features of the same samples.")
    if logits is None:
        raise FlareError("latent needs logits (the model's outputs for the same samples) for the loss test.")
    Lg = V.check_matrix(logits, "logits", min_rows=2)
    if len(Lg) != n:
        raise FlareError(f"logits has {len(Lg)} rows but X has {n}; pass the logits of the same samples.")
    if y is None:
        raise FlareError("The latent stage works class by class and needs the labels y; pass them or set use_latent='off'.")
    if int(y.max()) >= Lg.shape[1]:
        raise FlareError(f"logits has {Lg.shape[1]} columns but the labels go up to {int(y.max())}; pass the model's logits.")
    return P, Lg


def flare_detect(X: Any, y: Any = None, *, progress: Optional[ProgressCallback] = None, channels: Any = None,
                 channel_layer: Any = None, latent: Any = None, logits: Any = None, shortcut: Any = None,
                 mode_trigger: Any = None, images: Any = None, **params: Any) -> FlareResult:
    """Run FLARE on the abnormality matrix ``X`` (N x L, shallow -> deep columns); see the module docstring.

    ``y`` (class labels) is required for ``scope='per-class'``; in global scope it is used to count
    flags per class, to stratify the clustered sample and to refuse a "poison" group that is a whole
    class.  ``channels`` (N x sum C, per channel its largest ``|z|``, from
    ``extract_abnormality_features(channels=True)``) with ``channel_layer`` (its layer per column)
    enables the per-channel stage of the default mode; ``latent`` (N x D penultimate features) with
    ``logits`` (N x K) the latent stage (:mod:`.latent`); ``shortcut`` (a
    :class:`flare_core.features.shortcuts.ShortcutEvidence`) the shortcut stage; ``mode_trigger`` (a
    :class:`flare_core.features.mode_trigger.ModeTriggerEvidence` found in the same ``latent``) the
    minority modes with their trigger test (without it the stage finds the modes itself and flags by loss
    only); ``images`` (the N training images, uint8) the input-pattern stage (:mod:`.input_pattern`).
    Inputs are not modified.  ``progress(stage, done, total)`` is called with the stages
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
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    run_latent = p["mode"] == "default" and p["use_latent"] == "auto" and latent is not None
    if run_latent:  # checked before the (slow) layer stage, so a bad input fails at once
        P, Lg = _latent_inputs(latent, logits, y, n)
    pattern_report = _input_pattern_report(p, images, y, n)  # checked here too, for the same reason

    if p["standardize"] == "robust":
        Z, center, scale = robust_standardize(X)
        scaling = {"method": "robust", "center": center.tolist(), "scale": scale.tolist()}
    else:
        Z, scaling = X, {"method": "none"}

    prefixes = list(range(L, min(p["min_layers"], L) - 1, -1))
    units = _plan_units(n, y, p)
    attempts: list[dict[str, Any]] = []
    first: Optional[list[_UnitRun]] = None
    chosen: Optional[list[_UnitRun]] = None
    chosen_k = L
    # a try returns its units' results only where it finds something (and the first try, the picture when
    # nothing is found); only those runs place the samples outside the clustered sample, here
    report_progress("subspace-search", 0, len(prefixes))
    t_first = time.perf_counter()
    n_workers = 1
    sent: dict[str, Any] = {}  # what the workers were sent (execution.ordered_map's stats, and rows a try)
    jobs = [(u.label, len(u.index), u.rows) for u in units]

    def tries():  # the first try in this process; the rest where execution.resolve_n_jobs says
        nonlocal n_workers
        yield _try_prefix(Z[:, :prefixes[0]], y, jobs, n, p, True, progress=report_progress)
        n_workers = execution.resolve_n_jobs(p["n_jobs"], len(prefixes) - 1, time.perf_counter() - t_first)
        if n_workers <= 1:  # views of Z, with the progress callback
            yield from (_try_prefix(Z[:, :k], y, jobs, n, p, False, progress=report_progress) for k in prefixes[1:])
            return
        # a worker is sent only the rows it clusters, their classes and their positions (N rows at most)
        rows = np.unique(np.concatenate([u.rows for u in units]))
        Zs, ys = Z[rows], None if y is None else y[rows]
        worker_jobs = [(label, n_unit, np.searchsorted(rows, r)) for label, n_unit, r in jobs]
        logger.info("FLARE: trying the other %d prefixes %d at a time in worker processes (%d of %d rows each)",
                    len(prefixes) - 1, n_workers, len(rows), n)
        sent["rows"] = len(rows)
        yield from execution.ordered_map(_try_prefix, [(Zs[:, :k], ys, worker_jobs, n, p, False)
                                                       for k in prefixes[1:]], n_workers, stats=sent)

    results = tries()
    try:
        for i, (k, (found, summaries, unit_results, try_seconds)) in enumerate(zip(prefixes, results)):
            for phase, value in try_seconds.items():
                seconds[phase] = seconds.get(phase, 0.0) + value
            attempts.append({"columns": k, "found": found, "units": summaries})
            logger.info("FLARE: %d columns -> %s", k, "split found" if found else "no split")
            report_progress("subspace-search", i + 1, len(prefixes))
            runs = None if unit_results is None else [_unit_run(u, *r) for u, r in zip(units, unit_results)]
            if first is None:
                first = runs
            if found:  # placed here, where all rows are (per-class: the units that found nothing too)
                chosen, chosen_k = [_place(r, Z[:, :k], seconds) for r in runs], k
                attempts[-1]["units"] = [_summary(r.info, r.decision) for r in chosen]
                break
    finally:
        results.close()  # stops the workers' speculative tries past the chosen prefix
    layer_found = chosen is not None
    layer_runs = chosen if layer_found else [_place(r, Z, seconds) for r in first]
    channel_runs: Optional[list[_UnitRun]] = None
    channel_found = False
    if channels is not None and p["mode"] == "default" and p["use_channels"] == "auto":
        Zc, _ = _channel_matrix(channels, channel_layer, n, L)
        logger.info("FLARE: clustering the %d per-channel columns", Zc.shape[1])
        channel_runs = [_run_unit(Zc, u, n, p, report_progress, j, len(units), y, seconds)
                        for j, u in enumerate(units)]
        channel_found = any(r.info.get("found") for r in channel_runs)
        attempts.append({"columns": f"channels ({Zc.shape[1]})", "found": channel_found,
                         "units": [_summary(r.info, r.decision) for r in channel_runs]})
        logger.info("FLARE: per-channel columns -> %s", "split found" if channel_found else "no split")
    report_progress("subspace-search", len(prefixes), len(prefixes))
    latent_flagged = None
    noise_dropped = np.zeros(n, dtype=bool)  # the samples unflagged as label noise, by any stage

    def _drop_label_noise(mask: np.ndarray, groups: np.ndarray, where: str) -> np.ndarray:
        """What the label-noise rule unflags in ``mask`` (label_noise.label_noise_drop), noted in the report."""
        nonlocal noise_dropped
        from flare_core.detectors.label_noise import label_noise_drop

        drop, noisy = label_noise_drop(mask, y, Lg.argmax(axis=1), groups, p["label_noise_classes"])
        if drop.any():
            noise_dropped = noise_dropped | drop
            latent_report["label_noise"] = {**latent_report.get("label_noise", {}),
                                            **{str(c): v for c, v in noisy.items()}}
            latent_report["label_noise_unflagged"] = int(noise_dropped.sum())  # by any stage, counted once
            logger.info("FLARE: %s: %d flags in classes %s dropped: the model gives them many other classes "
                        "(label noise)", where, int(drop.sum()), sorted(noisy))
        return drop
    loss: Optional[np.ndarray] = None  # the per-sample training loss, when the latent stage's inputs are given
    nxt: Optional[np.ndarray] = None  # the class the logits rate next after the label, with the loss
    latent_report: dict[str, Any] = {"used": False}
    if p["mode"] == "faithful":
        latent_report["why_not"] = "faithful mode reproduces the published method, which has no latent stage"
    elif p["use_latent"] == "off":
        latent_report["why_not"] = "use_latent='off'"
    else:
        if latent is None:
            latent_report["why_not"] = "no penultimate features/logits were passed (fit(..., latent=, logits=))"
        else:
            from flare_core.detectors.latent import latent_detect, next_class, sample_loss

            report_progress("latent", 0, 1)
            loss = sample_loss(Lg, y)  # also read by the cross-check and the join step below
            nxt = next_class(Lg, y)  # the class rated next after the label: the dataset-wide test
            with _timed(seconds, "latent"):
                latent_flagged, latent_scores, latent_leaf, latent_evidence = latent_detect(
                    P, y, loss, min_separation=p["latent_separation"],
                    loss_ratio=p["latent_loss_ratio"], max_clusters=p["latent_max_clusters"],
                    loss_separation=p["latent_loss_separation"] or None,
                    wide_share=p["latent_wide_share"], next_class=nxt, random_state=p["random_state"])
            report_progress("latent", 1, 1)
            latent_report = {"used": True, "found": bool(latent_flagged.any()), "n_flagged": int(latent_flagged.sum()),
                             "classes": latent_evidence}
            wide = {str(e["class"]): e["dataset_wide"] for e in latent_evidence if e.get("dataset_wide")}
            if wide:  # {class: {"share", "fitted_better", "next_class_tv"}} (latent.widely_flagged_classes)
                latent_report["dataset_wide_split"] = wide
            # mislabelled images, not poison (label_noise.py): dropped here, so that the stages that run only
            # where little was flagged still run, and again after those stages and on the final flags below
            drop = _drop_label_noise(latent_flagged, latent_leaf, "latent stage")
            if drop.any():
                latent_flagged = latent_flagged & ~drop
                latent_scores = np.where(drop, 0.0, latent_scores)  # as a dataset-wide split's
                latent_report.update(found=bool(latent_flagged.any()), n_flagged=int(latent_flagged.sum()))
            logger.info("FLARE: latent stage -> %d flagged", int(latent_flagged.sum()))
    latent_found = latent_flagged is not None and bool(latent_flagged.any())
    found = layer_found or channel_found
    if layer_found and channel_found:
        representation = "layers+channels"
    elif channel_found:
        representation = "channels"
    else:
        representation = "layers"
    if latent_found:
        representation = representation + "+latent" if found else "latent"
    # the picture (embedding, clusters) comes from the per-layer run unless only the channels found poison
    main_runs = channel_runs if (channel_found and not layer_found) else layer_runs
    flagged, scores, clusters, embedding, unit_evidence = _collect(main_runs, n, found)
    refused_layer_groups = False
    if run_latent and found and p["latent_confirm"] > 0 and latent_report.get("used"):
        # a per-layer group must also be a population of its own in its classes' penultimate features
        from flare_core.detectors.latent import confirm_groups

        with _timed(seconds, "confirm"):
            flagged, records = confirm_groups(P, y, flagged, clusters, min_separation=p["latent_confirm"],
                                              loss=loss if p["latent_confirm_loss"] > 0 else None,
                                              loss_ratio=p["latent_confirm_loss"],
                                              pooled_separation=p["latent_confirm_pooled"],
                                              random_state=p["random_state"])
        latent_report["layer_groups_checked"] = records
        refused_layer_groups = not all(r["kept"] for r in records)
        if not flagged.any():  # every per-layer group was refused: only the latent stage can have found poison
            found = False
            representation = "latent" if latent_found else "layers"
    if channel_found and layer_found:  # flag what either representation separates
        flagged_c, scores_c, _, _, evidence_c = _collect(channel_runs, n, True)
        flagged |= flagged_c
        scores = np.maximum(scores, scores_c)
        unit_evidence = [{**u, "channel_stage": c} for u, c in zip(unit_evidence, evidence_c)]
    if latent_found:  # flag what the latent stage separates too; its parts get cluster ids of their own
        new = latent_flagged & ~flagged
        flagged = flagged | latent_flagged
        scores = np.maximum(scores, latent_scores)
        base = int(clusters.max()) + 1 if clusters.size else 0
        pairs = sorted({(int(c), int(k)) for c, k in zip(y[new], latent_leaf[new])})
        ids = {pair: base + i for i, pair in enumerate(pairs)}
        for (c, k), cid in ids.items():
            clusters[new & (y == c) & (latent_leaf == k)] = cid
        found = True
    atyp = class_atypicality(P, y) if run_latent and y is not None else None
    if run_latent and p["latent_tail_groups"] == "auto" and latent_report.get("used"):
        # small tight islands of atypical samples in a class: the poison of low rates (tail_groups.py)
        from flare_core.detectors.tail_groups import TAIL_MAX_FLAGGED_SHARE, stage_settings, tail_group_detect

        if flagged.mean() >= TAIL_MAX_FLAGGED_SHARE:
            why_not = (f"the other stages flagged {flagged.mean():.1%} of the samples (a poison population they "
                       f"separate); the tail-group stage looks for small poison sets when they flagged under "
                       f"{TAIL_MAX_FLAGGED_SHARE:.0%}")
            latent_report["tail_groups"] = {"n_flagged": 0, "n_new": 0, "settings": stage_settings(Lg.shape[1]),
                                            "why_not": why_not}
            new = np.zeros(n, dtype=bool)
        else:
            with _timed(seconds, "tail_groups"):
                tail_flagged, tail_group, tail_evidence = tail_group_detect(P, y, atyp, logits=Lg,
                                                                                random_state=p["random_state"])
            new = tail_flagged & ~flagged
            latent_report["tail_groups"] = {"n_flagged": int(tail_flagged.sum()), "n_new": int(new.sum()),
                                            "settings": stage_settings(Lg.shape[1]),
                                            "classes": tail_evidence}
            logger.info("FLARE: tail-group stage -> %d flagged (%d new)", int(tail_flagged.sum()), int(new.sum()))
        if new.any():
            base = int(clusters.max()) + 1 if clusters.size else 0
            pairs = sorted({(int(c), int(k)) for c, k in zip(y[new], tail_group[new])})
            for i, (c, k) in enumerate(pairs):
                clusters[new & (y == c) & (tail_group == k)] = base + i
                kept_groups = tail_evidence.get(str(c), {}).get("kept", [])
                if 0 <= k < len(kept_groups):  # the kept group's cluster id, for the run to find its samples
                    kept_groups[k]["cluster"] = base + i
            scores = np.where(new, np.maximum(scores, atyp), scores)
            flagged = flagged | new
            representation = representation + "+tail" if found else "tail"
            found = True
        drop = _drop_label_noise(flagged, clusters, "tail-group stage")
        if drop.any():  # before the stages that add flags only where little is flagged
            flagged = flagged & ~drop
            found = bool(flagged.any())
    shortcut_report: dict[str, Any] = {"used": False}
    if p["mode"] == "faithful":
        shortcut_report["why_not"] = "faithful mode reproduces the published method, which has no shortcut stage"
    elif p["use_shortcut"] == "off":
        shortcut_report["why_not"] = "use_shortcut='off'"
    elif shortcut is None:
        shortcut_report["why_not"] = "no shortcut evidence was passed (fit(..., shortcut=))"
    elif y is None:
        shortcut_report["why_not"] = "the shortcut stage needs the class labels y"
    else:
        from flare_core.detectors.shortcut_stage import check_evidence, shortcut_flags

        drop, after = check_evidence(shortcut, n)
        short_flagged = shortcut_flags(drop, after, y, shortcut.target, min_drop=p["shortcut_min_drop"])
        shortcut_report = {"used": True, **shortcut.summary(), "n_flagged": int(short_flagged.sum()),
                           "min_drop": p["shortcut_min_drop"]}
        over = _over_add_on_share(flagged, "the shortcut stage adds flags")
        if over:
            # a poison population the other stages separate: the stage would add genuine samples beside it
            # (Fashion-MNIST WaNet 10 %: +22 poisoned, +54 genuine), so like the tail-group stage it adds
            # only where they flagged under 1 %
            short_flagged = np.zeros(n, dtype=bool)
            shortcut_report["why_not"] = over
        new = short_flagged & ~flagged
        shortcut_report["n_new"] = int(new.sum())
        logger.info("FLARE: shortcut stage -> %d flagged (%d new)", int(short_flagged.sum()), int(new.sum()))
        if new.any():
            cid = int(clusters.max()) + 1 if clusters.size else 0
            clusters[new] = cid
            shortcut_report["cluster"] = cid
            scores = np.where(new, np.maximum(scores, np.nan_to_num(drop)), scores)
            flagged = flagged | new
            representation = representation + "+shortcut" if found else "shortcut"
            found = True
    minority_report, minority = _minority_report(p, atyp is not None), None
    if minority_report["used"]:
        # a class whose top singular direction holds a light, separate component (minority_mode.py: the
        # premise of Spectral Signatures, tested per class): its members rank first among the unflagged, and
        # are flagged where nothing else was and the model fits them far better than the rest of the class
        from flare_core.detectors.minority_mode import class_minority_modes, minority_flags

        with _timed(seconds, "minority_modes"):
            if mode_trigger is not None and mode_trigger.matches(latent, p["random_state"]):
                # the modes the trigger test ran on (found in the same features with the same seed)
                minority = np.array(mode_trigger.membership, dtype=float, copy=True)
                minority_report["classes"] = copy.deepcopy(mode_trigger.classes)
                minority_report["trigger_test"] = {"used": True, "seconds": dict(mode_trigger.seconds)}
            else:
                minority, minority_report["classes"] = class_minority_modes(P, y, random_state=p["random_state"])
                minority_report["trigger_test"] = {"used": False, "why_not": (
                    "no trigger test was passed (fit(..., mode_trigger=))" if mode_trigger is None else
                    "the trigger test's modes were found in other features or with another seed")}
        minority_report["n_members"] = int((minority > 0.5).sum())
        new = np.zeros(n, dtype=bool)
        if p["minority_modes"] == "rank":
            minority_report["why_not_flagged"] = "minority_modes='rank'"
        elif _over_add_on_share(flagged, "minority modes are flagged"):
            minority_report["why_not_flagged"] = _over_add_on_share(flagged, "minority modes are flagged")
        else:
            new = minority_flags(minority, minority_report["classes"], y, loss, flagged) & ~flagged
        minority_report["n_flagged"] = int(new.sum())
        logger.info("FLARE: minority modes in %d class(es), %d flagged",
                    sum(e.get("holds", False) for e in minority_report["classes"].values()), int(new.sum()))
        if new.any():
            base = int(clusters.max()) + 1 if clusters.size else 0
            for i, c in enumerate(np.unique(y[new])):
                clusters[new & (y == c)] = base + i
                minority_report["classes"][str(c)]["cluster"] = base + i
            scores = np.where(new, np.maximum(scores, atyp), scores)
            flagged = flagged | new
            representation = representation + "+minority" if found else "minority"
            found = True
    if run_latent and found and p["latent_join"] != "off" and latent_report.get("used"):
        # samples beside the flagged ones in a class with the backdoor's loss signature join them
        from flare_core.detectors.latent import join_flagged_classes

        with _timed(seconds, "join"):
            joined, join_records = join_flagged_classes(P, y, flagged, loss,
                                                        loss_ratio=p["latent_loss_ratio"],
                                                        linear=p["latent_join"] == "auto",
                                                        random_state=p["random_state"])
        latent_report["joined"] = join_records
        if joined.any():
            for c in np.unique(y[joined]):  # a joined sample takes its class's most common flagged cluster
                in_c = (y == c) & flagged
                cl_ids, cnt = np.unique(clusters[in_c], return_counts=True)
                clusters[joined & (y == c)] = cl_ids[np.argmax(cnt)]
                scores[joined & (y == c)] = np.maximum(scores[joined & (y == c)], float(np.min(scores[in_c])))
            flagged = flagged | joined

    if "why_not" not in pattern_report:  # images and labels given, the stage on
        from flare_core.detectors.input_pattern import (MIN_POSITIVES, input_pattern_flags,
                                                        seeded_input_pattern_flags)

        seeded = int(flagged.sum()) < MIN_POSITIVES
        if seeded and loss is None:
            pattern_report["why_not"] = (f"the other stages flagged fewer than {MIN_POSITIVES} samples to learn a "
                                         "pattern from, and without logits the samples the model fits worst "
                                         "cannot stand in for them")
        elif _over_add_on_share(flagged, "the input-pattern stage adds flags"):
            pattern_report["why_not"] = _over_add_on_share(flagged, "the input-pattern stage adds flags")
        else:
            # the flagged samples' shared pixel pattern (a patch, a blend), read by a cross-fitted linear model,
            # finds the poison the model fitted one by one (a backdoor that took in part); with too few flags,
            # the samples the model fits worst are the seed (a backdoor that did not take)
            with _timed(seconds, "input_pattern"):
                if seeded:
                    new, _, record = seeded_input_pattern_flags(images, y, flagged, loss,
                                                                random_state=p["random_state"])
                else:
                    new, _, record = input_pattern_flags(images, y, flagged, random_state=p["random_state"])
            pattern_report = {**pattern_report, **record}
            if new.any():
                cid = int(clusters.max()) + 1 if clusters.size else 0
                clusters[new] = cid
                pattern_report["cluster"] = cid
                floor = float(np.min(scores[flagged])) if flagged.any() else float(np.max(scores))
                scores = np.where(new, np.maximum(scores, floor), scores)
                flagged = flagged | new
                representation = ((representation + "+") if found else "") + "input-pattern"
                found = True

    if run_latent and loss is not None and latent_report.get("used") and flagged.any():
        # parts of several classes (>= latent_wide_share of each) that the model fits no better and reads as
        # their own class's images: a second source, not poison (latent.final_wide_classes), whichever stage
        # flagged them
        from flare_core.detectors.latent import final_wide_classes

        wide = final_wide_classes(flagged, y, loss, nxt, known=latent_report.get("dataset_wide_split", {}),
                                  wide_share=p["latent_wide_share"], loss_ratio=p["latent_loss_ratio"])
        if wide:
            drop = flagged & np.isin(y, list(wide))
            flagged = flagged & ~drop
            latent_report["dataset_wide_split"] = {**latent_report.get("dataset_wide_split", {}),
                                                   **{str(c): w for c, w in wide.items()}}
            latent_report["dataset_wide_unflagged"] = int(drop.sum())  # by the other stages, after the latent stage
            logger.info("FLARE: %d flags in classes %s dropped: a dataset-wide split", int(drop.sum()), sorted(wide))
            found = bool(flagged.any())
            if not found:
                representation = "layers"  # as when no stage finds anything
    if run_latent and latent_report.get("used"):
        drop = _drop_label_noise(flagged, clusters, "final flags")
        if drop.any():
            flagged = flagged & ~drop
            found = bool(flagged.any())
        if not found:  # also where the tail-group stage's flags were all dropped as label noise
            representation = "layers"

    score_rule = "benign distance"
    if p["mode"] == "default":
        # every flagged sample outranks every unflagged one; the unflagged are ranked by how atypical they
        # are in their class's penultimate features (the poison FLARE cannot separate at low rates is),
        # in a class with flags by their stage score when that is higher (the near-misses)
        unflagged = None if atyp is None else unflagged_ranking(scores, flagged, atyp, y, minority)
        scores = rank_flagged_first(scores, flagged, unflagged)
        score_rule = ("flagged first; unflagged by atypicality in their class's penultimate features (in a class "
                      "with flags, or their own stage score if higher)"
                      + ("; the members of a class's minority mode along its top singular direction first"
                         if minority_report["used"] else "") if atyp is not None
                      else "flagged first; unflagged by benign distance")
    evidence = {
        "mode": p["mode"],
        "scope": p["scope"],
        "found": found,
        "subspace": chosen_k,
        "representation": representation,
        "columns_tried": [a["columns"] for a in attempts],
        "latent": latent_report,
        "shortcut": shortcut_report,
        "minority_modes": minority_report,
        "input_pattern": pattern_report,
        "units": unit_evidence,
        "attempts": attempts,
    }
    if not found:
        evidence["conclusion"] = ("no poison found: "
                                  + ("the per-layer groups were not separated in the penultimate features"
                                     if refused_layer_groups else "no prefix of the columns gave a separated cluster")
                                  + (" and neither did the per-channel columns" if channel_runs is not None else "")
                                  + (" and no class split in its penultimate features" if latent_report["used"] else "")
                                  + (" or held a tight island of atypical samples or a group the model sees as "
                                     "another class" if "tail_groups" in latent_report else "")
                                  + (" and neither smoothing nor sharpening acts as a trigger for the model"
                                     if shortcut_report.get("used") and not shortcut_report.get("found") else "")
                                  + (" and no class held a minority mode the model fits far better"
                                     if minority_report["used"] and p["minority_modes"] == "auto"
                                     and "why_not_flagged" not in minority_report else ""))
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
        "representation": representation,
        "latent": {k: ({kk: vv for kk, vv in v.items() if kk != "classes"} if k == "tail_groups" else v)
                   for k, v in latent_report.items() if k != "classes"},
        "shortcut": shortcut_report,
        "minority_modes": {k: v for k, v in minority_report.items() if k != "classes"},
        "input_pattern": pattern_report,
        "columns_used": list(range(chosen_k)),
        "found": found,
        "n_flagged": int(flagged.sum()),
        "flagged_per_class": per_class,
        "scaling": scaling,
        "score": score_rule,
        "seconds": _phase_seconds(seconds, time.perf_counter() - t_start, len(attempts)),
        "search": execution.describe(n_workers, p["n_jobs"], sent, sent.get("rows")),
        "versions": package_versions(),
        "evidence": evidence,
    }
    return FlareResult(flagged, scores, clusters, embedding, chosen_k, evidence, report,
                       noise_dropped if run_latent and latent_report.get("used") else None)


def _over_add_on_share(flagged: np.ndarray, what: str) -> Optional[str]:
    """Why an add-on stage (shortcut, minority modes, input pattern) adds nothing: the other stages flagged
    at least ``TAIL_MAX_FLAGGED_SHARE`` of the samples (a separated poison population, beside which such a
    stage would add genuine samples); None when it may add flags.  ``what`` ends the sentence."""
    from flare_core.detectors.tail_groups import TAIL_MAX_FLAGGED_SHARE

    if flagged.mean() < TAIL_MAX_FLAGGED_SHARE:
        return None
    return (f"the other stages flagged {flagged.mean():.1%} of the samples; {what} when they flagged under "
            f"{TAIL_MAX_FLAGGED_SHARE:.0%}")


def _input_pattern_report(p: dict[str, Any], images: Any, y: Optional[np.ndarray], n: int) -> dict[str, Any]:
    """The input-pattern stage's record before it runs: ``why_not`` when it cannot (:mod:`.input_pattern`)."""
    if p["mode"] != "default":
        return {"used": False, "why_not": "faithful mode reproduces the published method, which has no such stage"}
    if p["input_pattern"] == "off":
        return {"used": False, "why_not": "input_pattern='off'"}
    if images is None:
        return {"used": False, "why_not": "no images were passed (fit(..., images=))"}
    if y is None:
        return {"used": False, "why_not": "the input-pattern stage needs the class labels y"}
    if len(images) != n:
        raise FlareError(f"images must hold one image per row of X ({n}), got {len(images)}.")
    return {"used": False}


def _minority_report(p: dict[str, Any], has_latent: bool) -> dict[str, Any]:
    """Whether the minority-mode stage runs (:mod:`.minority_mode`), with its settings or why not."""
    from flare_core.detectors.minority_mode import (MAX_MINORITY_WEIGHT, MIN_BIC_GAIN, MIN_CLASS_ROWS,
                                                    MIN_FITTED_BETTER, MIN_MOVED_IN)

    if p["mode"] == "faithful":
        why_not = "faithful mode reproduces the published method's scores"
    elif p["minority_modes"] == "off":
        why_not = "minority_modes='off'"
    elif not has_latent:
        why_not = "it needs the penultimate features and the class labels (the latent stage's inputs)"
    else:
        return {"used": True, "max_weight": MAX_MINORITY_WEIGHT, "min_bic_gain": MIN_BIC_GAIN,
                "min_rows": MIN_CLASS_ROWS, "min_fitted_better": MIN_FITTED_BETTER, "min_moved_in_more_than_control": MIN_MOVED_IN}
    return {"used": False, "why_not": why_not}


def _phase_seconds(seconds: dict[str, float], total: float, n_attempts: int) -> dict[str, Any]:
    """Seconds per phase of one fit, summed over every prefix tried (with worker processes, summed over the
    workers too, so they can add up to more than ``total``, the wall time): ``umap``, ``hdbscan``,
    ``decision`` (the tree walk and separation tests), ``placing`` (samples outside the clustered sample),
    ``latent``, ``confirm``, ``tail_groups``, ``join``, ``minority_modes``, ``input_pattern``; ``other`` is the rest (standardising, collecting); ``prefixes_tried``."""
    out: dict[str, Any] = {k: round(v, 3) for k, v in seconds.items()}
    out["other"] = round(max(0.0, total - sum(seconds.values())), 3)
    out["total"] = round(total, 3)
    out["prefixes_tried"] = int(n_attempts)
    return out


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
                 n_epochs: Optional[int] = None, use_channels: str = "off", sample_size: Optional[int] = 20000,
                 max_label_share: float = 0.9, use_latent: str = "auto", latent_separation: float = 6.5,
                 latent_loss_ratio: float = 10.0, latent_loss_separation: float = 5.5, latent_wide_share: float = 0.05,
                 label_noise_classes: int = 3, latent_confirm: float = 4.5,
                 latent_confirm_loss: float = 100.0, latent_confirm_pooled: float = 3.0, latent_join: str = "auto",
                 latent_max_clusters: int = 6, latent_tail_groups: str = "auto", use_shortcut: str = "auto",
                 shortcut_min_drop: float = 3.0, minority_modes: str = "auto", input_pattern: str = "auto",
                 random_state: Optional[int] = 0, n_jobs: Any = None):
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
        self.use_channels = use_channels
        self.sample_size = sample_size
        self.max_label_share = max_label_share
        self.use_latent = use_latent
        self.latent_separation = latent_separation
        self.latent_loss_ratio = latent_loss_ratio
        self.latent_loss_separation = latent_loss_separation
        self.latent_wide_share = latent_wide_share
        self.label_noise_classes = label_noise_classes
        self.latent_confirm = latent_confirm
        self.latent_confirm_loss = latent_confirm_loss
        self.latent_confirm_pooled = latent_confirm_pooled
        self.latent_join = latent_join
        self.latent_max_clusters = latent_max_clusters
        self.latent_tail_groups = latent_tail_groups
        self.use_shortcut = use_shortcut
        self.shortcut_min_drop = shortcut_min_drop
        self.minority_modes = minority_modes
        self.input_pattern = input_pattern
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, X: Any, y: Any = None, progress: Optional[ProgressCallback] = None, channels: Any = None,
            channel_layer: Any = None, latent: Any = None, logits: Any = None,
            shortcut: Any = None, mode_trigger: Any = None, images: Any = None) -> "FlareDetector":
        """``X``: the N x L per-layer matrix; ``channels``/``channel_layer``: the optional per-channel view;
        ``latent``/``logits``: penultimate features and logits for the latent stage; ``shortcut``: the
        shortcut stage's evidence; ``mode_trigger``: the minority modes' trigger test; ``images``: the training
        images for the input-pattern stage (see :func:`flare_detect`)."""
        result = flare_detect(X, y, progress=progress, channels=channels, channel_layer=channel_layer,
                              latent=latent, logits=logits, shortcut=shortcut, mode_trigger=mode_trigger,
                              images=images,
                              **self.get_params())
        self.flagged_ = result.flagged
        self.scores_ = result.scores
        self.clusters_ = result.clusters
        self.embedding_ = result.embedding
        self.subspace_ = result.subspace
        self.evidence_ = result.evidence
        self.report_ = result.report
        self.label_noise_ = result.label_noise
        return self
