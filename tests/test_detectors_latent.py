"""FLARE default's latent stage (flare_core.detectors.latent) and its wiring into flare_detect.

Synthetic penultimate features: a class is a Gaussian cloud; a planted poison group is a second cloud
far away in a few directions.  Losses are drawn per group (genuine ~1e-2, poison ~1e-4, as on the
benchmark models) so the loss test has something to read.
"""
import numpy as np
import pytest
import torch

from flare_core.detectors import latent as LT
from flare_core.detectors.flare import FlareDetector, flare_detect
from flare_core.errors import FlareError

D = 16


def cloud(rng, n, shift=0.0, dims=4, scale=1.0):
    X = rng.normal(size=(n, D)) * scale
    X[:, :dims] += shift
    return X


def losses(rng, n, median):
    return median * np.exp(rng.normal(scale=0.5, size=n))


def two_class_set(rng, n_genuine=800, n_poison=0, shift=12.0, poison_loss=1e-4, genuine_loss=1e-2):
    """Class 0: genuine (+ planted poison at the end); class 1: genuine only."""
    X0 = np.vstack([cloud(rng, n_genuine), cloud(rng, n_poison, shift)]) if n_poison else cloud(rng, n_genuine)
    l0 = np.concatenate([losses(rng, n_genuine, genuine_loss), losses(rng, n_poison, poison_loss)])
    X1 = cloud(rng, n_genuine) + 3.0
    l1 = losses(rng, n_genuine, genuine_loss)
    X = np.vstack([X0, X1])
    y = np.concatenate([np.zeros(len(X0), int), np.ones(len(X1), int)])
    truth = np.zeros(len(X), bool)
    truth[n_genuine:n_genuine + n_poison] = True
    return X, y, np.concatenate([l0, l1]), truth


def logits_for(loss, y, k=2):
    """Logits whose cross-entropy for label y is exactly ``loss`` (two classes)."""
    p = np.exp(-loss)
    z = np.zeros((len(y), k))
    z[np.arange(len(y)), y] = np.log(p / (1 - p + 1e-300) + 1e-300)
    return z


# ----------------------------------------------------------------------------- pure functions

def test_sample_loss_equals_torch_cross_entropy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 7)) * 5
    y = rng.integers(0, 7, 50)
    want = torch.nn.functional.cross_entropy(torch.tensor(z), torch.tensor(y), reduction="none").numpy()
    np.testing.assert_allclose(LT.sample_loss(z, y), want, rtol=1e-10, atol=1e-12)


def test_heldout_dprime_large_for_a_gap_small_for_a_cut_cloud():
    rng = np.random.default_rng(1)
    F = np.vstack([cloud(rng, 400), cloud(rng, 400, shift=8.0)])
    a = np.arange(800) < 400
    assert LT.heldout_dprime(F, a) > 10
    one = cloud(rng, 800)
    cut = one[:, 0] > 0  # the best cut of one Gaussian cloud
    assert LT.heldout_dprime(one, cut) < 4


def test_heldout_dprime_is_zero_when_a_side_is_too_small():
    rng = np.random.default_rng(2)
    F = cloud(rng, 300)
    a = np.zeros(300, bool)
    a[:10] = True
    assert LT.heldout_dprime(F, a) == 0.0


def test_poisoned_leaves_minority_is_flagged_whatever_its_loss():
    flagged, ref, _ = LT.poisoned_leaves([900, 100], [0.01, 0.5])
    assert flagged == [1] and ref == 0


def test_poisoned_leaves_balanced_split_needs_the_loss_ratio():
    flagged, ref, reason = LT.poisoned_leaves([500, 500], [0.01, 0.005])
    assert flagged == [] and "nothing flagged" in reason
    flagged, ref, _ = LT.poisoned_leaves([500, 500], [0.01, 0.0005])
    assert flagged == [1] and ref == 0


def test_poisoned_leaves_one_leaf_flags_nothing():
    assert LT.poisoned_leaves([1000], [0.01])[0] == []


def test_join_takes_unflagged_members_of_a_flagged_blob_and_nothing_else():
    rng = np.random.default_rng(15)
    Z = np.vstack([cloud(rng, 300), cloud(rng, 300, shift=10.0)])
    flagged = np.zeros(600, bool)
    flagged[300:] = True
    flagged[[310, 350, 420]] = False  # three poisoned samples the split left behind
    before = flagged.copy()
    joined = LT.join_neighbours(Z, flagged)
    np.testing.assert_array_equal(np.flatnonzero(joined), [310, 350, 420])
    np.testing.assert_array_equal(flagged, before)
    assert not LT.join_neighbours(Z, np.zeros(600, bool)).any()


def test_join_on_a_sampled_reference_takes_the_same_rows():
    """A class past the sample size looks for neighbours among a sample: the same left-behind members join."""
    rng = np.random.default_rng(15)
    Z = np.vstack([cloud(rng, 1500), cloud(rng, 1500, shift=10.0)])
    flagged = np.zeros(3000, bool)
    flagged[1500:] = True
    flagged[[1510, 1750, 2420]] = False
    before = flagged.copy()
    joined = LT.join_neighbours(Z, flagged, sample_size=500)
    np.testing.assert_array_equal(np.flatnonzero(joined), [1510, 1750, 2420])
    np.testing.assert_array_equal(flagged, before)
    np.testing.assert_array_equal(LT.join_neighbours(Z, flagged, sample_size=500), joined)  # seeded
    np.testing.assert_array_equal(LT.join_neighbours(Z, flagged, sample_size=3000), LT.join_neighbours(Z, flagged))


# ----------------------------------------------------------------------------- one class

def test_planted_half_of_a_class_is_found_by_its_loss():
    rng = np.random.default_rng(3)
    P = np.vstack([cloud(rng, 600), cloud(rng, 600, shift=12.0)])
    loss = np.concatenate([losses(rng, 600, 1e-2), losses(rng, 600, 1e-4)])
    res = LT.split_class(P, loss, 0)
    flagged = np.zeros(1200, bool)
    for i in res.flagged_leaves:
        flagged[res.leaves[i]] = True
    assert flagged[600:].mean() >= 0.99 and flagged[:600].mean() <= 0.01
    assert res.scores[600:].min() > res.scores[:600].max() * 0.5
    assert res.evidence["splits"][0]["accepted"] and res.evidence["splits"][0]["dprime"] >= 6.5


