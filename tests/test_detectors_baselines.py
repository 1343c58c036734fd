"""Activation Clustering, Spectral Signatures, SPECTRE and the registry on planted synthetic features."""
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from flare_core.detectors import DETECTORS, ActivationClustering, FlareDetector, SpectralSignatures, Spectre
from flare_core.errors import FlareError


def shifted(seed=0, n_per_class=300, D=16, n_poison=30, shift=6.0):
    """Two classes of isotropic features; ``n_poison`` samples of class 0 shifted in two directions."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(2 * n_per_class, D))
    y = np.repeat([0, 1], n_per_class)
    poison = np.zeros(len(X), dtype=bool)
    poison[rng.choice(n_per_class, n_poison, replace=False)] = True
    X[poison, :2] += shift
    return X, y, poison


def relu_features(seed=0, n_per_class=300, D=32, n_poison=30):
    """Low-rank ReLU features (like a penultimate layer); poisoned samples light up 4 extra units."""
    rng = np.random.default_rng(seed)
    X = np.maximum(rng.normal(size=(2 * n_per_class, 6)) @ rng.normal(size=(6, D)), 0)
    y = np.repeat([0, 1], n_per_class)
    poison = np.zeros(len(X), dtype=bool)
    poison[rng.choice(n_per_class, n_poison, replace=False)] = True
    X[poison, :4] += 8.0
    return X, y, poison


def test_ac_pca_finds_planted_cluster_only():
    X, y, poison = shifted()
    before = X.copy()
    ac = ActivationClustering(reduction="pca").fit(X, y)
    assert np.array_equal(X, before)
    assert ac.flagged_.shape == ac.scores_.shape == ac.clusters_.shape == (len(X),)
    assert np.array_equal(ac.flagged_, poison)
    assert roc_auc_score(poison, ac.scores_) >= 0.99
    assert ac.report_["classes"]["0"]["flagged"] and not ac.report_["classes"]["1"]["flagged"]
    json.dumps(ac.report_, allow_nan=False)


def test_ac_ica_default_finds_poison_in_target_class():
    X, y, poison = relu_features()
    ac = ActivationClustering().fit(X, y)
    assert ac.report_["params"]["reduction"] == "ica"
    assert np.array_equal(ac.flagged_[y == 0], poison[y == 0])


def test_ac_ica_ignores_dead_units():
    """A unit that never fires in a class (a dead ReLU, common in real penultimate layers) used to make FastICA's
    whitening divide by zero (sklearn signs its components by the first feature's loading, zero here) and AC failed
    on the NaN; a feature constant within the class carries nothing to split on and is left out of the reduction."""
    X, y, poison = relu_features()
    X = np.hstack([np.zeros((len(X), 1)), X])  # the first unit is dead in every class
    before = X.copy()
    ac = ActivationClustering().fit(X, y)
    assert np.array_equal(X, before) and np.isfinite(ac.scores_).all()
    assert np.array_equal(ac.flagged_[y == 0], poison[y == 0])
    pca = ActivationClustering(reduction="pca").fit(X, y)
    np.testing.assert_array_equal(pca.flagged_, ActivationClustering(reduction="pca").fit(X[:, 1:], y).flagged_)


def test_ss_removes_top_fraction_and_ranks_poison_first():
    X, y, poison = shifted()
    ss = SpectralSignatures(eps=0.1).fit(X, y)
    assert ss.flagged_.sum() == 2 * round(1.5 * 0.1 * 300)
    assert ss.flagged_[poison].all()
    assert roc_auc_score(poison, ss.scores_) >= 0.99
    assert np.median(ss.scores_[y == 1]) == pytest.approx(1.0)
    json.dumps(ss.report_, allow_nan=False)


def test_spectre_ranks_poison_first():
    X, y, poison = shifted()
    sp = Spectre(n_components=8, eps=0.1).fit(X, y)
    assert sp.flagged_.sum() == 2 * 45 and sp.flagged_[poison].all()
    assert roc_auc_score(poison, sp.scores_) >= 0.99
    json.dumps(sp.report_, allow_nan=False)


def test_tiny_class_is_skipped():
    X, y, _ = shifted()
    X2, y2 = np.vstack([X, np.ones((1, X.shape[1]))]), np.r_[y, 7]
    for est in (ActivationClustering(reduction="pca"), SpectralSignatures(), Spectre(n_components=4)):
        est.fit(X2, y2)
        assert not est.flagged_[-1] and "skipped" in est.report_["classes"]["7"]


@pytest.mark.parametrize("est", [
    ActivationClustering(reduction="svd"),
    ActivationClustering(n_components=0),
    ActivationClustering(size_threshold=0.7),
    SpectralSignatures(eps=0.0),
    SpectralSignatures(removal_factor=-1),
    Spectre(alpha=0),
])
def test_bad_params_raise(est):
    X, y, _ = shifted()
    with pytest.raises(FlareError):
        est.fit(X, y)


@pytest.mark.parametrize("cls", [ActivationClustering, SpectralSignatures, Spectre])
def test_labels_required(cls):
    with pytest.raises(FlareError):
        cls().fit(np.zeros((10, 3)), None)


def test_registry():
    assert sorted(DETECTORS) == ["ac", "flare", "flare-faithful", "spectre", "ss"]
    for name, spec in DETECTORS.items():
        assert spec.name == name and spec.label and spec.description
        assert spec.input in ("abnormality", "pooled")
    assert DETECTORS["flare"].input == "abnormality" and DETECTORS["ss"].input == "pooled"
    det = DETECTORS["flare-faithful"].factory(mode="default", min_cluster_size=50)
    assert isinstance(det, FlareDetector) and det.mode == "faithful" and det.min_cluster_size == 50
    assert DETECTORS["flare"].factory().mode == "default"
    assert DETECTORS["ss"].factory(eps=0.05).eps == 0.05
