"""Label noise, not a backdoor (flare_core.detectors.label_noise): flagged parts of several classes whose labels
the model contradicts with many different classes are mislabelled images; all-to-all poison, whose images come
from one source class each, is still flagged."""
import numpy as np
import pytest

from flare_core.detectors.flare import flare_detect
from flare_core.detectors.label_noise import contradicted_classes, contradicted_mask
from flare_core.report import label_noise_sentence, not_poison_sentence


def parts(rng, k=4, n=400, share=0.2, source="spread", obeyed=0.0):
    """k classes of n samples; the last ``share`` of each is a flagged part.  The model's class for the part:
    another class drawn at random (``spread``: mislabelled images of every class), the previous class
    (``one``: all-to-all poison from one source class), except for the share ``obeyed`` it gives the label.
    Returns y, flagged, predicted."""
    y = np.repeat(np.arange(k), n)
    m = int(round(share * n))
    flagged = np.tile(np.r_[np.zeros(n - m, bool), np.ones(m, bool)], k)
    predicted = y.copy()
    idx = np.flatnonzero(flagged)
    if source == "spread":
        predicted[idx] = (y[idx] + rng.integers(1, k, len(idx))) % k
    else:
        predicted[idx] = (y[idx] - 1) % k
    keep = idx[rng.random(len(idx)) < obeyed]
    predicted[keep] = y[keep]
    return y, flagged, predicted


def test_mislabelled_parts_of_every_class_are_label_noise_and_inputs_are_unchanged():
    y, flagged, predicted = parts(np.random.default_rng(0))
    y0, f0, p0 = y.copy(), flagged.copy(), predicted.copy()
    found = contradicted_classes(flagged, y, predicted)
    for a, b in ((y, y0), (flagged, f0), (predicted, p0)):
        np.testing.assert_array_equal(a, b)
    assert sorted(found) == [0, 1, 2, 3]
    assert all(v["flagged"] == 80 and v["contradicted"] == 1.0 and v["top_share"] <= 0.5
               and v["classes_given"] == 3 for v in found.values())
    mask = contradicted_mask(flagged, y, predicted, found)
    np.testing.assert_array_equal(mask, flagged)  # every flagged sample is predicted as another class


def test_all_to_all_poison_from_one_source_class_is_not_label_noise():
    y, flagged, predicted = parts(np.random.default_rng(1), source="one")
    assert contradicted_classes(flagged, y, predicted) == {}


def test_one_class_given_to_the_parts_of_many_classes_is_label_noise():
    # CIFAR-10 with 10 % label noise (session 29): the tail-group stage split off, in each class, the mislabelled
    # images of one or two distinctive true classes, so each part is given few classes (top shares 0.35-0.96),
    # but the same ones across many classes (automobile, in six); an attacker maps each source to one target
    y, flagged, predicted = parts(np.random.default_rng(6), k=10, source="one")
    assert contradicted_classes(flagged, y, predicted) == {}  # a permutation: each source class in one class
    shared = predicted.copy()
    shared[flagged & np.isin(y, [1, 2, 3, 4])] = 0  # four classes' parts given class 0
    found = contradicted_classes(flagged, y, shared)
    assert sorted(found) == list(range(10)) and all(v["top_share"] == 1.0 for v in found.values())
    three = predicted.copy()
    three[flagged & np.isin(y, [1, 2, 3])] = 0  # three: the most the benchmark's all-to-all poison reaches is two
    assert contradicted_classes(flagged, y, three) == {}
    assert sorted(contradicted_classes(flagged, y, three, min_shared_classes=3)) == list(range(10))


def test_parts_the_model_obeys_are_not_contradicted():
    # a backdoor that took: the model gives the poison its (target) label
    y, flagged, predicted = parts(np.random.default_rng(2), obeyed=0.7)
    assert contradicted_classes(flagged, y, predicted) == {}
    y, flagged, predicted = parts(np.random.default_rng(2), obeyed=0.3)
    assert sorted(contradicted_classes(flagged, y, predicted)) == [0, 1, 2, 3]


