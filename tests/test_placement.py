"""The clustered sample and the nearest-neighbour placement shared by FLARE default and the per-class views."""
import numpy as np
import pytest
from scipy.spatial import cKDTree

from flare_core.detectors.placement import nearest_rows, place_by_neighbours
from flare_core.sampling import sample_keeping, stratified_sample


def test_sample_is_stratified_sorted_and_deterministic():
    y = np.repeat([0, 1, 2], [600, 300, 100])
    idx = np.arange(len(y))
    a, b = stratified_sample(idx, y, 200, 0), stratified_sample(idx, y, 200, 0)
    assert np.array_equal(a, b) and np.all(np.diff(a) > 0)
    counts = np.bincount(y[a], minlength=3)
    assert counts.tolist() == [120, 60, 20]
    assert np.array_equal(stratified_sample(idx, y, None, 0), idx)
    assert np.array_equal(stratified_sample(idx, y, 5000, 0), idx)


def test_place_by_neighbours_places_rows_by_their_nearest_embedded_neighbours():
    rng = np.random.default_rng(0)
    Z = np.vstack([rng.normal(0, 0.1, (50, 3)), rng.normal(5, 0.1, (50, 3))])
    sampled = np.arange(0, 100, 2)
    groups_s = (Z[sampled, 0] > 2.5).astype(np.int64)
    emb_s = np.c_[groups_s * 10.0, np.zeros(len(sampled))]
    emb, groups = place_by_neighbours(Z, sampled, emb_s, groups_s)
    assert np.array_equal(groups, (Z[:, 0] > 2.5).astype(np.int64))
    assert np.allclose(emb[1::2, 0], groups[1::2] * 10.0)
    assert np.array_equal(emb[sampled], emb_s)


@pytest.mark.parametrize("d", [3, 20, 130])
def test_nearest_rows_equal_an_exact_tree_search(d):
    rng = np.random.default_rng(d)
    ref, query = rng.normal(size=(700, d)), rng.normal(size=(300, d))
    _, exact = cKDTree(ref).query(query, k=10)
    assert np.array_equal(nearest_rows(ref, query, 10), exact)
    assert nearest_rows(ref[:4], query, 10).shape == (300, 4)  # k capped by the reference rows


def test_noise_is_a_group_like_any_other_and_ties_go_to_the_lowest_id():
    Z = np.arange(12, dtype=np.float64).reshape(-1, 1)
    sampled = np.array([0, 1, 2, 9, 10, 11])
    groups_s = np.array([-1, -1, -1, 3, 3, 3])
    emb_s = np.zeros((6, 2))
    _, groups = place_by_neighbours(Z, sampled, emb_s, groups_s, k=3)
    assert groups[[3, 4]].tolist() == [-1, -1] and groups[[7, 8]].tolist() == [3, 3]
    _, tie = place_by_neighbours(Z, sampled, emb_s, groups_s, k=6)  # 3 votes each: the lowest id
    assert (tie[3:9] == -1).all()


def test_placement_reads_float32_on_disk_and_changes_nothing(tmp_path):
    rng = np.random.default_rng(2)
    Z = np.lib.format.open_memmap(tmp_path / "z.npy", mode="w+", dtype=np.float32, shape=(400, 8))
    Z[:] = rng.normal(size=(400, 8))
    Z.flush()
    Z = np.load(tmp_path / "z.npy", mmap_mode="r")
    before = np.array(Z)
    sampled = np.arange(0, 400, 4)
    emb_s = rng.normal(size=(100, 2))
    groups_s = rng.integers(-1, 3, 100)
    emb, groups = place_by_neighbours(Z, sampled, emb_s, groups_s)
    ref_emb, ref_groups = place_by_neighbours(before.astype(np.float64), sampled, emb_s, groups_s)
    assert np.array_equal(groups, ref_groups) and np.allclose(emb, ref_emb)
    assert np.array_equal(np.asarray(Z), before)


def test_sample_keeping_caps_the_kept_rows_and_still_fills_the_sample():
    keep = np.zeros(1000, bool)
    keep[:50] = True
    a = sample_keeping(1000, 300, keep, seed=1, keep_share=0.5)
    assert len(a) == 300 and np.all(np.diff(a) > 0) and keep[a].sum() == 50  # under the cap: all kept rows
    keep[:800] = True
    b = sample_keeping(1000, 300, keep, seed=1, keep_share=0.5)
    assert len(b) == 300 and keep[b].sum() == 150  # capped at half
    every = sample_keeping(1000, 300, np.ones(1000, bool), seed=1, keep_share=0.5)
    assert len(every) == 300 and len(np.unique(every)) == 300  # nothing else to fill with: more kept rows
    assert np.array_equal(sample_keeping(1000, 300, keep, seed=1, keep_share=0.5), b)
    assert np.array_equal(sample_keeping(10, 300, keep[:10]), np.arange(10))