def test_balanced_split_with_equal_loss_flags_nothing():
    """Two far-apart halves the model fits equally well: a bimodal class, not poison."""
    rng = np.random.default_rng(4)
    P = np.vstack([cloud(rng, 600), cloud(rng, 600, shift=12.0)])
    loss = losses(rng, 1200, 1e-2)
    res = LT.split_class(P, loss, 0)
    assert res.flagged_leaves == []
    assert res.evidence["splits"][0]["accepted"]  # the split is reported as evidence


def test_a_single_cloud_is_not_split():
    rng = np.random.default_rng(5)
    P = cloud(rng, 1500, scale=1.0) * np.linspace(0.5, 3, D)  # anisotropic, one population
    res = LT.split_class(P, losses(rng, 1500, 1e-2), 0)
    assert res.flagged_leaves == [] and len(res.leaves) == 1
    assert res.evidence["splits"][0]["dprime"] < 6.5


def test_close_subpopulations_are_not_split():
    """Two sub-styles 2.5 sigma apart a dimension (d' ~5, like a clean class's modes) stay one leaf, even when
    the model fits the smaller one 100x better (a genuine easy sub-population: the clean Trousers' 129)."""
    rng = np.random.default_rng(6)
    P = np.vstack([cloud(rng, 700), cloud(rng, 300, shift=2.5)])
    res = LT.split_class(P, np.concatenate([losses(rng, 700, 1e-2), losses(rng, 300, 1e-4)]), 0)
    assert res.flagged_leaves == [] and res.evidence["splits"][0]["dprime"] < 5.5


def test_a_split_short_of_the_threshold_stands_only_with_the_loss_signature():
    """d' ~6 (between latent_loss_separation 5.5 and the threshold 6.5): a minority the model fits 100x
    better is split off and flagged; the same geometry fitted alike, or a balanced split, is not."""
    rng = np.random.default_rng(6)
    P = np.vstack([cloud(rng, 700), cloud(rng, 300, shift=3.0)])
    fitted = np.concatenate([losses(rng, 700, 1e-2), losses(rng, 300, 1e-4)])
    res = LT.split_class(P, fitted, 0)
    first = res.evidence["splits"][0]
    assert 5.5 <= first["dprime"] < 6.5 and first["by"] == "loss" and first["loss_ratio"] > 10
    flagged = np.zeros(1000, bool)
    for i in res.flagged_leaves:
        flagged[res.leaves[i]] = True
    assert flagged[700:].mean() > 0.95 and flagged[:700].mean() < 0.02
    alike = LT.split_class(P, losses(rng, 1000, 1e-2), 0)
    assert alike.flagged_leaves == [] and alike.evidence["splits"][0]["by"] is None
    off = LT.split_class(P, fitted, 0, loss_separation=None)
    assert off.flagged_leaves == [] and off.evidence["splits"][0]["accepted"] is False
    Pb = np.vstack([cloud(rng, 500), cloud(rng, 500, shift=3.0)])
    balanced = LT.split_class(Pb, np.concatenate([losses(rng, 500, 1e-2), losses(rng, 500, 1e-4)]), 0)
    first_b = balanced.evidence["splits"][0]
    assert 5.5 <= first_b["dprime"] < 6.5 and not first_b["accepted"]  # the bag class: balanced, d' alone guards


def test_peel_takes_a_closer_low_loss_part_only_with_the_signature():
    rng = np.random.default_rng(7)
    genuine = cloud(rng, 1000)
    far = cloud(rng, 400, shift=12.0)
    near = cloud(rng, 400, shift=1.9, dims=8)  # closer: d' ~5.4, below the first-level threshold
    P = np.vstack([genuine, far, near])
    # the far part is fitted 100x better (the backdoor signature) and so is the near part: peeled
    loss = np.concatenate([losses(rng, 1000, 1e-2), losses(rng, 400, 1e-4), losses(rng, 400, 1e-4)])
    res = LT.split_class(P, loss, 0)
    flagged = np.zeros(len(P), bool)
    for i in res.flagged_leaves:
        flagged[res.leaves[i]] = True
    assert flagged[1000:1400].all()
    assert flagged[1400:].mean() > 0.9 and flagged[:1000].mean() < 0.02
    assert any(r["peeled"] for r in res.evidence["peel"])
    # no signature (the far part fitted worse, flagged as the minority): no peeling at all
    loss2 = np.concatenate([losses(rng, 1000, 1e-2), losses(rng, 400, 1e-1), losses(rng, 400, 1e-4)])
    res2 = LT.split_class(P, loss2, 0)
    assert res2.evidence["peel"] == []


def test_peel_tests_the_plain_split_whatever_max_clusters():
    """The peel's loss test was calibrated on the plain 2-means split; the candidates must not reach it."""
    rng = np.random.default_rng(7)
    Z = LT._robust_standardize(three_modes(rng, n_planted=60))
    loss = np.full(len(Z), 1e-2)
    rows = np.arange(len(Z))
    _, _, record = LT.peel(Z, rows, loss)
    plain = LT.bisect_once(LT._robust_standardize(Z[rows]), max_clusters=2)[1]
    assert record[0]["dprime"] == round(plain, 3)


def test_latent_detect_leaves_inputs_unchanged_and_is_deterministic():
    rng = np.random.default_rng(8)
    X, y, loss, truth = two_class_set(rng, n_poison=400)
    X0, y0, l0 = X.copy(), y.copy(), loss.copy()
    a = LT.latent_detect(X, y, loss)
    b = LT.latent_detect(X, y, loss)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(loss, l0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0][truth].mean() >= 0.99 and a[0][~truth].mean() <= 0.01
    assert a[0].shape == a[1].shape == a[2].shape == (len(X),)


def test_latent_detect_skips_tiny_classes():
    rng = np.random.default_rng(9)
    X = cloud(rng, 120)
    y = np.zeros(120, int)
    flagged, scores, leaf, ev = LT.latent_detect(X, y, losses(rng, 120, 1e-2))
    assert not flagged.any() and "fewer than" in ev[0]["reason"]


# ----------------------------------------------------------------------------- dataset-wide splits

