"""Penultimate features in float32, as the feature pass gives them (memory-mapped from a file when large): every
detector reads them a class at a time as float64, so every number equals what a float64 copy of the whole matrix
gives, without that copy (at a million samples of 512 features it was 4 GB)."""
import json
import tracemalloc

import numpy as np
import pytest

from flare_core.detectors import ActivationClustering, SpectralSignatures, Spectre
from flare_core.detectors import _validation as V
from flare_core.detectors.flare import flare_detect
from flare_core.detectors.views import class_views
from flare_core.errors import FlareError
from test_detectors_latent import logits_for, two_class_set
from test_detectors_tail_groups import _flare_inputs


def _mapped(tmp_path, name, a):
    """``a`` as float32, saved and opened read-only memory-mapped (what a large feature pass returns)."""
    path = tmp_path / f"{name}.npy"
    np.save(path, np.asarray(a, dtype=np.float32))
    return np.load(path, mmap_mode="r")


def _same_result(a, b):
    np.testing.assert_array_equal(a.flagged, b.flagged)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.clusters, b.clusters)
    report = [json.loads(json.dumps(r.report, default=str)) for r in (a, b)]
    for r in report:
        r.pop("seconds", None)
    assert report[0] == report[1]


def test_check_matrix_keeps_float32_only_when_asked():
    P = np.arange(12, dtype=np.float32).reshape(6, 2)
    assert V.check_matrix(P, keep_float32=True) is P
    assert V.check_matrix(P).dtype == np.float64
    assert V.check_matrix(P.astype(np.float64), keep_float32=True).dtype == np.float64
    assert V.check_matrix(P.tolist(), keep_float32=True).dtype == np.float64
    np.testing.assert_array_equal(V.class_rows(P, np.array([4, 1])), [[8.0, 9.0], [2.0, 3.0]])
    assert V.class_rows(P, np.array([0])).dtype == np.float64


def test_nan_rows_are_counted_across_the_checks_chunks(monkeypatch):
    monkeypatch.setattr(V, "FINITE_CHECK_ROWS", 4)
    P = np.zeros((10, 3), dtype=np.float32)
    P[1, 0] = P[1, 2] = P[6, 1] = np.nan
    P[9, 0] = np.inf
    with pytest.raises(FlareError, match="in 3 sample"):
        V.check_matrix(P, "latent", keep_float32=True)


@pytest.mark.parametrize("case", ["tail group", "latent split"])
def test_flare_default_gives_the_same_result_from_float32_features_on_disk(tmp_path, case):
    if case == "tail group":
        X, y, P, Lg, _ = _flare_inputs(8, 30)
    else:
        rng = np.random.default_rng(3)
        P, y, loss, _ = two_class_set(rng, n_poison=120)
        Lg = logits_for(loss, y)
        X = rng.normal(size=(len(y), 6))
    P32 = _mapped(tmp_path, "pooled", P)
    before = np.array(P32)
    on_disk = flare_detect(X, y, latent=P32, logits=Lg, n_epochs=50)
    copied = flare_detect(X, y, latent=np.asarray(P32, dtype=np.float64), logits=Lg, n_epochs=50)
    assert on_disk.flagged.any()
    _same_result(on_disk, copied)
    np.testing.assert_array_equal(P32, before)


@pytest.mark.parametrize("detector", [ActivationClustering, SpectralSignatures, Spectre])
def test_baselines_give_the_same_result_from_float32_features_on_disk(tmp_path, detector):
    rng = np.random.default_rng(0)
    X = np.maximum(rng.normal(size=(600, 6)) @ rng.normal(size=(6, 24)), 0)
    y = np.repeat([0, 1], 300)
    X[rng.choice(300, 30, replace=False), :4] += 8.0
    X32 = _mapped(tmp_path, "X", X)
    a = detector().fit(X32, y)
    b = detector().fit(np.asarray(X32, dtype=np.float64), y)
    np.testing.assert_array_equal(a.flagged_, b.flagged_)
    np.testing.assert_array_equal(a.scores_, b.scores_)
    assert a.flagged_.any()


def test_class_views_are_the_same_from_float32_features_on_disk(tmp_path):
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(size=(120, 8)), rng.normal(size=(30, 8)) + 5.0])
    y = np.repeat([0, 1], 75)
    a = class_views(_mapped(tmp_path, "X", X), y, n_epochs=30)
    b = class_views(np.asarray(X, dtype=np.float32).astype(np.float64), y, n_epochs=30)
    for c in (0, 1):
        np.testing.assert_array_equal(a[c].embedding, b[c].embedding)
        np.testing.assert_array_equal(a[c].clusters, b[c].clusters)


def test_a_baseline_holds_one_class_in_float64_not_the_whole_matrix():
    rng = np.random.default_rng(2)
    n, d, k = 20000, 64, 10
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = np.arange(n) % k
    tracemalloc.start()
    try:
        SpectralSignatures().fit(X, y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * n * d * 8  # a float64 copy of X was 1x this; one class is a tenth of it


def test_the_per_channel_view_is_standardised_a_block_at_a_time_with_the_same_numbers(tmp_path):
    from flare_core.detectors import flare as F
    from flare_core.detectors.preprocess import robust_standardize

    rng = np.random.default_rng(4)
    n, c = 2000, 12 * F.CHANNEL_BLOCK + 17  # many blocks, the last one short
    C = np.abs(rng.standard_cauchy(size=(n, c))).astype(np.float32)
    C[:, 5] = 0.0  # a constant column
    C[: n // 2, 9] = 2.0  # a column whose MAD is 0
    layer = np.arange(c) % 4
    whole, _, _ = robust_standardize(np.log(np.maximum(C.astype(np.float64), 0.0) + 1e-3))  # the old way
    mapped = _mapped(tmp_path, "channels", C)
    tracemalloc.start()
    try:
        Zc, got_layer = F._channel_matrix(mapped, layer, n, 4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(Zc, whole)
    np.testing.assert_array_equal(got_layer, layer)
    assert peak < 2 * Zc.nbytes  # the output and one block's temporaries (the whole matrix at once: 4x)
