"""The input-pattern stage: a linear model on the pixels learns the flagged samples' shared pattern and finds
the unflagged samples that carry it, and refuses where the flagged samples share none."""
import numpy as np
import pytest

from flare_core.detectors.input_pattern import (MIN_GAP, MIN_POSITIVES, SEED_MIN_SEPARATED, cross_fitted_scores,
                                                highpass_rows, input_pattern_flags, least_fitted_seed,
                                                seeded_input_pattern_flags, top_group, windowed_top_group)
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


# --- the seed from the samples the model fits worst (the other stages flagged too few) ---------------------------

def _not_learnt(seed: int = 21, n_per_class: int = 1000, n_patched: int = 30, in_seed: int = 12):
    """A patch the model did not learn (1 % of the samples): ``n_patched`` patched images, ``in_seed`` of them
    among the 20 with the highest loss (the rest of those 20 genuine hard samples), the other patched ones fitted
    like genuine ones."""
    imgs, y = _images(seed, n_per_class=n_per_class)
    rng = np.random.default_rng(seed)
    patched = rng.choice(len(y), n_patched, replace=False)
    imgs = _plant_patch(imgs, patched)
    loss = rng.exponential(0.05, len(y))
    hard = rng.choice(np.setdiff1d(np.arange(len(y)), patched), MIN_POSITIVES - in_seed, replace=False)
    loss[np.concatenate([patched[:in_seed], hard])] = rng.uniform(3.0, 6.0, MIN_POSITIVES)
    truth = np.zeros(len(y), dtype=bool)
    truth[patched] = True
    return imgs, y, loss, truth, hard


def test_least_fitted_seed_is_the_flags_and_the_worst_fitted():
    loss = np.array([0.1, 5.0, 0.2, 3.0, 0.05, 4.0])
    flagged = np.array([False, False, True, False, False, False])
    before = (loss.copy(), flagged.copy())
    seed = least_fitted_seed(loss, flagged, share=0.5, min_rows=2)
    np.testing.assert_array_equal(seed, [False, True, True, True, False, True])  # 3 worst fitted + the flag
    assert least_fitted_seed(loss, np.zeros(6, bool), share=0.1, min_rows=2).sum() == 2  # at least min_rows
    np.testing.assert_array_equal(loss, before[0])
    np.testing.assert_array_equal(flagged, before[1])


def test_least_fitted_seed_refuses_a_loss_of_another_length():
    with pytest.raises(ValueError, match="one entry per sample"):
        least_fitted_seed(np.ones(5), np.zeros(6, bool))


def test_least_fitted_seed_refuses_a_non_finite_loss():
    with pytest.raises(ValueError, match="finite"):
        least_fitted_seed(np.array([0.1, np.nan, 0.3]), np.zeros(3, bool))


def test_least_fitted_seed_refuses_a_share_outside_0_1():
    with pytest.raises(ValueError, match="share"):
        least_fitted_seed(np.ones(4), np.zeros(4, bool), share=1.5)


def test_a_patch_the_model_did_not_learn_is_found_from_the_worst_fitted_samples():
    imgs, y, loss, truth, hard = _not_learnt()
    flagged = np.zeros(len(y), dtype=bool)  # the other stages found nothing
    before = (imgs.copy(), loss.copy())
    new, _, rec = seeded_input_pattern_flags(imgs, y, flagged, loss)
    assert rec["used"] and SEED_MIN_SEPARATED <= rec["separated"] < 0.8  # a mixed seed: 12 patched of 20
    assert rec["seed"]["n"] == MIN_POSITIVES and rec["seed"]["n_flagged_before"] == 0
    np.testing.assert_array_equal(new, truth)  # every patched image (12 from the seed), no genuine hard one
    assert rec["seed"]["n_flagged"] == 12 and rec["n_new"] == 30 and not new[hard].any()
    np.testing.assert_array_equal(imgs, before[0])
    np.testing.assert_array_equal(loss, before[1])
    from flare_core.report import input_pattern_sentence

    text = input_pattern_sentence({"evidence": {"input_pattern": rec}}, ["a", "b", "c"])
    assert "began with the 20 samples the model fits worst" in text and "it flagged 30 sample(s)" in text
    assert "12 of them from that seed" in text