def split_classes(rng, shares, n=600, part_loss=1e-2, genuine_loss=1e-2, shift=12.0, relabelled=False):
    """One class per entry of ``shares``: a genuine cloud, and that share of the class as a second cloud far
    away along the same directions, or none for share 0.  The class each sample's logits rate next after its
    label: for the genuine samples of class c mostly c + 1; for the part the same (a second source: the class's
    own images restyled) or, with ``relabelled``, mostly c - 1 (all-to-all poison: the previous class's images
    relabelled c).  Returns X, y, loss, part mask, next class."""
    k = len(shares)
    X, y, loss, part, nxt = [], [], [], [], []

    def next_of(c, m, source):
        usual = (c - 1) % k if source else (c + 1) % k
        other = (c + 2 + rng.integers(0, max(k - 2, 1), m)) % k
        return np.where(rng.random(m) < 0.8, usual, other)

    for c, share in enumerate(shares):
        m = int(round(share * n))
        X += [cloud(rng, n - m) + 3.0 * c, cloud(rng, m, shift) + 3.0 * c]
        loss += [losses(rng, n - m, genuine_loss), losses(rng, m, part_loss)]
        y.append(np.full(n, c))
        part.append(np.r_[np.zeros(n - m, bool), np.ones(m, bool)])
        nxt += [next_of(c, n - m, False), next_of(c, m, relabelled)]
    return np.vstack(X), np.concatenate(y), np.concatenate(loss), np.concatenate(part), np.concatenate(nxt)


def logits_with_next(loss, y, nxt, k):
    """Logits whose label loss is about ``loss`` and whose next class after the label is ``nxt``."""
    z = logits_for(loss, y, k)
    z[np.arange(len(y)), nxt] = 0.5
    return z


@pytest.mark.parametrize("share", [0.1, 0.3])
def test_a_split_of_every_class_into_its_own_images_is_a_second_source_not_poison(share):
    rng = np.random.default_rng(21)
    X, y, loss, part, nxt = split_classes(rng, [share] * 4)
    before = LT.latent_detect(X, y, loss, next_class=nxt, wide_share=0)  # the rule off: each part is flagged
    assert before[0][part].mean() >= 0.99 and before[0][~part].mean() <= 0.01
    assert LT.latent_detect(X, y, loss)[0][part].mean() >= 0.99  # without the next classes, no test either
    flagged, scores, _, ev = LT.latent_detect(X, y, loss, next_class=nxt)
    assert not flagged.any() and not scores.any()
    assert all(e["dataset_wide"]["share"] == share and e["n_flagged"] == 0 and "dataset-wide split" in e["reason"]
               for e in ev)
    assert all(len(e["leaves"]) >= 2 for e in ev)  # the split is kept as evidence


@pytest.mark.parametrize("share", [0.1, 0.3])
def test_all_to_all_poison_is_another_class_relabelled_and_is_still_flagged(share):
    rng = np.random.default_rng(23)
    X, y, loss, part, nxt = split_classes(rng, [share] * 4, relabelled=True)
    flagged, _, _, ev = LT.latent_detect(X, y, loss, next_class=nxt)
    assert flagged[part].mean() >= 0.99 and flagged[~part].mean() <= 0.01
    assert not any(e.get("dataset_wide") for e in ev)


def test_poison_in_one_class_is_still_flagged_even_of_its_own_images():
    # all-to-one, clean-label (the target class's own images with a trigger): one class is never a split
    rng = np.random.default_rng(22)
    X, y, loss, part, nxt = split_classes(rng, [0.3, 0.0, 0.0, 0.0])
    flagged, _, _, ev = LT.latent_detect(X, y, loss, next_class=nxt)
    assert flagged[part].mean() >= 0.99 and flagged[~part].mean() <= 0.01
    assert not any(e.get("dataset_wide") for e in ev)


def test_parts_the_model_fits_far_better_are_still_flagged_in_several_classes():
    # two clean-label attacks on two targets: their own images, but with the backdoor's loss signature
    rng = np.random.default_rng(24)
    X, y, loss, part, nxt = split_classes(rng, [0.3, 0.3, 0.0, 0.0], part_loss=1e-4)
    flagged, _, _, ev = LT.latent_detect(X, y, loss, next_class=nxt)
    assert flagged[part].mean() >= 0.99 and flagged[~part].mean() <= 0.01


def test_widely_flagged_classes_contract():
    rng = np.random.default_rng(25)
    _, y, loss, part, nxt = split_classes(rng, [0.3, 0.3, 0.0])
    part0, nxt0 = part.copy(), nxt.copy()
    wide = LT.widely_flagged_classes(part, y, loss, nxt)
    np.testing.assert_array_equal(part, part0)
    np.testing.assert_array_equal(nxt, nxt0)
    assert sorted(wide) == [0, 1]
    assert all(w["share"] == 0.3 and w["fitted_better"] < 10 and w["next_class_tv"] < 0.2 for w in wide.values())
    assert LT.widely_flagged_classes(part, y, loss, nxt, min_classes=3) == {}
    assert LT.widely_flagged_classes(part, y, loss, None) == {}
    assert LT.widely_flagged_classes(part, y, loss, nxt, wide_share=0) == {}
    assert LT.widely_flagged_classes(part, y, loss, nxt, wide_share=0.35) == {}
    assert LT.widely_flagged_classes(part, y, np.where(part, loss / 100, loss), nxt) == {}  # fitted far better
    assert LT.widely_flagged_classes(y == 0, y, loss, nxt) == {}  # a class flagged whole is not a split
    _, y2, loss2, part2, nxt2 = split_classes(rng, [0.3, 0.3, 0.0], relabelled=True)
    assert LT.widely_flagged_classes(part2, y2, loss2, nxt2) == {}  # another class's images


def test_final_wide_classes_drops_one_class_of_a_known_split_flagged_again():
    rng = np.random.default_rng(27)
    _, y, loss, part, nxt = split_classes(rng, [0.3, 0.3, 0.3])
    again = part & (y == 1)  # a later stage flagged class 1's part again, alone
    assert LT.widely_flagged_classes(again, y, loss, nxt) == {}  # one class is not a split ...
    assert list(LT.final_wide_classes(again, y, loss, nxt)) == []
    assert list(LT.final_wide_classes(again, y, loss, nxt, known={"0": {}, "1": {}, "2": {}})) == [1]  # ... of its own
    assert list(LT.final_wide_classes(again, y, loss, nxt, known=["0", "2"])) == []  # class 1 was not in the split
    assert LT.final_wide_classes(again, y, np.where(again, loss / 100, loss), nxt, known=["1"]) == {}  # signature


def test_histogram_distance_is_zero_for_the_same_classes_and_one_for_disjoint_ones():
    a = np.array([0, 1, 1, 2])
    assert LT.histogram_distance(a, a[::-1], 4) == 0.0
    assert LT.histogram_distance(a, np.array([3, 3]), 4) == 1.0
    assert LT.histogram_distance(np.array([0, 0]), np.array([0, 1]), 2) == 0.5


