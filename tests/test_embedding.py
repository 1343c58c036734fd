"""UMAP embedding helper: exact neighbours handed to UMAP instead of its NNDescent index."""
import numpy as np

from flare_core.detectors import embedding as E


def test_exact_knn_is_exact_and_lists_each_row_first():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    idx, dist, index = E.exact_knn(X, 7)
    assert index is None and idx.shape == dist.shape == (300, 7)
    assert np.array_equal(idx[:, 0], np.arange(300)) and np.allclose(dist[:, 0], 0)
    full = np.linalg.norm(X[:, None] - X[None], axis=2)
    assert np.allclose(np.sort(full, axis=1)[:, :7], dist, atol=1e-5)
    assert np.all(np.diff(dist, axis=1) >= -1e-6)


def test_umap_gets_precomputed_neighbours_and_separates_two_blobs(monkeypatch):
    calls = []
    real = E.exact_knn
    monkeypatch.setattr(E, "exact_knn", lambda X, k: calls.append((len(X), k)) or real(X, k))
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(size=(500, 3)), rng.normal(size=(100, 3)) + 8])
    X_before = X.copy()
    emb, method = E.umap_2d(X, n_neighbors=15, random_state=0, n_epochs=100)
    assert calls == [(600, 15)] and method == "umap" and emb.shape == (600, 2)
    assert np.array_equal(X, X_before)
    a, b = emb[:500].mean(axis=0), emb[500:].mean(axis=0)
    spread = emb[:500].std(axis=0).max()
    assert np.linalg.norm(a - b) > 3 * spread
    again, _ = E.umap_2d(X, n_neighbors=15, random_state=0, n_epochs=100)
    assert np.array_equal(emb, again)


def test_tiny_input_lowers_n_neighbors_to_what_exists(monkeypatch):
    calls = []
    real = E.exact_knn
    monkeypatch.setattr(E, "exact_knn", lambda X, k: calls.append((len(X), k)) or real(X, k))
    X = np.random.default_rng(2).normal(size=(12, 3))
    emb, method = E.umap_2d(X, n_neighbors=40, random_state=0, n_epochs=50)
    assert calls == [(12, 11)] and method == "umap" and emb.shape == (12, 2) and np.isfinite(emb).all()
    assert E.umap_2d(X[:5], random_state=0)[1] == "pca"
