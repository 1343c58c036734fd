"""FLARE detector contracts on small synthetic abnormality matrices (UMAP compiles once, ~1 min)."""
import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from flare_core.detectors import FlareDetector, flare_detect
from flare_core.detectors.clustering import run_hdbscan
from flare_core.detectors.decision import (assign_to_nearest, benign_overlap, decide_default, decide_faithful,
                                           tail_excess)
from flare_core.detectors.preprocess import robust_standardize
from flare_core.detectors.scoring import benign_distance_scores
from flare_core.detectors.sizes import auto_min_cluster_size
from flare_core.errors import FlareError


def planted(n=600, L=4, n_poison=30, shift=4.0, cols=2, seed=0):
    """Gaussian columns; ``n_poison`` rows shifted by ``-shift`` in the first ``cols`` (shallow) columns."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, L))
    poison = np.zeros(n, dtype=bool)
    poison[rng.choice(n, n_poison, replace=False)] = True
    X[poison, :cols] -= shift
    return X, poison


@pytest.fixture(scope="module")
def planted_run():
    X, poison = planted()
    X_before = X.copy()
    stages = []
    det = FlareDetector(random_state=0).fit(X, progress=lambda s, d, t: stages.append(s))
    return X, X_before, poison, det, stages


def test_planted_cluster_is_found(planted_run):
    _, _, poison, det, _ = planted_run
    tpr = (det.flagged_ & poison).sum() / poison.sum()
    fpr = (det.flagged_ & ~poison).sum() / (~poison).sum()
    assert tpr >= 0.95 and fpr <= 0.02
    assert det.subspace_ == 4 and det.evidence_["found"]


def test_scores_rank_flagged_highest(planted_run):
    _, _, poison, det, _ = planted_run
    assert roc_auc_score(poison, det.scores_) >= 0.99
    assert det.scores_[det.flagged_].min() > np.quantile(det.scores_[~det.flagged_], 0.95)


def test_shapes_input_unchanged_and_report(planted_run):
    X, X_before, _, det, stages = planted_run
    n = len(X)
    assert np.array_equal(X, X_before)
    assert det.flagged_.shape == (n,) and det.flagged_.dtype == bool
    assert det.scores_.shape == (n,) and np.isfinite(det.scores_).all()
    assert det.clusters_.shape == (n,) and (det.clusters_ >= 0).all()  # default mode: no -1 at all
    assert det.embedding_.shape == (n, 2)
    text = json.dumps(det.report_, allow_nan=False)
    report = json.loads(text)
    assert report["params"]["n_neighbors"] == 40 and report["params"]["standardize"] == "robust"
    assert report["subspace"] == det.subspace_ and report["n_flagged"] == int(det.flagged_.sum())
    assert {"umap-learn", "hdbscan", "numpy"} <= set(report["versions"])
    assert report["evidence"]["units"][0]["min_cluster_size"] == auto_min_cluster_size(n)
    assert {"subspace-search", "umap", "hdbscan"} <= set(stages)


def test_deterministic_with_random_state(planted_run):
    X, _, _, det, _ = planted_run
    again = clone(det).fit(X)
    assert np.array_equal(again.flagged_, det.flagged_)
    assert np.array_equal(again.embedding_, det.embedding_)
    assert np.array_equal(again.scores_, det.scores_)


def test_clean_data_flags_nothing_but_keeps_evidence():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 4))
    det = FlareDetector().fit(X)
    assert not det.flagged_.any()
    assert det.subspace_ == 4 and not det.evidence_["found"]
    assert "no poison found" in det.evidence_["conclusion"]
    assert det.evidence_["columns_tried"] == [4, 3, 2]
    # where the time went: every prefix tried paid UMAP + HDBSCAN, and the phases add up to the total
    sec = det.report_["seconds"]
    assert sec["prefixes_tried"] == 3 and sec["umap"] > 0 and sec["hdbscan"] > 0 and "latent" not in sec
    phases = sum(v for k, v in sec.items() if k not in ("total", "prefixes_tried"))
    assert phases == pytest.approx(sec["total"], abs=0.01) and sec["umap"] < sec["total"]
    unit = det.evidence_["units"][0]
    assert unit["n_cluster_nodes"] > 0 and "groups" in unit and "near_misses" in unit
    assert np.isfinite(det.scores_).all() and det.scores_.std() > 0  # still a ranking
    json.dumps(det.report_, allow_nan=False)


def test_torn_one_dimensional_gaussian_is_not_flagged():
    # UMAP tears a 1-D Gaussian into separate islands; the feature-space tests must reject them.
    X = np.random.default_rng(0).normal(size=(400, 1))
    det = FlareDetector().fit(X)
    assert not det.flagged_.any()
    groups = det.evidence_["units"][0]["groups"]
    assert len(groups) > 1 and all(g["status"].startswith(("benign", "not flagged")) for g in groups)


def test_feature_space_statistics():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 1))
    tail = x[:, 0] > 1.5
    assert tail_excess(x, tail, ~tail) == pytest.approx(1.0, abs=0.3)
    assert benign_overlap(x, tail, ~tail) == 0.0  # a tail is linearly separable, hence the excess test
    blob = np.r_[x[:, 0], rng.normal(size=50) + 8][:, None]
    group = np.r_[np.zeros(2000, bool), np.ones(50, bool)]
    assert tail_excess(blob, group, ~group) > 100


def test_adaptive_subspace_drops_deep_columns():
    # Poisoned rows are separated in the two shallow columns only; in the deep columns they are spread
    # over a wide range, so they form no cluster until those columns are dropped.
    rng = np.random.default_rng(0)
    n, L = 600, 4
    X = rng.normal(size=(n, L))
    poison = np.zeros(n, dtype=bool)
    poison[rng.choice(n, 30, replace=False)] = True
    X[poison, :2] -= 4.0
    X[poison, 2:] = rng.uniform(-12, 12, size=(poison.sum(), L - 2))
    det = FlareDetector(min_cluster_size=20).fit(X)
    assert det.subspace_ == 2 < L
    assert det.evidence_["columns_tried"] == [4, 3, 2]
    assert (det.flagged_ & poison).sum() >= 0.95 * poison.sum()
    assert (det.flagged_ & ~poison).sum() <= 0.02 * (~poison).sum()


def test_per_class_scope_flags_only_the_poisoned_class():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(900, 4))
    y = np.repeat([0, 1, 2], 300)
    poison = np.zeros(900, dtype=bool)
    poison[rng.choice(300, 30, replace=False)] = True
    X[poison, :2] -= 4.0
    det = FlareDetector(scope="per-class").fit(X, y)
    assert (det.flagged_ & poison).sum() >= 29 and not det.flagged_[y != 0].any()
    assert det.report_["flagged_per_class"] == {"0": int(det.flagged_.sum())}
    assert len(det.evidence_["units"]) == 3


def test_faithful_default_size_misses_small_poison_set():
    # The published min_cluster_size=100 cannot see a 30-sample poison set (a known weakness).
    X, poison = planted(n=600)
    res = flare_detect(X, mode="faithful")
    assert res.report["params"]["standardize"] == "none"
    assert res.evidence["units"][0]["min_cluster_size"] == 100
    assert not res.flagged.any() and not res.evidence["found"]
    assert all(a["units"][0]["walk_reason"] == "the root has no cluster children" for a in res.evidence["attempts"])


def test_faithful_with_small_clusters_finds_poison_but_overflags():
    # Characterises the published rule: it cuts at the first stable split and keeps only the most
    # common label (noise included), so much of the benign data is flagged too.
    X, poison = planted(n=600)
    res = flare_detect(X, mode="faithful", min_cluster_size=20)
    assert res.evidence["found"] and res.evidence["units"][0]["walk"]["found"]
    assert res.flagged[poison].all()
    assert res.flagged[~poison].mean() > 0.1
    assert (res.clusters == -1).any()  # faithful keeps HDBSCAN noise labels


def test_noise_is_never_the_benign_cluster():
    # A dense benign core, many diffuse benign points (HDBSCAN noise) and a small far poison blob.
    rng = np.random.default_rng(0)
    core = rng.normal(size=(300, 2))
    diffuse = rng.uniform(-12, 12, size=(900, 2))
    poison = rng.normal(size=(40, 2)) * 0.3 + 40
    E = np.vstack([core, diffuse, poison])
    kind = np.repeat([0, 1, 2], [300, 900, 40])
    _, tree = run_hdbscan(E, 25)
    ref = decide_faithful(tree)
    assert ref.evidence["labels"]["-1"] > 300  # at the reference's cut, much of the data is noise
    ours = decide_default(tree, E, E)
    assert not ours.flagged[kind == 0].any()
    assert ours.flagged[kind == 2].all()
    assert ours.flagged[kind == 1].mean() <= 0.01
    assert ref.flagged[kind == 1].mean() > 0.3  # the reference flags noise points as poison


def test_assign_to_nearest():
    E = np.array([[0.0, 0.0], [10.0, 0.0], [0.4, 0.0], [9.0, 0.0]])
    labels = np.array([0, 1, -1, -1])
    out = assign_to_nearest(E, labels, labels < 0)
    assert out.tolist() == [0, 1, 0, 1] and labels.tolist() == [0, 1, -1, -1]


def test_benign_distance_scores():
    rng = np.random.default_rng(0)
    E = np.vstack([rng.normal(size=(200, 2)), rng.normal(size=(10, 2)) + 30])
    benign = np.r_[np.ones(200, bool), np.zeros(10, bool)]
    s = benign_distance_scores(E, benign)
    assert np.median(s[benign]) == pytest.approx(1.0)
    assert s[~benign].min() > 5 * s[benign].max()


def test_auto_min_cluster_size_rule():
    assert auto_min_cluster_size(60_000) == 30
    assert auto_min_cluster_size(1_000) == 5
    assert auto_min_cluster_size(1_000_000) == 100
    assert auto_min_cluster_size(60_000, 6_000) == 30
    assert auto_min_cluster_size(60_000, 40) == 10


def test_robust_standardize_keeps_input_and_handles_constant_columns():
    X = np.c_[np.arange(10.0), np.ones(10)]
    before = X.copy()
    Z, center, scale = robust_standardize(X)
    assert np.array_equal(X, before)
    assert np.all(Z[:, 1] == 0) and center[0] == 4.5 and scale[1] == 1.0


def test_too_small_scope_is_skipped_not_crashed():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 3))
    det = FlareDetector().fit(X)
    assert not det.flagged_.any() and (det.clusters_ == -1).all()
    assert "skipped" in det.evidence_["units"][0]


X_OK = np.zeros((30, 3))


@pytest.mark.parametrize("params", [
    {"mode": "fast"},
    {"scope": "classwise"},
    {"n_neighbors": 1},
    {"min_dist": -0.1},
    {"min_cluster_size": 1},
    {"min_samples": 0},
    {"xi": -1.0},
    {"max_depth": 0},
    {"min_layers": 0},
    {"standardize": "zscore"},
    {"min_persistence": 1.0},
    {"max_overlap": 2.0},
    {"min_excess": -1.0},
    {"max_fraction": 0.0},
    {"n_epochs": 0},
    {"random_state": -1},
    {"n_neighbours": 10},
])
def test_bad_params_raise(params):
    with pytest.raises(FlareError):
        flare_detect(X_OK, **params)


def test_bad_inputs_raise():
    with pytest.raises(FlareError):
        flare_detect(np.zeros(30))
    with pytest.raises(FlareError):
        flare_detect(np.array([[0.0, np.nan]] * 30))
    with pytest.raises(FlareError):
        flare_detect(X_OK, np.zeros(29, dtype=int))
    with pytest.raises(FlareError):
        flare_detect(X_OK, scope="per-class")
