"""The input-pattern stage: a linear model on the pixels learns the flagged samples' shared pattern and finds
the unflagged samples that carry it, and refuses where the flagged samples share none."""
import numpy as np
import pytest

from flare_core.detectors.input_pattern import (MIN_GAP, MIN_POSITIVES, cross_fitted_scores, highpass_rows,
                                                input_pattern_flags, top_group)
from flare_core.errors import FlareError


def _images(seed: int, n_per_class: int = 400, classes: int = 3, side: int = 12):
    """Smooth random uint8 images: each class a blob at its own place, brightness and noise varying."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    rows, cols = np.indices((side, side))
    imgs = np.empty((len(y), side, side, 1), dtype=np.uint8)
    for i, c in enumerate(y):
        cy, cx = 3 + 3 * c + rng.normal(0, 1.0), 4 + 2 * c + rng.normal(0, 1.0)
        blob = np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * rng.uniform(2.0, 5.0)))
        img = 255 * (0.7 * blob * rng.uniform(0.5, 1.0) + rng.uniform(0, 0.25, size=(side, side)))
        imgs[i, ..., 0] = np.clip(img, 0, 255).astype(np.uint8)
    return imgs, y


def _plant_patch(imgs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A 3x3 black/white checkerboard in the bottom-right corner of ``imgs[rows]`` (a copy)."""
    out = imgs.copy()
    board = (np.indices((3, 3)).sum(0) % 2 * 255).astype(np.uint8)
    out[rows, -4:-1, -4:-1, 0] = board
    return out


def _poisoned(seed: int = 0, per_class: int = 12, found_classes=(0, 1), n_per_class: int = 400):
    """Patched samples in every class (all-to-all-like); the other stages 'found' those of ``found_classes``."""
    imgs, y = _images(seed, n_per_class=n_per_class)
    rng = np.random.default_rng(seed + 100)
    poison = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in np.unique(y)])
    imgs = _plant_patch(imgs, poison)
    truth = np.zeros(len(y), dtype=bool)
    truth[poison] = True
    flagged = truth & np.isin(y, found_classes)
    return imgs, y, truth, flagged


def test_the_patch_is_found_in_the_class_where_nothing_was_flagged():
    imgs, y, truth, flagged = _poisoned()
    before_imgs, before_flags = imgs.copy(), flagged.copy()
    new, score, rec = input_pattern_flags(imgs, y, flagged)
    assert rec["used"] and rec["separated"] >= 0.8 and rec["gap_ratio"] >= MIN_GAP and "why_not" not in rec
    missed = truth & ~flagged
    assert new[missed].all()  # every patched image of class 2
    assert not (new & ~truth).any()  # and no genuine image
    assert not (new & flagged).any()  # new flags only among the unflagged
    assert rec["n_new"] == int(new.sum()) and rec["new_per_class"] == {"2": int(missed.sum())}
    assert score.shape == (len(y),) and np.isfinite(score).all()
    np.testing.assert_array_equal(imgs, before_imgs)
    np.testing.assert_array_equal(flagged, before_flags)


def test_flags_without_a_shared_pattern_learn_nothing_and_flag_nothing():
    imgs, y = _images(1)
    flagged = np.zeros(len(y), dtype=bool)
    flagged[np.random.default_rng(1).choice(len(y), 40, replace=False)] = True  # genuine samples, no pattern
    new, _, rec = input_pattern_flags(imgs, y, flagged)
    assert rec["used"] and rec["separated"] < 0.8
    assert not new.any() and rec["n_new"] == 0
    assert "do not share a pixel pattern" in rec["why_not"]
    from flare_core.report import input_pattern_sentence

    text = input_pattern_sentence({"evidence": {"input_pattern": rec}}, ["a", "b", "c"])
    assert "do not share a pixel pattern" in text and "no more were flagged" in text


def test_when_every_patched_image_is_flagged_no_genuine_one_is_added():
    imgs, y, truth, flagged = _poisoned(8, found_classes=(0, 1, 2))
    new, _, rec = input_pattern_flags(imgs, y, flagged)
    assert rec["used"] and rec["separated"] >= 0.8  # the pattern is read ...
    assert not new.any() and "no group of unflagged samples stands apart" in rec["why_not"]  # ... nothing left
    from flare_core.report import input_pattern_sentence

    text = input_pattern_sentence({"evidence": {"input_pattern": rec}}, ["a", "b", "c"])
    assert "but no group of unflagged samples stands apart" in text and "do not share" not in text


def test_too_few_flags_say_why_and_flag_nothing():
    imgs, y, _, _ = _poisoned()
    flagged = np.zeros(len(y), dtype=bool)
    flagged[:MIN_POSITIVES - 1] = True
    new, score, rec = input_pattern_flags(imgs, y, flagged)
    assert not rec["used"] and not new.any() and np.isnan(score).all()
    assert f"fewer than {MIN_POSITIVES}" in rec["why_not"]


