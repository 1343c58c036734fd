"""FLARE default's tail-group stage (flare_core.detectors.tail_groups) and its wiring into flare_detect.

Synthetic penultimate features of a class: genuine sub-modes (Gaussian clouds, one of them small and
tight, inside the class), a few diverse outliers (atypical, but each in its own direction) and,
optionally, a planted poison island: a small tight group away from the class.
"""
import numpy as np
import pytest

from flare_core.detectors import tail_groups as TG
from flare_core.detectors.flare import flare_detect
from flare_core.detectors.scoring import class_atypicality
from flare_core.errors import FlareError

D = 32


def genuine_class(rng, n=1500, n_outliers=30):
    """Four sub-modes, a tight genuine sub-mode near the class's centre, and scattered outliers."""
    centres = [np.zeros(D)] + [np.eye(D)[i] * 6.0 for i in (0, 1, 3)]
    parts = [rng.normal(size=(n // 4, D)) + c for c in centres]
    parts.append(rng.normal(size=(40, D)) * 0.3 + np.eye(D)[2] * 2.5)  # tight, but inside the class
    parts.append(rng.normal(size=(n_outliers, D)) * 3.0)  # atypical, but each odd in its own way
    return np.vstack(parts)


def planted_island(rng, n=30, shift=7.0):
    X = rng.normal(size=(n, D)) * 0.35
    X[:, 4:8] += shift
    return X


def class_with_island(seed, n_island=30):
    rng = np.random.default_rng(seed)
    G = genuine_class(rng)
    P = np.vstack([G, planted_island(rng, n_island)]) if n_island else G
    truth = np.zeros(len(P), bool)
    truth[len(G):] = True
    return P, truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_planted_island_is_found(seed):
    P, truth = class_with_island(seed)
    atyp = class_atypicality(P, np.zeros(len(P), int))
    flagged, groups, records = TG.tail_groups_in_class(P, atyp)
    assert flagged[truth].mean() >= 0.95
    assert (flagged & ~truth).sum() <= 2
    assert (groups[flagged] >= 0).all() and (groups[~flagged] == -1).all()
    kept = [r for r in records if r["kept"]]
    assert len(kept) == 1 and kept[0]["purity"] >= TG.DEFAULT_MIN_PURITY and kept[0]["island"] >= TG.DEFAULT_MIN_ISLAND


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_class_of_submodes_and_scattered_outliers_gives_nothing(seed):
    P, _ = class_with_island(seed, n_island=0)
    atyp = class_atypicality(P, np.zeros(len(P), int))
    flagged, groups, records = TG.tail_groups_in_class(P, atyp)
    assert not flagged.any() and (groups == -1).all()
    assert not any(r["kept"] for r in records)


def test_a_tight_genuine_submode_is_refused_by_its_typicality():
    P, _ = class_with_island(1, n_island=0)  # this seed's HDBSCAN isolates the tight sub-mode
    atyp = class_atypicality(P, np.zeros(len(P), int))
    flagged, _, records = TG.tail_groups_in_class(P, atyp)
    tight = [r for r in records if r["purity"] >= TG.DEFAULT_MIN_PURITY and r["island"] >= TG.DEFAULT_MIN_ISLAND]
    assert tight and all(r["atypicality"] < TG.DEFAULT_MIN_ATYPICALITY and not r["kept"] for r in tight)
    assert not flagged.any()
    assert TG.tail_groups_in_class(P, atyp, min_atypicality=0.0)[0].any()  # without that bar it would be taken


def test_group_statistics_of_an_island_and_of_a_random_subset():
    rng = np.random.default_rng(3)
    P, truth = class_with_island(3)
    atyp = class_atypicality(P, np.zeros(len(P), int))
    before = P.copy()
    island = TG.group_statistics(P, truth, atyp)
    random = np.zeros(len(P), bool)
    random[rng.choice(len(P), truth.sum(), replace=False)] = True
    spread = TG.group_statistics(P, random, atyp)
    assert island["size"] == truth.sum() and island["purity"] > 0.95 and island["island"] > 2
    assert spread["purity"] < 0.2 and spread["island"] < 1.2
    assert island["atypicality"] > spread["atypicality"]
    np.testing.assert_array_equal(P, before)


def test_group_statistics_of_a_group_too_small_to_measure():
    P = np.random.default_rng(4).normal(size=(200, 4))
    members = np.zeros(200, bool)
    members[:3] = True
    stats = TG.group_statistics(P, members, np.ones(200))
    assert stats["purity"] == 0.0 and stats["island"] == 0.0 and stats["size"] == 3


@pytest.mark.parametrize("bar, value", [("purity", 0.84), ("island", 1.74), ("atypicality", 1.74),
                                        ("one_feature_share", 0.91)])
def test_each_bar_of_the_rule_refuses_on_its_own(bar, value):
    good = {"size": 30, "purity": 0.95, "island": 2.5, "atypicality": 2.5}
    assert TG.is_tail_group(good, 1000)
    assert not TG.is_tail_group({**good, bar: value}, 1000)


def test_one_feature_share_of_an_even_and_of_a_one_feature_deviation():
    rng = np.random.default_rng(8)
    Z = rng.normal(size=(500, D))
    members = np.zeros(500, bool)
    members[:40] = True
    before = Z.copy()
    even = TG.one_feature_share(Z, members)
    assert even < 3.0 / D  # an ordinary group: no feature carries much more than 1/D
    Z1 = Z.copy()
    Z1[members, 5] += 300.0  # one feature far out, the rest ordinary
    assert TG.one_feature_share(Z1, members) > 0.99
    Z4 = Z.copy()
    Z4[members, 4:8] += 7.0  # the planted island's shift: four features
    assert 0.2 < TG.one_feature_share(Z4, members) < 0.3
    assert TG.one_feature_share(Z, np.zeros(500, bool)) == 0.0
    assert TG.one_feature_share(np.zeros((10, 3)), np.ones(10, bool)) == 0.0
    np.testing.assert_array_equal(Z, before)


def one_channel_class(seed, n_group=30):
    """A genuine class with one nearly silent feature (a channel at ~0 for the whole class) that fires for
    ``n_group`` ordinary members of the bulk, at a level ordinary for the other features: the CIFAR-10 studio
    frogs' case (robust z ~1,000 in that one feature)."""
    rng = np.random.default_rng(seed)
    G = genuine_class(rng)
    silent = np.abs(rng.normal(size=(len(G), 1))) * 1e-3
    group = rng.choice(len(G) - 70, n_group, replace=False)  # from the sub-modes, not the outliers
    silent[group, 0] = 0.7 + rng.normal(size=n_group) * 0.02
    truth = np.zeros(len(G), bool)
    truth[group] = True
    return np.hstack([G, silent]), truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_island_of_one_silent_feature_firing_is_not_kept(seed):
    P, group = one_channel_class(seed)
    atyp = class_atypicality(P, np.zeros(len(P), int))
    flagged, _, records = TG.tail_groups_in_class(P, atyp)
    assert not flagged.any()
    single = [r for r in records if r["one_feature_share"] > TG.DEFAULT_MAX_ONE_FEATURE_SHARE]
    assert single and not any(r["kept"] for r in single)
    # without that bar the other three keep it: the bar is what refuses it
    loose = TG.tail_groups_in_class(P, atyp, max_one_feature_share=1.0)[0]
    assert loose[group].mean() >= 0.9


def test_the_stage_floors_column_scales_as_the_class_atypicality_does():
    from flare_core.detectors.scoring import ATYPICALITY_SD_FLOOR

    assert TG.TAIL_SD_FLOOR == ATYPICALITY_SD_FLOOR > 0


@pytest.mark.parametrize("seed", [0, 1])
def test_a_floor_under_every_columns_mad_to_sd_leaves_the_stage_unchanged(seed):
    """Where every column of the class has spread (MAD / SD well above the floor: Fashion-MNIST's case,
    >= 0.254), the floored stage is the plain one, candidate for candidate."""
    P, _ = class_with_island(seed)
    atyp = class_atypicality(P, np.zeros(len(P), int))
    plain = TG.tail_groups_in_class(P, atyp, sd_floor=0.0)
    floored = TG.tail_groups_in_class(P, atyp)  # the default floor
    np.testing.assert_array_equal(plain[0], floored[0])
    np.testing.assert_array_equal(plain[1], floored[1])
    assert plain[0].any()
    assert [r["size"] for r in plain[2]] == [r["size"] for r in floored[2]]


def test_the_floor_lowers_a_silent_features_share_of_a_groups_deviation():
    """On a class with one nearly silent channel the floor raises that column's scale, so the sub-mode it
    fires for deviates less in it: its one-feature share falls (the statistic the island bar reads)."""
    P, group = one_channel_class(0)
    atyp = class_atypicality(P, np.zeros(len(P), int))
    share = {fl: max(r["one_feature_share"] for r in TG.tail_groups_in_class(P, atyp, sd_floor=fl)[2])
             for fl in (0.0, TG.TAIL_SD_FLOOR)}
    assert share[TG.TAIL_SD_FLOOR] < share[0.0]


def test_stage_settings_are_the_bars_the_rules_apply():
    s = TG.stage_settings(10)
    assert s["min_purity"] == TG.DEFAULT_MIN_PURITY and s["min_misfit_island"] == TG.DEFAULT_MIN_MISFIT_ISLAND
    assert s["max_other_base"] == pytest.approx(TG.other_base_bar(10)) and s["sd_floor"] == TG.TAIL_SD_FLOOR
    assert TG.stage_settings(100)["max_other_base"] < s["max_other_base"]  # many classes: a stricter base
    assert TG.stage_settings(10, min_island=3.0)["min_island"] == 3.0
    # a stats dict at exactly the recorded bars is kept by the rule, a hair under one of them is not
    stats = {"size": 20, "purity": s["min_purity"], "island": s["min_island"], "atypicality": s["min_atypicality"]}
    assert TG.tail_group_rule(stats, 1000) == "island"
    assert TG.tail_group_rule({**stats, "island": s["min_island"] - 1e-9}, 1000) is None


def test_stage_settings_refuse_an_unknown_bar():
    with pytest.raises(ValueError, match="min_islnd"):
        TG.stage_settings(10, min_islnd=2.0)


def test_a_group_of_over_a_third_of_the_class_is_not_a_tail_group():
    good = {"size": 400, "purity": 0.95, "island": 2.5, "atypicality": 2.5}
    assert not TG.is_tail_group(good, 1000)


def test_small_classes_are_skipped():
    P = np.random.default_rng(5).normal(size=(TG.MIN_CLASS_ROWS - 1, D))
    flagged, groups, records = TG.tail_groups_in_class(P, np.ones(len(P)))
    assert not flagged.any() and records == []


def test_tail_group_detect_is_per_class_deterministic_and_leaves_inputs_unchanged():
    P0, t0 = class_with_island(6)
    P1, _ = class_with_island(7, n_island=0)
    P = np.vstack([P0, P1 + 10.0])
    y = np.concatenate([np.zeros(len(P0), int), np.ones(len(P1), int)])
    atyp = class_atypicality(P, y)
    before = P.copy()
    a = TG.tail_group_detect(P, y, atyp)
    b = TG.tail_group_detect(P, y, atyp)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(P, before)
    flagged, _, evidence = a
    assert flagged[:len(P0)][t0].mean() >= 0.95 and not flagged[len(P0):].any()
    assert len(evidence["0"]["kept"]) == 1 and evidence["1"]["kept"] == []
    assert evidence["0"]["n_flagged"] == int(flagged[:len(P0)].sum())


# ----------------------------------------------------------------------------- in flare_detect

def _flare_inputs(seed, n_island):
    rng = np.random.default_rng(seed)
    P0, t0 = class_with_island(seed, n_island)
    P1, _ = class_with_island(seed + 100, n_island=0)
    P = np.vstack([P0, P1 + 6.0])
    y = np.concatenate([np.zeros(len(P0), int), np.ones(len(P1), int)])
    truth = np.concatenate([t0, np.zeros(len(P1), bool)])
    loss = 1e-2 * np.exp(rng.normal(scale=0.5, size=len(P)))
    z = np.zeros((len(P), 2))
    z[np.arange(len(P)), y] = np.log(np.exp(-loss) / (1 - np.exp(-loss)))
    X = rng.normal(size=(len(P), 6))  # per-layer columns without any signal
    return X, y, P, z, truth


def test_flare_detect_flags_a_tail_group_only_the_tail_stage_sees():
    X, y, P, Lg, truth = _flare_inputs(8, 30)
    res = flare_detect(X, y, latent=P, logits=Lg, n_epochs=50)
    assert res.report["representation"] == "tail"
    assert res.flagged[truth].mean() >= 0.95 and (res.flagged & ~truth).sum() <= 2
    assert set(np.unique(res.clusters[truth])).isdisjoint(np.unique(res.clusters[~truth]))
    assert res.scores[truth].min() > res.scores[~res.flagged].max()  # flagged first
    tail = res.evidence["latent"]["tail_groups"]
    assert tail["n_new"] == int(res.flagged.sum()) and len(tail["classes"]["0"]["kept"]) == 1
    cid = tail["classes"]["0"]["kept"][0]["cluster"]  # the kept group's cluster id: where its samples are
    assert set(np.unique(res.clusters[res.flagged])) == {cid}
    assert res.report["seconds"]["tail_groups"] > 0
    assert tail["settings"] == TG.stage_settings(Lg.shape[1])  # the run records the bars that kept the group
    assert res.report["latent"]["tail_groups"]["settings"] == tail["settings"]  # ... in run.json's report too


def test_flare_detect_tail_stage_on_a_clean_set_flags_nothing_and_says_so():
    X, y, P, Lg, _ = _flare_inputs(9, 0)
    res = flare_detect(X, y, latent=P, logits=Lg, n_epochs=50)
    assert not res.flagged.any()
    assert res.evidence["latent"]["tail_groups"]["n_flagged"] == 0
    assert "island" in res.evidence["conclusion"]


def test_latent_tail_groups_off_skips_the_stage():
    X, y, P, Lg, truth = _flare_inputs(8, 30)
    res = flare_detect(X, y, latent=P, logits=Lg, n_epochs=50, latent_tail_groups="off")
    assert "tail_groups" not in res.evidence["latent"]
    assert not res.flagged[truth].any()


def test_bad_latent_tail_groups_value_raises():
    X, y, P, Lg, _ = _flare_inputs(9, 0)
    with pytest.raises(FlareError, match="latent_tail_groups"):
        flare_detect(X, y, latent=P, logits=Lg, latent_tail_groups="yes")


def test_the_tail_stage_stands_aside_when_the_other_stages_found_a_population():
    from test_detectors_latent import abnormality_noise, logits_for, two_class_set

    rng = np.random.default_rng(10)
    P, y, loss, truth = two_class_set(rng, n_genuine=500, n_poison=300)  # the latent stage flags the 300
    res = flare_detect(abnormality_noise(rng, len(P)), y, latent=P, logits=logits_for(loss, y), n_epochs=50)
    assert res.flagged.mean() >= TG.TAIL_MAX_FLAGGED_SHARE
    tail = res.evidence["latent"]["tail_groups"]
    assert tail["n_flagged"] == 0 and "other stages flagged" in tail["why_not"]
    assert tail["settings"]["runs_when_others_flagged_under"] == TG.TAIL_MAX_FLAGGED_SHARE
    assert "tail" not in res.report["representation"]


# ----------------------------------------------------------------------------- the relabelled rule

def loose_group_class(seed, n_group=40):
    """A class whose planted group is too loose for the island rule (island ~1.3-1.9, atypicality ~1.4)."""
    rng = np.random.default_rng(seed)
    G = genuine_class(rng)
    group = rng.normal(size=(n_group, D)) * 0.8
    group[:, 4:8] += 4.0
    P = np.vstack([G, group])
    truth = np.zeros(len(P), bool)
    truth[len(G):] = True
    usual = rng.choice([1, 2], size=len(P), p=[0.8, 0.2])  # the class's usual strongest other classes
    return P, truth, usual


def test_strongest_other_class_is_the_best_class_after_the_label():
    logits = np.array([[5.0, 1.0, 3.0], [0.0, 2.0, 9.0], [4.0, 4.0, 1.0]])
    before = logits.copy()
    np.testing.assert_array_equal(TG.strongest_other_class(logits, np.array([0, 2, 1])), [2, 1, 0])
    np.testing.assert_array_equal(TG.strongest_other_class(logits, np.array([1, 0, 0])), [0, 2, 1])
    np.testing.assert_array_equal(logits, before)


def test_relabelled_statistics_cover_the_group_with_the_fewest_classes():
    other = np.array([7] * 28 + [9] * 10 + [5] * 2 + [6] * 950 + [9] * 10)
    members = np.zeros(len(other), bool)
    members[:40] = True
    stats = TG.relabelled_statistics(other, members)
    assert stats["other_classes"] == [7, 9]  # 95 % of the members: the fewest covering 80 %
    assert stats["other_share"] == pytest.approx(38 / 40)
    assert stats["other_base"] == pytest.approx(10 / 960)
    assert TG.relabelled_statistics(other, np.zeros(len(other), bool))["other_share"] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_loose_group_the_model_sees_as_another_class_is_kept_as_relabelled(seed):
    P, truth, other = loose_group_class(seed)
    other[truth] = 3  # the model's second choice for the group: a class the rest of the class never gets
    atyp = class_atypicality(P, np.zeros(len(P), int))
    assert not TG.tail_groups_in_class(P, atyp)[0][truth].any()  # the island rule alone does not take it
    flagged, _, records = TG.tail_groups_in_class(P, atyp, other=other)
    assert flagged[truth].mean() >= 0.9 and (flagged & ~truth).sum() <= 2
    kept = [r for r in records if r["kept"]]
    assert [r["rule"] for r in kept] == ["relabelled"] and kept[0]["other_classes"] == [3]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_group_with_the_class_s_usual_other_classes_is_not_relabelled(seed):
    P, truth, other = loose_group_class(seed)  # the group's second choices are the class's usual ones
    atyp = class_atypicality(P, np.zeros(len(P), int))
    flagged, _, records = TG.tail_groups_in_class(P, atyp, other=other)
    assert not flagged.any() and not any(r["kept"] for r in records)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rare_other_classes_scattered_over_a_class_invent_no_group(seed):
    P, _ = class_with_island(seed, n_island=0)
    rng = np.random.default_rng(seed)
    other = rng.choice([1, 2], size=len(P), p=[0.8, 0.2])
    other[rng.choice(len(P), len(P) // 50, replace=False)] = 3  # 2 % rare ones, at random places
    atyp = class_atypicality(P, np.zeros(len(P), int))
    flagged, _, records = TG.tail_groups_in_class(P, atyp, other=other)
    assert not flagged.any() and not any(r["kept"] for r in records)


@pytest.mark.parametrize("field, value", [("other_share", 0.79), ("other_base", 0.02)])
def test_each_bar_of_the_relabelled_rule_refuses_on_its_own(field, value):
    loose = {"size": 30, "purity": 0.7, "island": 1.2, "atypicality": 1.2, "other_classes": [3],
             "other_share": 1.0, "other_base": 0.0}
    assert TG.tail_group_rule(loose, 1000) == "relabelled"
    assert TG.tail_group_rule({**loose, field: value}, 1000) is None
    assert TG.tail_group_rule({k: v for k, v in loose.items() if not k.startswith("other")}, 1000) is None


def _logits(label_logit, y, second, k=4):
    """(N, k) logits: ``label_logit`` on the label, 0 on the ``second`` class, -5 elsewhere."""
    Lg = np.full((len(y), k), -5.0)
    Lg[np.arange(len(y)), second] = 0.0
    Lg[np.arange(len(y)), y] = label_logit
    return Lg


def test_the_relabelled_bar_scales_with_the_number_of_classes():
    assert TG.other_base_bar(10) == pytest.approx(TG.DEFAULT_MAX_OTHER_BASE)
    assert TG.other_base_bar(100) == pytest.approx(0.18 / 99) and TG.other_base_bar(2) == 0.0
    P, truth, _ = loose_group_class(0)
    y = np.zeros(len(P), int)
    atyp = class_atypicality(P, y)
    other = np.where(truth, 3, 1)
    other[np.flatnonzero(~truth)[::100]] = 3  # 1 % of the rest of the class has the group's other class
    for k, kept in [(4, True), (100, False)]:  # bars 6 % and 0.18 %
        logits = np.full((len(P), k), -5.0)
        logits[np.arange(len(P)), other] = 0.0
        logits[:, 0] = 5.0
        assert TG.tail_group_detect(P, y, atyp, logits=logits)[0][truth].any() == kept


def test_flare_detect_passes_the_logits_to_the_relabelled_rule():
    X, y, P, Lg2, _ = _flare_inputs(4, 0)  # the fixture of the tests above, without an island
    P0, truth0, _ = loose_group_class(4)
    m = int(truth0.sum())
    P = np.vstack([P0[truth0], P])  # the loose group joins class 0
    y = np.concatenate([np.zeros(m, int), y])
    truth = np.concatenate([np.ones(m, bool), np.zeros(len(X), bool)])
    X = np.vstack([np.random.default_rng(12).normal(size=(m, X.shape[1])), X])
    label_logit = np.concatenate([Lg2[:m, 0], Lg2[np.arange(len(Lg2)), y[m:]]])  # the fixture's loss
    usual = np.where(y == 0, 2, 0)  # class 0's usual second choice: class 2; class 1's: class 0
    res = flare_detect(X, y, latent=P, logits=_logits(label_logit, y, np.where(truth, 3, usual)), n_epochs=50)
    assert res.report["representation"] == "tail"
    assert res.flagged[truth].mean() >= 0.9 and (res.flagged & ~truth).sum() <= 2
    kept = res.evidence["latent"]["tail_groups"]["classes"]["0"]["kept"]
    assert [g["rule"] for g in kept] == ["relabelled"] and kept[0]["other_classes"] == [3]
    same = flare_detect(X, y, latent=P, logits=_logits(label_logit, y, usual), n_epochs=50)
    assert not same.flagged.any()  # the same group with its class's usual second choice


# ----------------------------------------------------------------------------- misfit groups (step 3b)

def misfit_class(seed, n_group=12):
    """A class with a planted group too small for HDBSCAN's clusters (``n_group`` < 15) and too loose for
    the island rule, but apart from the class (the misfit bars are lower): the dirty-label poison of a
    backdoor that did not take, which the model classifies as its source class.  Returns (P, truth, the class's usual strongest other classes)."""
    return loose_group_class(seed, n_group)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_tight_group_the_model_classifies_as_another_class_is_kept_as_misfit(seed):
    P, truth, other = misfit_class(seed)
    other[truth] = 3
    atyp = class_atypicality(P, np.zeros(len(P), int))
    assert not TG.tail_groups_in_class(P, atyp, other=other)[0][truth].any()  # no HDBSCAN cluster holds it
    flagged, groups, records = TG.tail_groups_in_class(P, atyp, other=other, misfit=truth)
    assert flagged[truth].all() and (flagged & ~truth).sum() <= 2
    kept = [r for r in records if r["kept"]]
    assert len(kept) == 1 and kept[0]["rule"] == "misfit" and kept[0]["candidate"] == "misfit"
    assert kept[0]["seen_as"] == 3 and kept[0]["size"] == truth.sum()
    assert (groups[truth] == 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_misfits_scattered_over_a_class_invent_no_group(seed):
    P = misfit_class(seed, n_group=0)[0]
    rng = np.random.default_rng(seed)
    other = rng.choice([1, 2], size=len(P), p=[0.8, 0.2])
    misfit = np.zeros(len(P), bool)
    misfit[rng.choice(len(P), 40, replace=False)] = True  # ambiguous images, each odd in its own way
    other[misfit] = 3
    atyp = class_atypicality(P, np.zeros(len(P), int))
    flagged, _, records = TG.tail_groups_in_class(P, atyp, other=other, misfit=misfit)
    assert not flagged.any()
    cands = [r for r in records if r.get("candidate") == "misfit"]
    assert len(cands) == 1 and not cands[0]["kept"] and cands[0]["purity"] < TG.DEFAULT_MIN_MISFIT_PURITY


@pytest.mark.parametrize("seed", [0, 1])
def test_a_misfit_group_seen_as_the_class_s_usual_confusion_is_not_kept(seed):
    P, truth, other = misfit_class(seed)
    other[truth] = 1  # the class the rest of the class is most often taken for (80 % of it)
    atyp = class_atypicality(P, np.zeros(len(P), int))
    flagged, _, records = TG.tail_groups_in_class(P, atyp, other=other, misfit=truth)
    assert not flagged.any()
    cand = [r for r in records if r.get("candidate") == "misfit"][0]
    assert cand["other_base"] >= TG.DEFAULT_MAX_MISFIT_BASE and cand["purity"] >= TG.DEFAULT_MIN_MISFIT_PURITY


def test_a_misfit_group_under_the_smallest_size_is_not_a_candidate():
    P, truth, other = misfit_class(0, n_group=TG.MISFIT_MIN_SIZE - 1)
    other[truth] = 3
    atyp = class_atypicality(P, np.zeros(len(P), int))
    flagged, _, records = TG.tail_groups_in_class(P, atyp, other=other, misfit=truth)
    assert not flagged.any() and not any(r.get("candidate") == "misfit" for r in records)


def test_misfit_groups_are_per_class_seen_as():
    other = np.array([3] * 12 + [5] * 10 + [4] * 9 + [3] * 100)
    misfit = np.zeros(len(other), bool)
    misfit[:31] = True
    got = TG.misfit_groups(other, misfit)
    assert [o for o, _ in got] == [3, 5]  # class 4 has 9 misfits: under MISFIT_MIN_SIZE
    assert got[0][1].sum() == 12 and not got[0][1][31:].any()


@pytest.mark.parametrize("field, value", [("purity", 0.69), ("island", 1.24), ("other_base", 0.05), ("size", 9),
                                          ("size", 350)])
def test_each_bar_of_the_misfit_rule_refuses_on_its_own(field, value):
    good = {"size": 20, "purity": 0.75, "island": 1.3, "atypicality": 1.0, "other_classes": [3], "other_share": 1.0,
            "other_base": 0.01}
    assert TG.misfit_group_rule(good, 1000) == "misfit"
    assert TG.misfit_group_rule({**good, field: value}, 1000) is None


def test_tail_group_detect_takes_misfits_from_the_logits():
    P, truth, other = misfit_class(1)
    y = np.zeros(len(P), int)
    atyp = class_atypicality(P, y)
    second = np.where(truth, 3, other)
    logits = np.full((len(P), 10), -5.0)
    logits[np.arange(len(P)), second] = 0.0
    logits[:, 0] = np.where(truth, -1.0, 5.0)  # the model classifies the group as class 3
    flagged, _, evidence = TG.tail_group_detect(P, y, atyp, logits=logits)
    assert flagged[truth].all() and (flagged & ~truth).sum() <= 2
    assert [g["rule"] for g in evidence["0"]["kept"]] == ["misfit"]
    logits[:, 0] = 5.0  # the same group fitted as its label: no misfit candidate, nothing kept
    assert not TG.tail_group_detect(P, y, atyp, logits=logits)[0].any()
    assert TG.other_base_bar(10, TG.MISFIT_BASE_FACTOR) == pytest.approx(TG.DEFAULT_MAX_MISFIT_BASE)
