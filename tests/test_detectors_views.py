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