def test_next_class_is_the_highest_logit_after_the_label():
    z = np.array([[5.0, 1.0, 3.0], [0.0, 9.0, 2.0], [1.0, 1.0, 0.0]])
    np.testing.assert_array_equal(LT.next_class(z, np.array([0, 1, 2])), [2, 2, 0])
    np.testing.assert_array_equal(LT.next_class(z, np.array([2, 2, 2])), [0, 1, 0])


# ----------------------------------------------------------------------------- inside flare_detect

def abnormality_noise(rng, n, L=2):  # two columns: one prefix, one UMAP per fit
    return rng.normal(size=(n, L))


def test_flare_detect_flags_what_only_the_latent_stage_sees():
    rng = np.random.default_rng(10)
    P, y, loss, truth = two_class_set(rng, n_genuine=500, n_poison=300)
    X = abnormality_noise(rng, len(P))  # per-layer columns without any signal
    res = flare_detect(X, y, latent=P, logits=logits_for(loss, y), n_epochs=50)
    assert res.report["representation"] == "latent"
    assert res.report["seconds"]["latent"] > 0
    assert res.report["latent"]["used"] and res.report["latent"]["found"]
    assert res.flagged[truth].mean() >= 0.99 and res.flagged[~truth].mean() <= 0.01
    # flagged samples get a cluster id of their own and rank above the genuine ones
    assert set(np.unique(res.clusters[truth])).isdisjoint(np.unique(res.clusters[~truth]))
    assert np.median(res.scores[truth]) > np.percentile(res.scores[~truth], 99)
    assert res.evidence["latent"]["classes"][0]["n_flagged"] >= 300


def test_flare_detect_reports_a_dataset_wide_split_and_flags_none_of_it():
    from flare_core.report import dataset_wide_sentence

    rng = np.random.default_rng(26)
    P, y, loss, part, nxt = split_classes(rng, [0.3, 0.3, 0.3], n=400)
    X = abnormality_noise(rng, len(P))
    logits = logits_with_next(loss, y, nxt, 3)
    res = flare_detect(X, y, latent=P, logits=logits, n_epochs=50)
    assert not res.flagged.any() and sorted(res.report["latent"]["dataset_wide_split"]) == ["0", "1", "2"]
    # the tail-group stage, which runs where the others flagged little, found the same parts: dropped at the end
    assert res.report["latent"]["tail_groups"]["n_flagged"] == res.report["latent"]["dataset_wide_unflagged"] == 360
    sentence = dataset_wide_sentence({"evidence": res.evidence}, ["a", "b", "c"])
    assert sentence.startswith(" 3 classes split") and "a (30%), b (30%), c (30%)" in sentence
    off = flare_detect(X, y, latent=P, logits=logits, n_epochs=50, latent_wide_share=0)
    assert off.flagged[part].mean() >= 0.99 and "dataset_wide_split" not in off.report["latent"]
    assert dataset_wide_sentence({"evidence": off.evidence}, None) == ""
    _, _, _, _, relabelled = split_classes(np.random.default_rng(26), [0.3, 0.3, 0.3], n=400, relabelled=True)
    a2a = flare_detect(X, y, latent=P, logits=logits_with_next(loss, y, relabelled, 3), n_epochs=50)
    assert a2a.flagged[part].mean() >= 0.99 and "dataset_wide_split" not in a2a.report["latent"]


def test_flare_detect_latent_clean_set_comes_back_clean():
    rng = np.random.default_rng(11)
    P, y, loss, _ = two_class_set(rng, n_genuine=500, n_poison=0)
    res = flare_detect(abnormality_noise(rng, len(P)), y, latent=P, logits=logits_for(loss, y), n_epochs=50)
    assert not res.flagged.any()
    assert {k: v for k, v in res.report["latent"].items() if k != "tail_groups"} == {
        "used": True, "found": False, "n_flagged": 0}
    tail = res.report["latent"]["tail_groups"]
    assert {k: v for k, v in tail.items() if k != "settings"} == {"n_flagged": 0, "n_new": 0}  # classes: evidence
    assert tail["settings"]["max_other_base"] == 0.0  # two classes: the other class is always the same one
    assert "no class split" in res.evidence["conclusion"]


def test_use_latent_off_and_faithful_mode_ignore_the_latent_inputs():
    rng = np.random.default_rng(12)
    P, y, loss, truth = two_class_set(rng, n_genuine=300, n_poison=200)
    X = abnormality_noise(rng, len(P))
    off = flare_detect(X, y, latent=P, logits=logits_for(loss, y), use_latent="off", n_epochs=50)
    assert not off.report["latent"]["used"] and "off" in off.report["latent"]["why_not"]
    faithful = flare_detect(X, y, latent=P, logits=logits_for(loss, y), mode="faithful", n_epochs=50)
    assert not faithful.report["latent"]["used"] and "faithful" in faithful.report["latent"]["why_not"]
    none = flare_detect(X, y, n_epochs=50)
    assert not none.report["latent"]["used"] and "no penultimate" in none.report["latent"]["why_not"]


def test_flare_detector_fit_takes_latent_and_logits():
    rng = np.random.default_rng(13)
    P, y, loss, truth = two_class_set(rng, n_genuine=500, n_poison=300)
    det = FlareDetector(n_epochs=50).fit(abnormality_noise(rng, len(P)), y, latent=P, logits=logits_for(loss, y))
    assert det.flagged_[truth].all()
    assert det.get_params()["use_latent"] == "auto" and det.get_params()["latent_separation"] == 6.5


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(14)
    P, y, loss, _ = two_class_set(rng, n_genuine=300)
    return abnormality_noise(rng, len(P)), y, P, logits_for(loss, y)


def test_latent_with_wrong_rows_raises(small):
    X, y, P, Lg = small
    with pytest.raises(FlareError, match="latent has"):
        flare_detect(X, y, latent=P[:-1], logits=Lg)


def test_latent_without_logits_raises(small):
    X, y, P, _ = small
    with pytest.raises(FlareError, match="needs logits"):
        flare_detect(X, y, latent=P)


def test_logits_with_wrong_rows_raises(small):
    X, y, P, Lg = small
    with pytest.raises(FlareError, match="logits has"):
        flare_detect(X, y, latent=P, logits=Lg[:-1])


def test_latent_without_labels_raises(small):
    X, _, P, Lg = small
    with pytest.raises(FlareError, match="needs the labels"):
        flare_detect(X, None, latent=P, logits=Lg)


