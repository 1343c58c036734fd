"""The final suspicion scores: flagged samples first, the unflagged ranked by how atypical they are in their class."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from flare_core.detectors.scoring import class_atypicality, rank_flagged_first


def test_rank_flagged_first_puts_every_flagged_sample_above_every_unflagged_one():
    rng = np.random.default_rng(0)
    scores = rng.gamma(2.0, size=500)
    flagged = rng.random(500) < 0.1
    scores[flagged] *= 0.3  # flagged samples that currently score below some unflagged ones
    before = scores.copy()
    out = rank_flagged_first(scores, flagged)
    assert out[flagged].min() > out[~flagged].max()
    assert np.array_equal(out[flagged], scores[flagged])  # flagged keep their scores
    # the unflagged keep their own order
    assert np.array_equal(np.argsort(out[~flagged], kind="stable"), np.argsort(scores[~flagged], kind="stable"))
    assert np.array_equal(scores, before)


def test_rank_flagged_first_ranks_the_unflagged_by_the_given_values():
    t = np.array([0.5, 3.0, 1.0, 2.0])
    out = rank_flagged_first(np.array([9.0, 9.0, 9.0, 9.0]), np.zeros(4, bool), t)
    assert list(np.argsort(-out)) == [1, 3, 2, 0] and (out < 1).all() and (out >= 0).all()


def test_rank_flagged_first_with_flagged_scores_at_or_below_zero():
    out = rank_flagged_first(np.array([0.0, -1.0, 5.0, 0.2]), np.array([True, True, False, False]))
    assert out[:2].min() > out[2:].max() and out[0] > out[1]


def test_class_atypicality_finds_planted_outliers_and_is_scale_free_per_class():
    rng = np.random.default_rng(1)
    P = rng.normal(size=(1200, 16))
    y = np.repeat([0, 1, 2], 400)
    P[y == 1] *= 100.0  # a class on another scale
    planted = np.zeros(1200, bool)
    planted[[5, 17, 450, 900]] = True
    P[planted] += 6.0 * np.where(y[planted] == 1, 100.0, 1.0)[:, None]
    before = P.copy()
    a = class_atypicality(P, y)
    assert np.array_equal(P, before)
    assert roc_auc_score(planted, a) == 1.0
    for c in range(3):
        assert np.median(a[y == c]) == pytest.approx(1.0)


def test_class_atypicality_of_a_single_sample_class_is_zero():
    P = np.vstack([np.random.default_rng(2).normal(size=(10, 3)), [[50.0, 50.0, 50.0]]])
    y = np.array([0] * 10 + [1])
    a = class_atypicality(P, y)
    assert a[-1] == 0.0 and np.isfinite(a).all()


def test_unflagged_ranking_uses_the_stage_score_only_in_classes_with_flags():
    from flare_core.detectors.scoring import unflagged_ranking

    labels = np.array([0, 0, 0, 1, 1, 1])
    flagged = np.array([True, False, False, False, False, False])
    scores = np.array([9.0, 5.0, 0.1, 7.0, 0.2, 0.3])
    atyp = np.array([1.0, 1.0, 2.0, 1.0, 3.0, 1.0])
    out = unflagged_ranking(scores, flagged, atyp, labels)
    assert list(out[1:3]) == [5.0, 2.0]  # class 0 has a flag: the larger of the two
    assert list(out[3:]) == [1.0, 3.0, 1.0]  # class 1 has none: atypicality alone (its 7.0 is ignored)
    assert np.array_equal(atyp, [1.0, 1.0, 2.0, 1.0, 3.0, 1.0])  # input unchanged


def test_class_atypicality_floors_the_scale_of_a_nearly_silent_column():
    rng = np.random.default_rng(11)
    P = rng.normal(size=(600, 16))
    y = np.repeat([0, 1], 300)
    P[:, 0] = np.abs(rng.normal(size=600)) * 1e-3  # a channel nearly silent in both classes ...
    P[:8, 0] = 0.7  # ... that fires, at an ordinary level, for eight samples of class 0
    P[300:310, 1:5] += 6.0  # ten samples of class 1 odd in four ordinary features
    before = P.copy()
    floored = class_atypicality(P, y)
    pure_mad = class_atypicality(P, y, sd_floor=0.0)
    assert pure_mad[:8].min() > 100  # z ~ 1,000 in one column: the whole statistic
    assert floored[:8].max() < 10  # the floor bounds it at about 1 / (floor x sqrt(share firing))
    np.testing.assert_allclose(floored[300:], pure_mad[300:])  # columns with a real spread are unchanged
    assert floored[300:310].min() > np.percentile(floored[310:], 99)
    np.testing.assert_array_equal(P, before)


def test_class_atypicality_is_unchanged_by_the_floor_when_every_column_has_spread():
    rng = np.random.default_rng(12)
    P = rng.standard_t(5, size=(500, 12))
    y = rng.integers(0, 3, 500)
    np.testing.assert_allclose(class_atypicality(P, y), class_atypicality(P, y, sd_floor=0.0))


def test_robust_standardize_sd_floor_only_raises_scales_under_it():
    from flare_core.detectors.preprocess import robust_standardize

    rng = np.random.default_rng(13)
    X = rng.normal(size=(300, 4))
    X[:, 0] = np.abs(rng.normal(size=300)) * 1e-3
    X[:6, 0] = 0.7
    before = X.copy()
    _, _, plain = robust_standardize(X)
    _, _, floored = robust_standardize(X, sd_floor=0.2)
    np.testing.assert_allclose(floored[1:], plain[1:])  # spread columns keep their MAD scale
    assert floored[0] > 10 * plain[0] and np.isclose(floored[0], 0.2 * X[:, 0].std())
    np.testing.assert_array_equal(X, before)