def test_worst_fitted_samples_without_a_shared_pattern_flag_nothing():
    imgs, y, loss, _, hard = _not_learnt(22, in_seed=0)  # a patched group exists, but none of it is in the seed
    new, _, rec = seeded_input_pattern_flags(imgs, y, np.zeros(len(y), bool), loss)
    assert rec["used"] and rec["separated"] < SEED_MIN_SEPARATED
    assert not new.any() and rec["n_new"] == 0 and rec["seed"]["n_flagged"] == 0
    assert rec["why_not"].startswith("the samples the model fits worst (the seed) do not share a pixel pattern")
    from flare_core.report import input_pattern_sentence

    text = input_pattern_sentence({"evidence": {"input_pattern": rec}}, ["a", "b", "c"])
    assert "separates" in text and "so nothing was flagged by it" in text and "no group" not in text


def test_flare_detect_seeds_the_stage_with_the_worst_fitted_when_nothing_else_is_found():
    from flare_core.detectors.flare import flare_detect

    imgs, y, loss, truth, _ = _not_learnt(23)
    rng = np.random.default_rng(23)
    X = rng.normal(size=(len(y), 6))  # no layer, channel or latent finding
    latent = rng.normal(size=(len(y), 8))
    logits = np.zeros((len(y), 3))
    logits[np.arange(len(y)), y] = -np.log(np.expm1(loss) / 2)  # cross-entropy of the label == loss
    kw = dict(n_neighbors=15, random_state=0, latent=latent, logits=logits)
    res = flare_detect(X, y, images=imgs, **kw)
    rec = res.report["input_pattern"]
    assert rec["seed"]["n_flagged_before"] == 0
    np.testing.assert_array_equal(res.flagged, truth)
    assert res.report["found"] and res.report["representation"] == "input-pattern"
    assert res.scores[res.flagged].min() > res.scores[~res.flagged].max()
    no_images = flare_detect(X, y, **kw)
    assert not no_images.flagged.any() and not no_images.report["found"]
    no_logits = flare_detect(X, y, images=imgs, n_neighbors=15, random_state=0)
    assert not no_logits.flagged.any() and "without logits" in no_logits.report["input_pattern"]["why_not"]


def test_large_images_get_fewer_negatives_within_the_memory_budget():
    imgs, y, truth, flagged = _poisoned()
    row_bytes = 4 * int(np.prod(imgs.shape[1:]))
    n_pos = int(flagged.sum())
    new, _, rec = input_pattern_flags(imgs, y, flagged, max_train_bytes=row_bytes * (n_pos + 300))
    assert rec["used"] and rec["n_negatives"] == 300  # not 20 per positive (480)
    assert new[truth & ~flagged].all() and not (new & ~truth).any()  # still found


def test_images_too_large_for_the_memory_budget_say_why_and_flag_nothing():
    imgs, y, _, flagged = _poisoned()
    row_bytes = 4 * int(np.prod(imgs.shape[1:]))
    new, score, rec = input_pattern_flags(imgs, y, flagged, max_train_bytes=row_bytes * int(1.5 * flagged.sum()))
    assert not rec["used"] and not new.any() and np.isnan(score).all()
    assert rec["why_not"].startswith("the images are too large for the stage's memory budget")



def _scores_from_spacings(d: np.ndarray) -> np.ndarray:
    """Descending scores whose normalised spacings k * (s(k) - s(k+1)) are ``d`` (the gap tests' own terms)."""
    k = np.arange(1, len(d) + 1)
    return np.cumsum((d / k)[::-1])[::-1]


def test_windowed_gap_finds_a_group_whose_edge_no_single_gap_singles_out():
    """A group of 180 on top of an exponential tail, its normalised spacings 8-18 (a fuzzy lower edge, no single
    one 15 times the tail's scale): the single-gap rule finds nothing, the windowed one finds the group's bulk."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        scores = _scores_from_spacings(np.concatenate([8 + 10 * np.arange(1, 181) / 180, rng.exponential(1.0, 2820)]))
        assert top_group(scores, 1000)[0] == 0
        k, ratio = windowed_top_group(scores, 1000)
        assert 150 <= k <= 180 and ratio >= 8  # inside the group, most of it
        assert windowed_top_group(scores, 1000, floor=scores[100])[0] <= 100  # the k-th score above the floor


def test_windowed_gap_flags_nothing_on_an_exponential_tail():
    for seed in range(10):
        scores = _scores_from_spacings(np.random.default_rng(seed).exponential(1.0, 3000))
        k, ratio = windowed_top_group(scores, 1000)
        assert k == 0 and ratio < 3