def test_logits_with_too_few_columns_raises(small):
    X, y, P, Lg = small
    with pytest.raises(FlareError, match="columns"):
        flare_detect(X, y, latent=P, logits=Lg[:, :1])


def test_bad_latent_parameters_raise(small):
    X, y, P, Lg = small
    with pytest.raises(FlareError):
        flare_detect(X, y, use_latent="yes")
    with pytest.raises(FlareError):
        flare_detect(X, y, latent_separation=0)
    with pytest.raises(FlareError):
        flare_detect(X, y, latent_loss_ratio=0.5)
    with pytest.raises(FlareError):
        flare_detect(X, y, latent_max_clusters=1)
    with pytest.raises(FlareError, match="latent_join"):
        flare_detect(X, y, latent_join="yes")
    with pytest.raises(FlareError, match="latent_loss_separation"):
        flare_detect(X, y, latent_loss_separation=-1)
    with pytest.raises(FlareError, match="latent_confirm_loss"):
        flare_detect(X, y, latent_confirm_loss=0.5)
    with pytest.raises(FlareError, match="latent_confirm_loss"):
        flare_detect(X, y, latent_confirm_loss=-1)
    with pytest.raises(FlareError, match="latent_confirm_pooled"):
        flare_detect(X, y, latent_confirm_pooled=-1)
    with pytest.raises(FlareError, match="latent_wide_share"):
        flare_detect(X, y, latent_wide_share=-0.1)
    with pytest.raises(FlareError, match="latent_wide_share"):
        flare_detect(X, y, latent_wide_share=1.5)
    with pytest.raises(FlareError):
        flare_detect(X, y, latent_max_clusters=13)
    with pytest.raises(FlareError):
        flare_detect(X, y, latent_max_clusters=2.5)


# ----------------------------------------------------------------------------- candidate splits

def three_modes(rng, n_each=600, sep=5.0, n_planted=0, shift=4.0):
    """A class of three sub-modes (d' ~5 apart: below the split threshold) and, optionally, a small
    planted group (d' ~8 from the rest) -- a low-rate poison inside a class with natural sub-modes."""
    centres = [np.zeros(D), np.eye(D)[0] * sep, np.eye(D)[1] * sep]
    parts = [rng.normal(size=(n_each, D)) + c for c in centres]
    if n_planted:
        planted = rng.normal(size=(n_planted, D))
        planted[:, 4:8] += shift
        parts.append(planted)
    return np.vstack(parts)


def _flags(res, n):
    fl = np.zeros(n, bool)
    for i in res.flagged_leaves:
        fl[res.leaves[i]] = True
    return fl


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_candidate_splits_find_a_small_group_beside_natural_submodes(seed):
    X = three_modes(np.random.default_rng(seed), n_planted=60)
    loss = np.full(len(X), 1e-2)
    found = _flags(LT.split_class(X, loss, 0, max_clusters=6), len(X))
    assert found[-60:].all() and not found[:-60].any()
    # the plain 2-means split cuts between the sub-modes (d' ~5, refused) and never sees the group
    plain = _flags(LT.split_class(X, loss, 0, max_clusters=2), len(X))
    assert not plain.any()


def test_split_records_name_the_candidate_that_made_them():
    X = three_modes(np.random.default_rng(1), n_planted=60)
    loss = np.full(len(X), 1e-2)
    first = LT.split_class(X, loss, 0, max_clusters=6).splits[0]
    assert first["accepted"] and first["candidate"].startswith("k-means cluster, k=")
    assert 3 <= int(first["candidate"].rsplit("=", 1)[1]) <= 6
    assert LT.split_class(X, loss, 0, max_clusters=2).splits[0]["candidate"] == "2-means"
    rng = np.random.default_rng(0)  # a far-apart half: the plain split stands and is recorded as such
    half = np.vstack([cloud(rng, 400), cloud(rng, 400, 12.0)])
    assert LT.split_class(half, np.full(800, 1e-2), 0, max_clusters=6).splits[0]["candidate"] == "2-means"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_candidate_splits_invent_nothing_in_a_class_of_submodes(seed):
    X = three_modes(np.random.default_rng(seed))
    res = LT.split_class(X, np.full(len(X), 1e-2), 0, max_clusters=6)
    assert not res.flagged_leaves and all(not s["accepted"] for s in res.splits)


def test_candidate_splits_are_distinct_masks_and_two_means_comes_first():
    rng = np.random.default_rng(4)
    F = three_modes(rng, n_each=200, n_planted=30)
    cands = LT.candidate_splits(F, max_clusters=4)
    assert len(cands) >= 2 and len(LT.candidate_splits(F, max_clusters=2)) == 1
    np.testing.assert_array_equal(cands[0], LT.candidate_splits(F, max_clusters=2)[0])
    keys = {np.packbits(c if c.sum() <= len(c) / 2 else ~c).tobytes() for c in cands}
    assert len(keys) == len(cands)
    assert all(c.any() and not c.all() for c in cands)


def test_max_clusters_reaches_latent_detect_and_flare_detect():
    rng = np.random.default_rng(1)  # class 0 as in the seed-1 case above (2-means misses the group)
    X0 = three_modes(rng, n_planted=60)
    P = np.vstack([X0, rng.normal(size=(600, D)) + 3.0])
    y = np.r_[np.zeros(len(X0), int), np.ones(600, int)]
    loss = np.full(len(P), 1e-2)
    on, _, _, _ = LT.latent_detect(P, y, loss, max_clusters=6)
    off, _, _, _ = LT.latent_detect(P, y, loss, max_clusters=2)
    assert on[len(X0) - 60:len(X0)].all() and on.sum() == 60 and not off.any()
    small = np.r_[np.arange(300), np.arange(len(X0) - 60, len(X0)), np.arange(len(X0), len(X0) + 300)]
    res = flare_detect(rng.normal(size=(len(small), 2)), y[small], latent=P[small],
                       logits=logits_for(loss[small], y[small]), latent_max_clusters=6, n_epochs=50)
    assert res.report["params"]["latent_max_clusters"] == 6
    assert FlareDetector(latent_max_clusters=6).get_params()["latent_max_clusters"] == 6