def test_too_few_classes_or_samples_are_not_label_noise():
    rng = np.random.default_rng(3)
    y, flagged, predicted = parts(rng)
    two = flagged & (y < 2)  # all-to-one poison lies in one class; two classes are under the default three
    assert contradicted_classes(two, y, predicted) == {}
    assert sorted(contradicted_classes(two, y, predicted, min_classes=2)) == [0, 1]
    y, flagged, predicted = parts(rng, share=0.02)  # 8 per class, under min_count (10)
    assert contradicted_classes(flagged, y, predicted) == {}
    # (a top share of 8 samples is noisy: only the count gate is tested here)
    assert sorted(contradicted_classes(flagged, y, predicted, min_count=5, max_top_share=1.0)) == [0, 1, 2, 3]


def test_contradicted_mask_keeps_what_the_model_obeys_and_other_classes():
    y, flagged, predicted = parts(np.random.default_rng(4), obeyed=0.3)
    mask = contradicted_mask(flagged, y, predicted, [0, 1])
    assert not mask[y >= 2].any() and not mask[~flagged].any()
    np.testing.assert_array_equal(mask[y < 2], (flagged & (predicted != y))[y < 2])


def test_bad_arguments_raise():
    y, flagged, predicted = parts(np.random.default_rng(5))
    with pytest.raises(ValueError, match="one entry per sample"):
        contradicted_classes(flagged[:-1], y, predicted)
    with pytest.raises(ValueError, match="groups"):
        contradicted_classes(flagged, y, predicted, groups=np.zeros(len(y) - 1, int))
    with pytest.raises(ValueError, match="min_classes"):
        contradicted_classes(flagged, y, predicted, min_classes=0)


# ----------------------------------------------------------------------------- inside flare_detect

def noisy_set(rng, k=4, n=400, share=0.2, source="spread", shift=12.0, D=16):
    """Latent features where the last ``share`` of each class sits far from the rest (a population the latent
    stage splits off), and logits in which the model fits the genuine samples and gives the part another
    class (mislabelled images, or with ``source='one'`` all-to-all poison whose backdoor did not take); it
    rates a look-alike class (c + 1) next after the label of the genuine samples, so the parts are not taken for
    a dataset-wide split (a second source: the class's own images, rated next as the rest)."""
    y, part, predicted = parts(rng, k, n, share, source)
    P = rng.normal(size=(len(y), D)) + 3.0 * y[:, None]
    P[part, :4] += shift
    logits = rng.normal(scale=0.1, size=(len(y), k))
    logits[np.arange(len(y)), (y + 1) % k] += 2.0  # the class rated next after the label: a look-alike class
    logits[np.arange(len(y)), predicted] += 6.0
    return P, y, part, logits


def test_flare_detect_does_not_flag_label_noise_and_says_so():
    rng = np.random.default_rng(6)
    P, y, part, logits = noisy_set(rng)
    X = rng.normal(size=(len(y), 2))  # per-layer columns without any signal
    off = flare_detect(X, y, latent=P, logits=logits, n_epochs=50, label_noise_classes=0)
    assert off.flagged[part].mean() >= 0.99 and off.flagged[~part].mean() <= 0.01  # the parts stand apart
    res = flare_detect(X, y, latent=P, logits=logits, n_epochs=50)
    assert not res.flagged.any() and not res.report["found"]
    assert res.report["representation"] == "layers"  # as when no stage finds anything (the tail stage's flags went)
    latent = res.report["latent"]
    assert sorted(latent["label_noise"]) == ["0", "1", "2", "3"]
    assert latent["label_noise_unflagged"] == int(off.flagged.sum())
    np.testing.assert_array_equal(res.label_noise, off.flagged)  # the manifest's label_noise column
    assert off.label_noise is not None and not off.label_noise.any()
    # dropped after the latent stage and again after the tail-group stage (which found the same parts), so the
    # stages that add flags only where the others flagged little still ran
    assert latent["tail_groups"]["n_flagged"] == int(off.flagged.sum())
    assert res.report["minority_modes"]["used"] and "why_not_flagged" not in res.report["minority_modes"]
    assert "why_not_flagged" in off.report["minority_modes"]
    sentence = label_noise_sentence({"evidence": res.evidence}, ["a", "b", "c", "d"])
    assert sentence.startswith(" 4 classes had parts") and "a (100% of 80; 3 classes)" in sentence
    assert f"those {int(off.flagged.sum()):,} samples were not flagged" in sentence
    assert not_poison_sentence({"evidence": res.evidence}, ["a", "b", "c", "d"]) == sentence
    assert label_noise_sentence({"evidence": off.evidence}, None) == ""