def test_a_group_larger_than_the_flags_it_extends_is_found_whole():
    imgs, y = _images(6, n_per_class=2000)
    patched = np.random.default_rng(6).choice(len(y), 50, replace=False)
    imgs = _plant_patch(imgs, patched)
    flagged = np.zeros(len(y), dtype=bool)
    flagged[patched[:20]] = True  # 20 found, 30 patched left
    new, _, rec = input_pattern_flags(imgs, y, flagged)
    assert rec["used"] and rec["gap_ratio"] >= 15
    assert set(np.flatnonzero(new)) == set(patched[20:])


def test_a_missed_group_in_the_flagged_class_is_found_below_another_class_s_genuine_tail():
    """All-to-one: the missed poison sits in the flagged class.  Another class holds a continuum of genuine
    images that look more or less like the pattern, so over all samples no group stands apart; inside the
    flagged class, against that class's own tail, the missed poison does."""
    imgs, y = _images(11, n_per_class=1000)
    rng = np.random.default_rng(11)
    poison = rng.choice(np.flatnonzero(y == 0), 50, replace=False)
    imgs = _plant_patch(imgs, poison)
    board = (np.indices((3, 3)).sum(0) % 2 * 255).astype(np.float32)
    for i, a in zip(rng.choice(np.flatnonzero(y == 1), 300, replace=False), rng.uniform(0, 1, 300)):
        region = imgs[i, -4:-1, -4:-1, 0].astype(np.float32)
        imgs[i, -4:-1, -4:-1, 0] = np.clip((1 - a) * region + a * board, 0, 255).astype(np.uint8)
    flagged = np.zeros(len(y), dtype=bool)
    flagged[poison[:30]] = True
    new, _, rec = input_pattern_flags(imgs, y, flagged)
    assert rec["gap_ratio"] < MIN_GAP  # over every class: the genuine continuum hides the group
    assert rec["classes"]["0"]["gap_ratio"] >= MIN_GAP and rec["classes"]["0"]["n_new"] == 20
    assert set(np.flatnonzero(new)) == set(poison[30:])  # the 20 missed, and no genuine image
    assert rec["new_per_class"] == {"0": 20} and rec["threshold"] > rec["negative_quantile"]


def test_highpass_rows_drop_smooth_content_and_keep_a_patch():
    side = 12
    ramp = np.tile(np.linspace(0, 200, side, dtype=np.float32), (side, 1))
    imgs = np.stack([np.full((side, side), 90, np.float32), ramp]).astype(np.uint8)[..., None]
    imgs = np.concatenate([imgs, _plant_patch(imgs[:1], np.array([0]))])  # the flat image with a patch
    before = imgs.copy()
    rows = highpass_rows(imgs, np.arange(3))
    assert rows.shape == (3, side * side) and rows.dtype == np.float32
    assert np.abs(rows[0]).max() < 1e-6  # a flat image has nothing left
    inner = rows[1].reshape(side, side)[1:-1, 1:-1]
    assert np.abs(inner).max() < 0.01  # a linear ramp neither (inside the edges)
    patch = rows[2].reshape(side, side)[-4:-1, -4:-1]
    assert np.abs(patch).max() > 0.3  # a checkerboard patch is what stays
    np.testing.assert_array_equal(imgs, before)


def test_top_group_counts_only_groups_above_the_floor():
    rng = np.random.default_rng(9)
    scores = np.concatenate([rng.exponential(1.0, size=3000), 40.0 + rng.normal(0, 0.5, 25)])
    assert top_group(scores, 1000, floor=30.0)[0] == 25
    k, ratio, _ = top_group(scores, 1000, floor=50.0)  # the group is below the floor: nothing counts
    assert k == 0 and ratio == 0.0


def test_the_pixels_view_still_reads_a_patch_and_is_named_in_the_sentence():
    """The raw-pixel view (session 22's, kept for comparison) on the simple case: same finding, its own words."""
    imgs, y, truth, flagged = _poisoned()
    new, _, rec = input_pattern_flags(imgs, y, flagged, view="pixels")
    assert rec["view"] == "pixels" and set(np.flatnonzero(new)) == set(np.flatnonzero(truth & ~flagged))
    from flare_core.report import input_pattern_sentence

    text = input_pattern_sentence({"evidence": {"input_pattern": rec}}, ["a", "b", "c"])
    assert "A linear model on the pixels," in text and "fine detail" not in text