def test_confirm_keeps_a_separated_group_and_refuses_an_outlier_clump():
    rng = np.random.default_rng(16)
    P = np.vstack([cloud(rng, 600), cloud(rng, 200, shift=10.0)])
    y = np.zeros(800, int)
    groups = np.zeros(800, int)
    flagged = np.zeros(800, bool)
    flagged[600:] = True  # a real population of its own
    groups[600:] = 1
    clump = rng.choice(600, 100, replace=False)  # genuine samples the per-layer stage grouped by accident
    flagged[clump] = True
    groups[clump] = 2
    before = flagged.copy()
    kept, records = LT.confirm_groups(P, y, flagged, groups)
    np.testing.assert_array_equal(flagged, before)
    assert kept[600:].all() and not kept[clump].any()
    by_group = {r["group"]: r for r in records}
    assert by_group[1]["kept"] and by_group[1]["median_dprime"] > 6
    assert not by_group[2]["kept"] and by_group[2]["median_dprime"] < 3


def _small_group(seed):
    """A flagged group of 10 in a class of 300: too small for a held-out d'."""
    rng = np.random.default_rng(seed)
    flagged = np.zeros(300, bool)
    flagged[:10] = True
    return rng, cloud(rng, 300), np.zeros(300, int), flagged


def test_confirm_keeps_groups_too_small_to_check():
    _, P, y, flagged = _small_group(17)
    kept, records = LT.confirm_groups(P, y, flagged, flagged.astype(int))
    assert kept[:10].all() and records[0]["checked"] is False and records[0]["kept_by"] == "unchecked"


def _thin_groups(seed, n_classes=10, per_class=25, shift=4.0):
    """Ten classes of 400 genuine rows (each class at its own place); a 'poison' group of ``per_class``
    rows in every class shifted along one shared direction (too few per class for a held-out d'), and a
    clump of as many genuine rows per class grouped by accident."""
    rng = np.random.default_rng(seed)
    parts, poison = [], []
    for c in range(n_classes):
        base = rng.normal(scale=3.0, size=D)
        parts += [cloud(rng, 400) + base, cloud(rng, per_class, shift=shift) + base]
        poison += [np.zeros(400, bool), np.ones(per_class, bool)]
    P, poison = np.vstack(parts), np.concatenate(poison)
    y = np.repeat(np.arange(n_classes), 400 + per_class)
    clump = np.zeros(len(y), bool)
    for c in range(n_classes):
        clump[rng.choice(np.flatnonzero((y == c) & ~poison), per_class, replace=False)] = True
    return rng, P, y, poison, clump


def test_confirm_keeps_a_group_spread_thinly_over_classes_on_its_pooled_separation():
    rng, P, y, poison, clump = _thin_groups(21)
    flagged = poison | clump
    groups = np.where(poison, 1, np.where(clump, 2, 0))
    loss = losses(rng, len(y), 1e-2)  # no loss signature: distance alone has to carry it
    before = (P.copy(), flagged.copy())
    kept, records = LT.confirm_groups(P, y, flagged, groups, loss=loss)
    np.testing.assert_array_equal(P, before[0])
    np.testing.assert_array_equal(flagged, before[1])
    assert kept[poison].all() and not kept[clump].any()
    by_group = {r["group"]: r for r in records}
    assert by_group[1]["classes"] == [] and by_group[1]["kept_by"] == "pooled separation"
    assert by_group[1]["pooled_dprime"] > 6 and by_group[1]["checked"] is True
    assert not by_group[2]["kept"] and by_group[2]["pooled_dprime"] < 2


def test_confirm_pooled_test_can_be_switched_off():
    rng, P, y, poison, clump = _thin_groups(23)
    loss = losses(rng, len(y), 1e-2)
    kept, records = LT.confirm_groups(P, y, poison, poison.astype(int), loss=loss, pooled_separation=0)
    assert not kept.any() and records[0]["pooled_dprime"] is None and records[0]["checked"] is False


def test_pooled_dprime_ignores_where_each_class_sits():
    """A group that is one whole class's share of rows sitting at that class's own place is not separated."""
    rng, P, y, poison, clump = _thin_groups(22, shift=0.0)
    assert LT.pooled_heldout_dprime(P, y, poison) < 2
    assert LT.pooled_heldout_dprime(P, y, poison & (y < 0)) == 0.0  # no rows: nothing to measure


def _close_group(seed):
    """A flagged group of 200 inside a class of 800 that is *not* separated in P (same cloud)."""
    rng = np.random.default_rng(seed)
    P = cloud(rng, 800)
    y = np.zeros(800, int)
    flagged = np.zeros(800, bool)
    flagged[600:] = True
    return rng, P, y, flagged, flagged.astype(int)


def test_confirm_keeps_a_close_group_the_model_fits_far_better():
    rng, P, y, flagged, groups = _close_group(18)
    loss = rng.uniform(0.5, 1.5, 800)
    loss[600:] = rng.uniform(1e-4, 3e-4, 200)  # the backdoor's signature: fitted ~5,000x better
    before = (P.copy(), flagged.copy(), loss.copy())
    kept, records = LT.confirm_groups(P, y, flagged, groups, loss=loss)
    for a, b in zip((P, flagged, loss), before):
        np.testing.assert_array_equal(a, b)
    assert kept[600:].all() and not kept[:600].any()
    assert records[0]["median_dprime"] < 3 and records[0]["kept_by"] == "loss"
    assert records[0]["loss_ratio"] > 1000


def test_confirm_refuses_a_close_group_fitted_only_somewhat_better():
    rng, P, y, flagged, groups = _close_group(19)
    loss = rng.uniform(0.5, 1.5, 800)
    loss[600:] /= 4.0  # genuine easy samples: 4x better fitted, under the 10x rule
    kept, records = LT.confirm_groups(P, y, flagged, groups, loss=loss)
    assert not kept.any() and records[0]["kept"] is False and records[0]["kept_by"] is None
    assert 3 < records[0]["loss_ratio"] < 5
    kept_lenient, _ = LT.confirm_groups(P, y, flagged, groups, loss=loss, loss_ratio=3.0)
    assert kept_lenient[600:].all()


def test_confirm_keeps_a_small_group_only_on_its_loss_signature_when_losses_are_given():
    rng, P, y, flagged = _small_group(20)
    loss = rng.uniform(0.5, 1.5, 300)
    kept, records = LT.confirm_groups(P, y, flagged, flagged.astype(int), loss=loss)
    assert not kept.any() and records[0]["checked"] is False and records[0]["kept"] is False
    loss[:10] = 1e-4
    kept, records = LT.confirm_groups(P, y, flagged, flagged.astype(int), loss=loss)
    assert kept[:10].all() and records[0]["kept_by"] == "loss"