def test_flare_detect_still_flags_all_to_all_poison_the_model_did_not_learn():
    rng = np.random.default_rng(7)
    P, y, part, logits = noisy_set(rng, source="one")
    res = flare_detect(rng.normal(size=(len(y), 2)), y, latent=P, logits=logits, n_epochs=50)
    assert res.flagged[part].mean() >= 0.99 and res.flagged[~part].mean() <= 0.01
    assert "label_noise" not in res.report["latent"]
    faithful = flare_detect(rng.normal(size=(len(y), 2)), y, latent=P, logits=logits, n_epochs=50, mode="faithful")
    assert faithful.label_noise is None  # the rule is FLARE default's: no manifest column then


def test_label_noise_classes_is_validated():
    from flare_core.errors import FlareError

    rng = np.random.default_rng(8)
    P, y, part, logits = noisy_set(rng, n=200)
    with pytest.raises((FlareError, ValueError), match="label_noise_classes"):
        flare_detect(rng.normal(size=(len(y), 2)), y, latent=P, logits=logits, label_noise_classes=-1)


def test_contradicted_mask_by_group_takes_a_mostly_contradicted_group_whole_and_keeps_an_obeyed_one():
    rng = np.random.default_rng(9)
    y, flagged, predicted = parts(rng, obeyed=0.1)
    groups = np.zeros(len(y), int)
    groups[flagged] = 1
    obeyed = flagged & (y == 0)  # class 0's flagged part: a second group, which the model obeys
    groups[obeyed] = 2
    predicted[obeyed] = 0
    mask = contradicted_mask(flagged, y, predicted, [0, 1, 2, 3], groups=groups)
    np.testing.assert_array_equal(mask, flagged & ~obeyed)  # the 10 % obeyed go with their group
    assert (mask & (predicted == y)).any()
    with pytest.raises(ValueError, match="groups"):
        contradicted_mask(flagged, y, predicted, [0], groups=groups[:-1])


def test_by_group_mislabelled_images_in_the_class_of_obeyed_poison_count_too():
    # all-to-one poison that the model obeys (class 0, group 2) beside mislabelled images in every class: class
    # 0's flagged samples are mostly obeyed, but its mislabelled group is label noise like the others'
    rng = np.random.default_rng(10)
    y, flagged, predicted = parts(rng)
    groups = np.where(flagged, 1, 0)
    poison = np.flatnonzero(y == 0)[:200]
    flagged[poison], groups[poison], predicted[poison] = True, 2, 0
    whole = contradicted_classes(flagged, y, predicted)
    assert sorted(whole) == [1, 2, 3]  # class 0 as a whole: 200 of its 280 flagged are obeyed
    by_group = contradicted_classes(flagged, y, predicted, groups=groups)
    assert sorted(by_group) == [0, 1, 2, 3] and by_group[0]["flagged"] == 80
    from flare_core.detectors.label_noise import label_noise_drop

    drop, noisy = label_noise_drop(flagged, y, predicted, groups)
    assert sorted(noisy) == [0, 1, 2, 3] and not drop[poison].any()
    np.testing.assert_array_equal(drop, flagged & (groups == 1))
