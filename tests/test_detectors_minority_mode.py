"""The minority-mode test: a class whose top singular direction holds a light, separate mixture component."""
import numpy as np
import pytest

from flare_core.detectors.minority_mode import (MAX_MINORITY_WEIGHT, class_minority_modes, minority_mode,
                                                top_direction_projection)
from flare_core.detectors.scoring import unflagged_ranking


def _classes(seed: int, planted: int = 0, shift: float = 8.0):
    """Three classes of 600 rows in 32 dimensions with a genuine two-way structure in every class (a balanced
    axis, the kind of top direction a real class has); ``planted`` rows of class 1 moved along one direction."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], 600)
    X = rng.normal(size=(1800, 32))
    X[:, :2] *= 2.0
    X[:, 0] += np.where(rng.random(1800) < 0.5, -1.5, 1.5)  # a balanced bimodal genuine axis
    truth = np.zeros(1800, dtype=bool)
    if planted:
        rows = 600 + rng.choice(600, planted, replace=False)
        X[rows, 5] += shift
        truth[rows] = True
    return X, y, truth


def test_top_direction_projection_is_along_the_largest_spread():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5)) * np.array([10.0, 1.0, 1.0, 1.0, 1.0])
    t = top_direction_projection(X)
    assert t.shape == (400,)
    np.testing.assert_allclose(np.abs(np.corrcoef(t, X[:, 0])[0, 1]), 1.0, atol=1e-3)


def test_a_planted_minority_is_found_and_its_members_are_the_planted_rows():
    X, y, truth = _classes(1, planted=60)
    before = X.copy()
    member, evidence = class_minority_modes(X, y)
    assert evidence["1"]["holds"] and evidence["1"]["weight"] <= MAX_MINORITY_WEIGHT
    assert not evidence["0"]["holds"] and not evidence["2"]["holds"]
    assert np.all(member[y != 1] == 0)  # classes without a minority mode: membership 0
    assert member[truth].min() > 0.9 and (member[(y == 1) & ~truth] > 0.5).sum() <= 3
    assert evidence["1"]["n_members"] == int((member > 0.5).sum())
    np.testing.assert_array_equal(X, before)


def test_no_minority_is_invented_in_classes_without_one():
    X, y, _ = _classes(2)
    member, evidence = class_minority_modes(X, y)
    assert not any(e["holds"] for e in evidence.values())
    assert not member.any()


def test_a_minority_that_does_not_separate_is_not_a_mode():
    X, y, _ = _classes(3, planted=60, shift=1.0)  # moved, but inside the class's spread
    _, evidence = class_minority_modes(X, y)
    assert not evidence["1"]["holds"]


def test_small_classes_are_not_tested_and_say_why():
    X, y, _ = _classes(4)
    y = y.copy()
    y[:50] = 7  # a class of 50
    member, evidence = class_minority_modes(X, y)
    assert evidence["7"] == {"n": 50, "holds": False, "why_not": "fewer than 200 samples"}
    assert not member[:50].any()


def test_minority_mode_statistics():
    rng = np.random.default_rng(5)
    t = np.concatenate([rng.normal(0, 1, 900), rng.normal(8, 1, 100)])
    post, stats = minority_mode(t)
    assert stats["weight"] == pytest.approx(0.1, abs=0.02)
    assert stats["dprime"] == pytest.approx(8.0, abs=0.5)
    assert stats["bic_gain"] > 0.2
    assert post[900:].min() > 0.99 and post[:900].max() < 0.01


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="one label per row"):
        class_minority_modes(np.zeros((10, 3)), np.zeros(9))


def test_unflagged_ranking_puts_minority_members_first_and_membership_zero_changes_nothing():
    labels = np.array([0, 0, 0, 1, 1, 1])
    flagged = np.zeros(6, dtype=bool)
    scores = np.zeros(6)
    atyp = np.array([1.0, 0.5, 4.0, 1.0, 3.0, 1.0])
    plain = unflagged_ranking(scores, flagged, atyp, labels)
    np.testing.assert_array_equal(unflagged_ranking(scores, flagged, atyp, labels, np.zeros(6)), plain)
    member = np.array([0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    before = member.copy()
    out = unflagged_ranking(scores, flagged, atyp, labels, member)
    assert out[1] > out[[0, 2, 3, 4, 5]].max()  # the member outranks the most atypical non-member
    np.testing.assert_array_equal(out[[0, 2, 3, 4, 5]], plain[[0, 2, 3, 4, 5]])
    np.testing.assert_array_equal(member, before)
    with pytest.raises(ValueError, match="one membership per sample"):
        unflagged_ranking(scores, flagged, atyp, labels, np.zeros(5))


# ----------------------------------------------------------------------------- in flare_detect

def _flare_inputs(seed, shift=5.0, fitted=False):
    """Two classes; in class 0, 60 samples moved ``shift`` SDs along one feature: a minority mode along the
    class's top direction, too close to its class for the latent stage (d' ~5, under its 6.5) and as loose as it.
    ``fitted``: the model fits the 60 ~1,000x better than the rest of their class (a backdoor's signature)."""
    from test_detectors_latent import abnormality_noise, logits_for

    rng = np.random.default_rng(seed)
    P = rng.normal(size=(1200, 32))
    y = np.repeat([0, 1], 600)
    truth = np.zeros(1200, dtype=bool)
    truth[:60] = True
    P[:60, 3] += shift
    loss = 1e-2 * np.exp(rng.normal(scale=0.5, size=1200))
    if fitted:
        loss[:60] *= 1e-3
    return abnormality_noise(rng, 1200), y, P, logits_for(loss, y), truth


def test_flare_detect_ranks_an_unflagged_minority_mode_first_and_records_the_test():
    from flare_core.detectors.flare import flare_detect

    X, y, P, Lg, truth = _flare_inputs(0)
    res = flare_detect(X, y, latent=P, logits=Lg, n_epochs=50)
    off = flare_detect(X, y, latent=P, logits=Lg, n_epochs=50, minority_modes="off")
    assert not res.flagged.any() and not off.flagged.any()  # ranking only: the same (no) flags
    report = res.report["minority_modes"]
    assert report["used"] and report["max_weight"] == MAX_MINORITY_WEIGHT and "classes" not in report
    classes = res.evidence["minority_modes"]["classes"]
    assert classes["0"]["holds"] and not classes["1"]["holds"]
    from sklearn.metrics import roc_auc_score
    top = np.argsort(-res.scores)[:classes["0"]["n_members"]]
    assert truth[top].all()  # the mode's members rank first, and they are planted samples
    assert roc_auc_score(truth, res.scores) > roc_auc_score(truth, off.scores) + 0.01
    assert res.report["seconds"]["minority_modes"] >= 0
    assert "minority mode" in res.report["score"]
    assert off.evidence["minority_modes"] == {"used": False, "why_not": "minority_modes='off'"}
    # not fitted better: not flagged, and the evidence says why
    assert classes["0"]["fitted_better"] < 100 and "fits its members" in classes["0"]["why_not"]
    assert res.report["minority_modes"]["n_flagged"] == 0
    assert res.evidence["conclusion"].endswith("and no class held a minority mode the model fits far better")


def test_flare_detect_flags_a_minority_mode_the_model_fits_far_better():
    from flare_core.detectors.flare import flare_detect

    X, y, P, Lg, truth = _flare_inputs(0, fitted=True)
    res = flare_detect(X, y, latent=P, logits=Lg, n_epochs=50)
    rank = flare_detect(X, y, latent=P, logits=Lg, n_epochs=50, minority_modes="rank")
    c0 = res.evidence["minority_modes"]["classes"]["0"]
    assert c0["flagged"] and c0["fitted_better"] >= 100
    assert res.report["representation"] == "minority" and res.report["found"]
    assert res.flagged.sum() >= c0["n_members"]  # the members, and what the join step adds beside them
    assert res.flagged[truth].mean() >= 0.95 and (res.flagged & ~truth).sum() <= 3
    assert res.scores[res.flagged].min() > res.scores[~res.flagged].max()
    assert c0["cluster"] == int(np.bincount(res.clusters[truth & res.flagged]).argmax())
    assert not rank.flagged.any() and rank.evidence["minority_modes"]["why_not_flagged"] == "minority_modes='rank'"


def test_minority_flags_needs_a_class_without_flags_and_the_loss_signature():
    from flare_core.detectors.minority_mode import minority_flags

    X, y, P, Lg, truth = _flare_inputs(0, fitted=True)
    from flare_core.detectors.latent import sample_loss

    loss = sample_loss(Lg, y)
    member, evidence = class_minority_modes(P, y)
    before = member.copy()
    out = minority_flags(member, evidence, y, loss, np.zeros(len(y), bool))
    assert out.sum() == evidence["0"]["n_members"] and truth[out].all() and evidence["0"]["flagged"]
    _, evidence = class_minority_modes(P, y)
    already = np.zeros(len(y), bool)
    already[100] = True  # another stage flagged a sample of class 0
    assert not minority_flags(member, evidence, y, loss, already).any()
    assert "another stage" in evidence["0"]["why_not"]
    _, evidence = class_minority_modes(P, y)
    assert not minority_flags(member, evidence, y, loss, np.zeros(len(y), bool), min_fitted_better=1e6).any()
    assert "the bar is 1e+06x better" in evidence["0"]["why_not"]
    np.testing.assert_array_equal(member, before)


def test_flare_detect_scores_are_unchanged_where_no_class_holds_a_minority_mode():
    from flare_core.detectors.flare import flare_detect

    X, y, P, Lg, _ = _flare_inputs(1, shift=0.0)
    res = flare_detect(X, y, latent=P, logits=Lg, n_epochs=50)
    off = flare_detect(X, y, latent=P, logits=Lg, n_epochs=50, minority_modes="off")
    assert not any(c["holds"] for c in res.evidence["minority_modes"]["classes"].values())
    np.testing.assert_array_equal(res.scores, off.scores)


def test_faithful_mode_has_no_minority_modes_and_a_bad_value_raises():
    from flare_core.detectors.flare import flare_detect
    from flare_core.errors import FlareError

    X, y, P, Lg, _ = _flare_inputs(2)
    res = flare_detect(X, y, latent=P, logits=Lg, n_epochs=50, mode="faithful")
    assert not res.report["minority_modes"]["used"] and "faithful" in res.report["minority_modes"]["why_not"]
    with pytest.raises(FlareError, match="minority_modes"):
        flare_detect(X, y, latent=P, logits=Lg, minority_modes="yes")