def _classes_with_minorities(rng, shifts):
    """One class per shift: 700 genuine + 300 'poison' at that shift, all fitted alike (no loss signature)."""
    P = np.vstack([np.vstack([cloud(rng, 700), cloud(rng, 300, shift=sh)]) for sh in shifts])
    y = np.repeat(np.arange(len(shifts)), 1000)
    truth = np.tile(np.r_[np.zeros(700, bool), np.ones(300, bool)], len(shifts))
    return P, y, losses(rng, len(y), 1e-2), truth


def test_poison_found_in_other_classes_lowers_the_first_split_bar_of_the_rest():
    """All-to-all: two classes split off their minority far apart (d' >> 6.5), a third only at d' ~6."""
    rng = np.random.default_rng(22)
    P, y, loss, truth = _classes_with_minorities(rng, [8.0, 8.0, 3.0])
    flagged, _, _, evidence = LT.latent_detect(P, y, loss)
    third = y == 2
    assert evidence[2]["splits"][0]["by"] == "other classes"
    assert 5.5 <= evidence[2]["splits"][0]["dprime"] < 6.5
    assert flagged[third & truth].mean() > 0.95 and flagged[third & ~truth].mean() < 0.02
    assert "another class" in evidence[2]["reason"]


def test_a_close_minority_alone_is_not_flagged():
    """The same d' ~6 minority with no poison found elsewhere (nor a loss signature): nothing flagged."""
    rng = np.random.default_rng(22)
    P, y, loss, _ = _classes_with_minorities(rng, [0.0, 0.0, 3.0])
    flagged, _, _, evidence = LT.latent_detect(P, y, loss)
    assert not flagged.any() and evidence[2]["splits"][0]["accepted"] is False
    off_bar, _, _, _ = LT.latent_detect(*_classes_with_minorities(np.random.default_rng(22), [8.0, 8.0, 3.0])[:3],
                                        loss_separation=None)
    assert not off_bar[2000:].any()  # the lower bar is the loss_separation parameter: None = off


def test_join_flagged_classes_extends_flags_only_in_a_class_with_the_loss_signature():
    rng = np.random.default_rng(21)
    # class 0: 700 genuine + 300 poison (a cloud of its own), 200 of the poison flagged; class 1: alike, no signature
    P = np.vstack([cloud(rng, 700), cloud(rng, 300, shift=8.0), cloud(rng, 700), cloud(rng, 300, shift=8.0)])
    y = np.repeat([0, 1], 1000)
    flagged = np.zeros(2000, bool)
    flagged[700:900] = True
    flagged[1700:1900] = True
    loss = np.concatenate([losses(rng, 700, 1e-2), losses(rng, 300, 1e-5), losses(rng, 1000, 1e-2)])
    before = (P.copy(), flagged.copy(), loss.copy())
    joined, records = LT.join_flagged_classes(P, y, flagged, loss)
    for a, b in zip((P, flagged, loss), before):
        np.testing.assert_array_equal(a, b)
    assert joined[900:1000].mean() > 0.95 and not joined[:700].any()  # the rest of the poison, no genuine
    assert not joined[1000:].any()  # class 1's flags are not fitted better: left alone
    by_class = {r["class"]: r for r in records}
    assert by_class[0]["signature"] and by_class[0]["joined"] == int(joined[:1000].sum())
    assert not by_class[1]["signature"] and by_class[1]["joined"] == 0
    assert not LT.join_flagged_classes(P, y, np.zeros(2000, bool), loss)[0].any()


def _edge_poison(rng):
    """One class: 1000 genuine, 300 flagged poison far out along the poison direction, and 30 poison the
    stages missed in a tight clump between them, nearer the flagged side: their nearest neighbours are
    each other (unflagged), so only the linear rule can take them."""
    P = np.vstack([cloud(rng, 1000), cloud(rng, 300, shift=8.0), cloud(rng, 30, shift=6.5, scale=0.3)])
    flagged = np.zeros(len(P), bool)
    flagged[1000:1300] = True
    return P, flagged


def test_join_linear_takes_the_poison_on_the_flagged_side_that_the_neighbour_rule_cannot():
    P, flagged = _edge_poison(np.random.default_rng(23))
    before = (P.copy(), flagged.copy())
    joined = LT.join_linear(P, flagged)
    np.testing.assert_array_equal(P, before[0])
    np.testing.assert_array_equal(flagged, before[1])
    assert joined[1300:].all()  # the missed clump
    assert not joined[:1300].any()  # no genuine sample, and never an already flagged one
    assert not LT.join_neighbours(P, flagged)[1300:].any()  # the neighbour rule cannot reach them
    np.testing.assert_array_equal(LT.join_linear(P, flagged, random_state=0), joined)  # deterministic


def test_join_linear_joins_no_genuine_sample_when_the_flags_are_a_separated_population():
    rng = np.random.default_rng(24)
    P = np.vstack([cloud(rng, 1000), cloud(rng, 300, shift=8.0)])
    flagged = np.zeros(1300, bool)
    flagged[1000:] = True
    assert not LT.join_linear(P, flagged).any()


def test_join_linear_needs_a_fold_of_each_side():
    rng = np.random.default_rng(25)
    P = cloud(rng, 100)
    flagged = np.zeros(100, bool)
    flagged[:4] = True  # fewer flagged rows than folds
    assert not LT.join_linear(P, flagged).any()
    assert not LT.join_linear(P, np.ones(100, bool)).any()


def test_join_flagged_classes_records_both_rules_and_can_keep_the_neighbour_rule_alone():
    rng = np.random.default_rng(26)
    P, flagged = _edge_poison(rng)
    y = np.zeros(len(P), int)
    loss = np.concatenate([losses(rng, 1000, 1e-2), losses(rng, 330, 1e-5)])
    joined, records = LT.join_flagged_classes(P, y, flagged, loss)
    assert joined[1300:].all() and not joined[:1000].any()
    (rec,) = records
    assert rec["joined"] == rec["joined_neighbours"] + rec["joined_linear"] == int(joined.sum())
    assert rec["joined_linear"] == 30
    only_knn, records = LT.join_flagged_classes(P, y, flagged, loss, linear=False)
    assert not only_knn[1300:].any() and "joined_linear" not in records[0]


