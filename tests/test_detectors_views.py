"""Per-class views for the dashboard."""
import numpy as np
import pytest

from flare_core.detectors import class_views
from flare_core.errors import FlareError


def test_views_shapes_tiny_and_missing_classes():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(150, 5)), rng.normal(size=(40, 5)) + 8, rng.normal(size=(5, 5))])
    y = np.r_[np.zeros(190, int), np.full(5, 1)]
    flagged = np.zeros(195, bool)
    flagged[150:190] = True
    before = X.copy()
    views = class_views(X, y, flagged=flagged, classes=[0, 1, 9])
    assert np.array_equal(X, before) and sorted(views) == [0, 1, 9]
    v = views[0]
    assert v.indices.tolist() == list(range(190)) and v.embedding.shape == (190, 2)
    assert v.clusters.shape == (190,) and v.method == "umap"
    assert sum(v.cluster_sizes.values()) == 190
    assert set(v.cluster_stability) == set(v.cluster_sizes) - {-1}
    assert all(0.0 <= s <= 1.0 for s in v.cluster_stability.values())
    assert v.flagged.sum() == 40
    tiny = views[1]
    assert tiny.method == "pca" and tiny.embedding.shape == (5, 2) and (tiny.clusters == 0).all()
    assert views[9].embedding.shape == (0, 2) and views[9].clusters.shape == (0,)


def test_views_deterministic():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(60, 3)), np.zeros(60, int)
    a, b = class_views(X, y), class_views(X, y)
    assert np.array_equal(a[0].embedding, b[0].embedding) and np.array_equal(a[0].clusters, b[0].clusters)


def test_views_bad_arguments():
    X, y = np.zeros((10, 2)), np.zeros(10, int)
    with pytest.raises(FlareError):
        class_views(X, y, flagged=np.zeros(9, bool))
    with pytest.raises(FlareError):
        class_views(X, y[:5])
    with pytest.raises(FlareError):
        class_views(X, y, n_neighbors=1)
    with pytest.raises(FlareError):
        class_views(X, y, sample_size=50)


def _planted_class(n=1500, n_planted=60, seed=2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    planted = np.zeros(n, bool)
    planted[rng.choice(n, n_planted, replace=False)] = True
    X[planted] += 7.0
    return X, planted


def test_a_large_class_is_embedded_on_a_sample_and_the_rest_placed_with_the_planted_cluster_kept():
    X, planted = _planted_class()
    y = np.zeros(len(X), int)
    flagged = planted.copy()
    before = X.copy()
    v = class_views(X, y, flagged=flagged, sample_size=500)[0]
    assert np.array_equal(X, before)
    assert v.embedded.sum() == 500 and v.embedded[planted].all()  # every flagged row is embedded, not placed
    assert v.embedding.shape == (1500, 2) and np.isfinite(v.embedding).all()
    assert sum(v.cluster_sizes.values()) == 1500 and (v.clusters >= -1).all()
    # the planted rows are one cluster of their own, whole, and no other row joins it
    ids = np.unique(v.clusters[planted])
    assert len(ids) == 1 and ids[0] >= 0
    assert np.array_equal(v.clusters == ids[0], planted)
    # placed rows sit among the embedded rows of their group
    placed = ~v.embedded & ~planted
    centre = v.embedding[v.embedded & ~planted].mean(axis=0)
    planted_centre = v.embedding[planted].mean(axis=0)
    d_own = np.linalg.norm(v.embedding[placed] - centre, axis=1)
    d_planted = np.linalg.norm(v.embedding[placed] - planted_centre, axis=1)
    assert (d_own < d_planted).all()


def test_a_class_at_or_under_the_sample_size_is_embedded_whole_as_before():
    X, planted = _planted_class(n=400, n_planted=30)
    y = np.zeros(len(X), int)
    a = class_views(X, y, flagged=planted, sample_size=400)[0]
    b = class_views(X, y, flagged=planted, sample_size=None)[0]
    assert a.embedded.all() and b.embedded.all()
    assert np.array_equal(a.embedding, b.embedding) and np.array_equal(a.clusters, b.clusters)


def test_flagged_rows_take_at_most_half_of_the_embedded_sample():
    X, planted = _planted_class(n=1200, n_planted=10)
    y = np.zeros(len(X), int)
    flagged = np.zeros(len(X), bool)
    flagged[:900] = True
    v = class_views(X, y, flagged=flagged, sample_size=300)[0]
    assert v.embedded.sum() == 300
    assert v.embedded[flagged].sum() == 150 and v.embedded[~flagged].sum() == 150
    w = class_views(X, y, flagged=flagged, sample_size=300)[0]  # deterministic for the seed
    assert np.array_equal(v.embedded, w.embedded) and np.array_equal(v.embedding, w.embedding)