def test_an_unknown_view_raises():
    imgs, y, _, flagged = _poisoned()
    with pytest.raises(ValueError, match="view must be one of"):
        input_pattern_flags(imgs, y, flagged, view="edges")


def test_top_group_needs_a_gap_far_wider_than_the_tail_spacing():
    rng = np.random.default_rng(7)
    tail = rng.exponential(1.0, size=5000)  # a genuine tail: no group on top
    k, ratio, scale = top_group(tail, 1000)
    assert k == 0 and ratio < MIN_GAP and 0.5 < scale < 2.0
    k, ratio, _ = top_group(np.concatenate([tail, 40.0 + rng.normal(0, 0.5, 30)]), 1000)
    assert k == 30 and ratio >= MIN_GAP
    assert top_group(np.ones(10), 1000)[0] == 0  # no spread: no group


def test_deterministic_with_a_seed():
    imgs, y, _, flagged = _poisoned(2)
    a = input_pattern_flags(imgs, y, flagged, random_state=3)
    b = input_pattern_flags(imgs, y, flagged, random_state=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]


def test_cross_fitted_scores_come_from_models_that_did_not_see_the_sample():
    """A positive's held-out score is lower than it would be from a model trained on it (memorised noise)."""
    rng = np.random.default_rng(4)
    imgs = rng.integers(0, 256, size=(400, 8, 8, 1), dtype=np.uint8)  # pure noise: nothing to learn
    pos, neg = np.arange(40), np.arange(40, 400)
    pos_s, neg_s, rest_s = cross_fitted_scores(imgs, pos, neg, np.array([], dtype=int))
    assert pos_s.shape == (40,) and neg_s.shape == (360,) and rest_s.shape == (0,)
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(np.r_[np.ones(40), np.zeros(360)], np.r_[pos_s, neg_s])
    assert 0.3 < auc < 0.7  # chance: in-sample scores would separate memorised noise


def test_bad_images_raise():
    imgs, y, _, flagged = _poisoned()
    with pytest.raises(ValueError, match="one image per sample"):
        input_pattern_flags(imgs[:-1], y, flagged)


def test_bad_flags_raise():
    imgs, y, _, flagged = _poisoned()
    with pytest.raises(ValueError, match="flagged must have one entry per sample"):
        input_pattern_flags(imgs, y, flagged[:-1])


def _abnormality(y: np.ndarray, truth: np.ndarray, seed: int = 0) -> np.ndarray:
    """An N x 6 per-layer matrix where the found poison stands apart in the deep columns."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(len(y), 6))
    X[truth, 3:] += 12.0
    return X


def test_flare_detect_extends_its_flags_by_the_pattern_and_records_the_stage():
    from flare_core.detectors.flare import flare_detect

    imgs, y, truth, found = _poisoned(5, per_class=10, n_per_class=1000)  # 20 found: under 1 % of 3,000
    X = _abnormality(y, found)  # only the poison of classes 0 and 1 stands apart in the features
    without = flare_detect(X, y, n_neighbors=15, random_state=0)
    assert without.report["input_pattern"]["why_not"] == "no images were passed (fit(..., images=))"
    np.testing.assert_array_equal(without.flagged, found)
    res = flare_detect(X, y, images=imgs, n_neighbors=15, random_state=0)
    rec = res.report["input_pattern"]
    assert rec["used"] and rec["n_new"] == int((truth & ~found).sum())
    np.testing.assert_array_equal(res.flagged, truth)
    assert "input-pattern" in res.report["representation"]
    assert res.scores[res.flagged].min() > res.scores[~res.flagged].max()  # flagged first
    assert "input_pattern" in res.report["seconds"]
    from flare_core.report import input_pattern_sentence

    text = input_pattern_sentence(res.report, ["a", "b", "c"])
    assert f"it flagged {rec['n_new']} more" in text and f"(c {rec['n_new']})" in text
    assert input_pattern_sentence(without.report, ["a", "b", "c"]) == ""
    off = flare_detect(X, y, images=imgs, n_neighbors=15, random_state=0, input_pattern="off")
    assert off.report["input_pattern"]["why_not"] == "input_pattern='off'"
    np.testing.assert_array_equal(off.flagged, found)


def test_flare_detect_refuses_images_of_another_length():
    from flare_core.detectors.flare import flare_detect

    imgs, y, _, found = _poisoned()
    with pytest.raises(FlareError, match="images must hold one image per row"):
        flare_detect(_abnormality(y, found), y, images=imgs[:-1])


def test_flare_detect_refuses_an_unknown_input_pattern_setting():
    from flare_core.detectors.flare import flare_detect

    imgs, y, _, found = _poisoned()
    with pytest.raises(FlareError, match="input_pattern"):
        flare_detect(_abnormality(y, found), y, images=imgs, input_pattern="always")