def test_flare_detect_latent_join_choices_reach_the_join_step():
    rng = np.random.default_rng(27)
    P, y, loss, truth = two_class_set(rng, n_genuine=500, n_poison=300)
    X, Lg = abnormality_noise(rng, len(P)), logits_for(loss, y)
    with pytest.raises(FlareError, match="latent_join"):
        flare_detect(X, y, latent=P, logits=Lg, latent_join="linear")
    runs = {c: flare_detect(X, y, latent=P, logits=Lg, latent_join=c, n_epochs=50)
            for c in ("auto", "neighbours", "off")}
    assert all("joined_linear" in r for r in runs["auto"].report["latent"]["joined"])
    assert not any("joined_linear" in r for r in runs["neighbours"].report["latent"]["joined"])
    assert "joined" not in runs["off"].report["latent"]
    for r in runs.values():  # a separated poison set: nothing to join, the same flags either way
        np.testing.assert_array_equal(r.flagged, runs["auto"].flagged)
        assert r.flagged[truth].all() and not r.flagged[~truth].any()


def test_estimator_exposes_every_flare_parameter():
    from flare_core.detectors.flare import DEFAULT_PARAMS

    assert set(FlareDetector().get_params()) == set(DEFAULT_PARAMS)
    assert FlareDetector(latent_confirm=0).get_params()["latent_confirm"] == 0


def test_fitted_better_is_the_ratio_of_median_losses_and_safe_at_zero():
    assert LT.fitted_better(np.array([1e-4, 1e-4, 5.0]), np.array([1.0, 1.0, 0.0])) == pytest.approx(1e4)
    assert LT.fitted_better(np.zeros(3), np.ones(3)) > 1e300  # a perfectly fitted part: huge, finite
    assert LT.fitted_better(np.ones(3), np.zeros(3)) == 0.0
    assert LT.fitted_better(np.zeros(3), np.zeros(3)) == 1.0


def test_flare_default_ranks_the_unflagged_by_atypicality_and_flags_first():
    rng = np.random.default_rng(14)
    # nothing separable: 40 outliers in class 0 stay unflagged, but the score ranks them first
    P, y, loss, _ = two_class_set(rng, n_genuine=500, n_poison=0)
    out = np.zeros(len(P), bool)
    out[:40] = True
    P[out] += rng.normal(size=(40, D)) * 3.0
    X = abnormality_noise(rng, len(P))
    res = flare_detect(X, y, latent=P, logits=logits_for(loss, y), n_epochs=50)
    assert not res.flagged.any() and "atypicality" in res.report["score"]
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(out, res.scores) >= 0.95
    # the faithful mode keeps the published method's distance scores
    faithful = flare_detect(X, y, latent=P, logits=logits_for(loss, y), mode="faithful", n_epochs=50)
    assert faithful.report["score"] == "benign distance"
    # with poison found, every flagged sample outranks every unflagged one
    P2, y2, loss2, truth = two_class_set(rng, n_genuine=500, n_poison=300)
    res2 = flare_detect(abnormality_noise(rng, len(P2)), y2, latent=P2, logits=logits_for(loss2, y2), n_epochs=50)
    assert res2.flagged.any() and res2.scores[res2.flagged].min() > res2.scores[~res2.flagged].max()


def test_confirm_default_refuses_a_genuine_easy_group_fitted_15x_better():
    """The held-out false alarm behind the default of 100: a close group fitted ~13.5x better is genuine."""
    rng, P, y, flagged, groups = _close_group(21)
    loss = rng.uniform(0.5, 1.5, 800)
    loss[600:] /= 15.0
    kept, records = LT.confirm_groups(P, y, flagged, groups, loss=loss)
    assert not kept.any() and 10 < records[0]["loss_ratio"] < 25 and records[0]["kept_by"] is None
    assert LT.confirm_groups(P, y, flagged, groups, loss=loss, loss_ratio=10.0)[0][600:].all()
    assert LT.DEFAULT_CONFIRM_LOSS_RATIO == 100.0 and FlareDetector().get_params()["latent_confirm_loss"] == 100.0


# ----------------------------------------------------------------------------- a class past the sample size

def _flag_mask(res, n):
    mask = np.zeros(n, bool)
    for i in res.flagged_leaves:
        mask[res.leaves[i]] = True
    return mask


def test_a_large_class_is_split_on_a_sample_and_every_row_placed():
    rng = np.random.default_rng(21)
    P = np.vstack([cloud(rng, 2700), cloud(rng, 300, shift=12.0)]).astype(np.float32)
    loss = np.concatenate([losses(rng, 2700, 1e-2), losses(rng, 300, 1e-4)])
    P_before = P.copy()
    res = LT.split_class(P, loss, 0, sample_size=1000)
    np.testing.assert_array_equal(P, P_before)
    flagged = _flag_mask(res, 3000)
    assert flagged[2700:].all() and not flagged[:2700].any()  # the planted 10 % is found, nothing invented
    assert sorted(np.concatenate(res.leaves).tolist()) == list(range(3000))  # every row in exactly one leaf
    ev = res.evidence
    assert ev["n"] == 3000 and ev["sampled"] == {"rows": 1000, "of": 3000} and ev["n_flagged"] == 300
    assert sum(leaf["size"] for leaf in ev["leaves"]) == 3000 and "sample of 1,000 of its 3,000 rows" in ev["reason"]
    assert res.scores[2700:].min() > res.scores[:2700].max()
    # the sampled rows score exactly as in the sample's own split
    sample = np.sort(np.random.default_rng([0, 0, LT._SAMPLE_STREAM]).choice(3000, 1000, replace=False))
    alone = LT.split_class(P[sample], loss[sample], 0, sample_size=None)
    np.testing.assert_allclose(res.scores[sample], alone.scores, rtol=1e-10, atol=1e-12)
    again = LT.split_class(P, loss, 0, sample_size=1000)
    np.testing.assert_array_equal(_flag_mask(again, 3000), flagged)


def test_a_large_clean_class_is_not_flagged_on_a_sample():
    rng = np.random.default_rng(22)
    P = cloud(rng, 3000)
    res = LT.split_class(P, losses(rng, 3000, 1e-2), 0, sample_size=1000)
    assert res.flagged_leaves == [] and not res.scores.any() and res.evidence["n_flagged"] == 0


def test_a_class_within_the_sample_size_is_split_exactly_as_before():
    rng = np.random.default_rng(23)
    P = np.vstack([cloud(rng, 900), cloud(rng, 100, shift=12.0)])
    loss = np.concatenate([losses(rng, 900, 1e-2), losses(rng, 100, 1e-4)])
    whole, capped = LT.split_class(P, loss, 0, sample_size=None), LT.split_class(P, loss, 0, sample_size=1000)
    assert "sampled" not in capped.evidence and capped.evidence == whole.evidence
    np.testing.assert_array_equal(capped.scores, whole.scores)
